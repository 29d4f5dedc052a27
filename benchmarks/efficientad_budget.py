"""Quality against training time of ours / efficientad under CPU budgets (the quick profile's evidence).

    python benchmarks/efficientad_budget.py [--dataset DIR] [--method ours] [--seeds 0]
        --variant 'name={"steps": 200, "lr": 1e-3}' ... [--json out.json]
    python benchmarks/efficientad_budget.py --latency --method ours --method efficientad --variant 'quick={}'

Each variant's JSON overrides the quick profile. Without --dataset the built-in
synthetic impellers are used. Prints, per variant and seed: fit seconds, steps
trained (early stopping) and the held-out distances checked, score seconds per
image, image AUROC, pixel AUROC, PRO@30% with the configured anomaly map, and
the same with the other map (local / combined) from the same fit, the configured map
scored in the other precision (float32 / bfloat16: ``bfloat16_*``) from the same fit, and image
AUROC with image scores from several shares of the map's highest cells (0: the
maximum). With --latency:
the whole path at batch 1 on a 256 x 256 image (median of 30 after 5 warm-up
runs, untrained weights) and the teacher's share of it.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from impeller_bench import detectors
from impeller_bench.common import metrics
from impeller_bench.data.dataset import load_dataset
from impeller_bench.detectors.efficientad.scoring import ANOMALY_MAPS
from impeller_bench.evaluation.evaluate import EvaluationInputs, point_metrics
from impeller_bench.inspection.runner import default_dataset, training_groups

IMAGE_SCORE_SHARES = (0.0, 0.01, 0.02, 0.05, 0.1)


def measure(method: str, dataset, overrides: dict, seed: int) -> dict:
    """One fit as ``run`` makes it (photo groups held out whole), scored with each anomaly map: the configured
    one gives the row's metrics, the other is reported beside it (``combined_*`` or ``local_*``) from the same
    fit; then the configured map's image AUROC with each image score share (``image_auroc_share_*``)."""
    config = detectors.detector_class(method).profiles["quick"] | {"seed": seed} | overrides
    detector = detectors.create(method, device="cpu", **config)
    train = [s.load_image() for s in dataset.train]
    started = time.perf_counter()
    detector.fit(train, groups=training_groups(dataset))
    fit_seconds = time.perf_counter() - started
    test = [s.load_image() for s in dataset.test]
    labels = np.array([s.is_defect for s in dataset.test])
    masks = [s.load_mask() for s in dataset.test]
    row = {"fit_seconds": round(fit_seconds, 1), "steps_trained": detector.steps_trained,
           "validation_distances": [(step, round(d, 4)) for step, d in detector.validation_distances],
           "loss": detector.last_loss, "precision": detector.training_precision}
    configured = detector.config.anomaly_map
    for anomaly_map in [configured] + [m for m in ANOMALY_MAPS if m != configured]:
        detector.config.anomaly_map = anomaly_map
        started = time.perf_counter()
        scores, maps = detector.score_images(test)
        seconds = (time.perf_counter() - started) / len(test)
        pixels = metrics.PixelSet.from_maps(masks, list(maps))
        result = point_metrics(EvaluationInputs([s.id for s in dataset.test], labels, scores.astype(np.float64), pixels))
        prefix = "" if anomaly_map == configured else f"{anomaly_map}_"
        row |= {f"{prefix}{k}": round(result[k], 4) for k in ("image_auroc", "pixel_auroc", "pixel_pro_30")}
        if not prefix:
            row["score_seconds_per_image"] = round(seconds, 4)
    detector.config.anomaly_map = configured
    configured_precision = detector.config.scoring_precision
    other = "bfloat16" if configured_precision == "float32" else "float32"
    detector.config.scoring_precision = other  # the same fit and map statistics, scored in the other precision
    started = time.perf_counter()
    scores, maps = detector.score_images(test)
    row[f"{other}_score_seconds_per_image"] = round((time.perf_counter() - started) / len(test), 4)
    result = point_metrics(EvaluationInputs([s.id for s in dataset.test], labels, scores.astype(np.float64),
                                            metrics.PixelSet.from_maps(masks, list(maps))))
    row |= {f"{other}_{k}": round(result[k], 4) for k in ("image_auroc", "pixel_auroc", "pixel_pro_30")}
    detector.config.scoring_precision = configured_precision
    configured_share = detector.config.image_score_share
    for share in IMAGE_SCORE_SHARES:  # the image score's rule only: the maps, and so the pixel metrics, stay
        detector.config.image_score_share = share
        row[f"image_auroc_share_{share:g}"] = round(metrics.image_auroc(labels, detector.score_images(test)[0]), 4)
    detector.config.image_score_share = configured_share
    return row


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
