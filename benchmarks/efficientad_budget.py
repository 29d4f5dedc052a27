"""Quality against training time of ours / efficientad under CPU budgets (the quick profile's evidence).

    python benchmarks/efficientad_budget.py [--dataset DIR] [--method ours] [--seeds 0]
        --variant 'name={"steps": 200, "lr": 1e-3}' ... [--json out.json]
    python benchmarks/efficientad_budget.py --latency --method ours --method efficientad --variant 'quick={}'

Each variant's JSON overrides the quick profile. Without --dataset the built-in
synthetic impellers are used. Prints, per variant and seed: fit seconds,
score seconds per image, image AUROC, pixel AUROC, PRO@30%. With --latency:
the whole path at batch 1 on a 256 x 256 image (median of 30 after 5 warm-up
runs, untrained weights) and the teacher's share of it.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from impeller_bench import detectors
from impeller_bench.data import load_dataset
import numpy as np

from impeller_bench import metrics
from impeller_bench.evaluate import EvaluationInputs, point_metrics
from impeller_bench.runner import default_dataset


def measure(method: str, dataset, overrides: dict, seed: int) -> dict:
    config = detectors.detector_class(method).profiles["quick"] | {"seed": seed} | overrides
    detector = detectors.create(method, device="cpu", **config)
    train = [s.load_image() for s in dataset.train]
    started = time.perf_counter()
    detector.fit(train)
    fit_seconds = time.perf_counter() - started
    test = [s.load_image() for s in dataset.test]
    started = time.perf_counter()
    scores, maps = detector.score_images(test)
    score_seconds = (time.perf_counter() - started) / len(test)
    labels = np.array([s.is_defect for s in dataset.test])
    pixels = metrics.PixelSet.from_maps([s.load_mask() for s in dataset.test], list(maps))
    result = point_metrics(EvaluationInputs([s.id for s in dataset.test], labels, scores.astype(np.float64), pixels))
    return {"fit_seconds": round(fit_seconds, 1), "score_seconds_per_image": round(score_seconds, 4),
            "loss": detector.last_loss} | {k: round(result[k], 4) for k in ("image_auroc", "pixel_auroc", "pixel_pro_30")}


def latency(method: str, overrides: dict, runs: int = 30, warmup: int = 5) -> dict:
    config = detectors.detector_class(method).profiles["quick"] | overrides
    detector = detectors.create(method, device="cpu", **config)
    detector.prepare_untrained()
    image = np.random.default_rng(0).integers(0, 256, (256, 256), dtype=np.uint8)
    whole, teacher = [], []
    with torch.inference_mode():
        for k in range(warmup + runs):
            started = time.perf_counter()
            detector.score_images([image])
            middle = time.perf_counter()
            detector._teacher(detector._batch01([image]))
            if k >= warmup:
                whole.append(middle - started)
                teacher.append(time.perf_counter() - middle)
    median_ms, teacher_ms = 1000 * float(np.median(whole)), 1000 * float(np.median(teacher))
    return {"median_ms": round(median_ms, 1), "teacher_ms": round(teacher_ms, 1),
            "teacher_share": round(teacher_ms / median_ms, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path)
    parser.add_argument("--method", action="append", help="ours (default), efficientad; repeatable")
    parser.add_argument("--latency", action="store_true", help="time the whole path at batch 1 instead of training")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--variant", action="append", required=True, help='name={"option": value, ...}')
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    methods = args.method or ["ours"]
    rows = []
    dataset = None if args.latency else load_dataset(args.dataset or default_dataset())
    print(f"{torch.get_num_threads()} threads" + (f"; dataset {dataset.name} ({len(dataset.train)} train, "
                                                  f"{len(dataset.test)} test)" if dataset else ""))
    for variant in args.variant:
        name, _, text = variant.partition("=")
        for method in methods:
            for seed in ([0] if args.latency else (int(s) for s in args.seeds.split(","))):
                row = {"variant": name, "method": method, "seed": seed, "overrides": json.loads(text or "{}")}
                row |= (latency(method, row["overrides"]) if args.latency
                        else measure(method, dataset, row["overrides"], seed))
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.json:
                    args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
