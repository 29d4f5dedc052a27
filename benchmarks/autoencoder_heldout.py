"""Does EfficientAD's autoencoder learn the part, or the training photos? Its held-out distance, per variant.

    python benchmarks/autoencoder_heldout.py --dataset data/impeller-v2-native [--method ours] [--seeds 0]
        [--held-out 0.3] [--steps 2000] [--every 250] --variant 'quick={}' --variant 'views16={"cached_views": 16}'

The global map is the autoencoder's output against the student's copy of it; it stays low on a normal part
only where the autoencoder reproduces the teacher on photos it has not seen. So the measure here is the
autoencoder's own: the mean squared distance between its output and the (per-channel standardised) teacher,
on the unaugmented training images it learns from and on held-out normal photos (whole photo groups, a share
``--held-out`` of the training images, never learnt from; the test set is not read). On the standardised
teacher a distance of 1 is what a constant output scores; 0.4 means 60% of the teacher's variance reproduced.
The ratio held-out / train says how much of what it learnt is the photos rather than the part.

Each variant is the quick profile of ``--method`` with its options changed (any ``EfficientADConfig`` field:
``cached_views``, ``turn_views``, ``decoder``, ``dropout``, ``lr``, ``image_size``, ``teacher_scale`` ...);
the autoencoder alone is trained as the detector trains it (its views, its optimiser, the decay at 95% of the
steps), without the student (whose loss term on the autoencoder's output is left out: a small pull towards
what the student can copy), and measured every ``--every`` steps, so one run gives the curve over length.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from impeller_bench import detectors
from impeller_bench.data.dataset import load_dataset
from impeller_bench.detectors.efficientad.scoring import normalise
from impeller_bench.detectors.efficientad.training import validation_split
from impeller_bench.inspection.runner import default_dataset, training_groups


def autoencoder_distance(detector, images: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean over images, channels and cells of (standardised teacher - autoencoder output) squared."""
    total = 0.0
    with torch.no_grad():
        for chunk, target in zip(images.split(8), targets.split(8)):
            output = detector.autoencoder(normalise(chunk.to(detector.device))).float()
            total += float(((target.to(detector.device).float() - output) ** 2).mean(dim=(1, 2, 3)).sum())
    return total / len(images)


def measure(method: str, dataset, overrides: dict, seed: int, held_share: float, every: int) -> dict:
    config = detectors.detector_class(method).profiles["quick"] | {"seed": seed} | overrides
    detector = detectors.create(method, device="cpu", **config)
    c = detector.config
    data = detector._batch01([s.load_image() for s in dataset.train])
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(data), generator=generator).tolist()
    held = validation_split(order, max(1, round(held_share * len(data))), training_groups(dataset))
    held_set = set(held)
    kept = [k for k in order if k not in held_set]
    fit_images, held_images = data[kept], data[held]
    detector.teacher.eval()
    if detector.teacher_kind == "features":
        detector.teacher.fit_projection((normalise(chunk) for chunk in fit_images.split(8)), seed)
    fit_targets = detector._fit_teacher_statistics(fit_images)
    held_targets = torch.cat([detector._teacher(chunk) for chunk in held_images.split(8)])
    views, view_targets = (detector._cached_views(fit_images, fit_targets, generator) if c.cached_views
                           else (fit_images, fit_targets.bfloat16()))
    autoencoder = detector.autoencoder.train()
    optimiser = torch.optim.Adam(autoencoder.parameters(), lr=c.lr, weight_decay=c.weight_decay)
    curve, started = [], time.perf_counter()
    for step in range(1, c.steps + 1):
        if step == max(1, int(0.95 * c.steps)) + 1:
            for group in optimiser.param_groups:
                group["lr"] = c.lr * 0.1
        pick = torch.randint(len(views), (c.batch_size,), generator=generator)
        loss = ((view_targets[pick].float() - autoencoder(normalise(views[pick]))) ** 2).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if step % every == 0 or step == c.steps:
            autoencoder.eval()
            train, held_out = (autoencoder_distance(detector, fit_images, fit_targets),
                               autoencoder_distance(detector, held_images, held_targets))
            autoencoder.train()
            curve.append({"step": step, "train": round(train, 4), "held_out": round(held_out, 4),
                          "ratio": round(held_out / train, 3)})
            print(f"  step {step}: train {train:.4f}, held-out {held_out:.4f} ({held_out / train:.2f}x)", flush=True)
    return {"train_images": len(kept), "held_out_images": len(held), "views": len(views),
            "seconds": round(time.perf_counter() - started, 1), "curve": curve,
            "best_held_out": min(point["held_out"] for point in curve)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, help="a built track (default: the built-in synthetic impellers)")
    parser.add_argument("--method", default="ours", help="ours or efficientad (its decoder and dropout)")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--held-out", type=float, default=0.3, help="share of the training images held out")
    parser.add_argument("--every", type=int, default=250, help="measure every this many steps")
    parser.add_argument("--variant", action="append", required=True, help='name={"option": value, ...}')
    parser.add_argument("--json", type=Path, help="write every row here (rewritten after each)")
    args = parser.parse_args()
    dataset = load_dataset(args.dataset or default_dataset())
    print(f"{torch.get_num_threads()} threads; {dataset.name}: {len(dataset.train)} training images")
    rows = []
    for variant in args.variant:
        name, _, text = variant.partition("=")
        for seed in (int(s) for s in args.seeds.split(",")):
            print(f"{name}, seed {seed}", flush=True)
            row = {"variant": name, "method": args.method, "seed": seed, "overrides": json.loads(text or "{}")}
            row |= measure(args.method, dataset, row["overrides"], seed, args.held_out, args.every)
            rows.append(row)
            if args.json:
                args.json.write_text(json.dumps(rows, indent=1) + "\n")
    print("\n| variant | seed | views | train -> held-out at the end | best held-out (step) |\n|---|---|---|---|---|")
    for row in rows:
        last = row["curve"][-1]
        best = min(row["curve"], key=lambda point: point["held_out"])
        print(f"| {row['variant']} | {row['seed']} | {row['views']} | {last['train']:.3f} -> {last['held_out']:.3f} "
              f"({last['ratio']:.2f}x) | {best['held_out']:.3f} ({best['step']}) |")
    if rows:
        print(f"\n{np.mean([r['seconds'] for r in rows]):.0f} s per variant and seed")


if __name__ == "__main__":
    main()
