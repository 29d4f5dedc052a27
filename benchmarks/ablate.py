"""The paper's ablation: decoder {bilinear, transposed} x dropout {0.2, 0}, each fit scored with both maps.

    python benchmarks/ablate.py [--dataset data/impeller-v2-native --dataset DIR ...] [--seeds 0,1,2]
        [--out runs/ablation] [--steps N] [--bootstrap 1000]

The four cells: EfficientAD (bilinear decoder, dropout 0.2, as published), ours (transposed decoder, no
dropout) and the two crosses, each ``run``'s quick profile otherwise. Every fit (cell x seed x track) is
scored twice, with the published combined map and with the student-teacher (local) map alone, and each
scoring is written as a predictions folder, as ``run`` writes one (``OUT/<track>/<cell>-seed<k>/<map>/``):
the sweep resumes where it stopped (a cell whose two folders exist is not fitted again).

Then, per track and map: the mean over seeds of every metric per cell, and ours minus EfficientAD with a
95% interval that resamples both the photo groups and the seeds
(:func:`impeller_bench.significance.seeds_and_groups_interval`; the bootstrap replicates are cached beside
each predictions folder). Printed, and written to ``OUT/ablation.md`` and ``OUT/ablation.json``.
"""
from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np

from impeller_bench.data import load_dataset
from impeller_bench.evaluate import evaluate
from impeller_bench.imageio import atomic_write_bytes
from impeller_bench.predictions import load_predictions
from impeller_bench.runner import default_dataset, detector_config, fit_on, score_in_chunks, write_run
from impeller_bench.significance import seeds_and_groups_interval
from impeller_bench.submission import METRICS

# folder name -> (label, method, overrides of the method's quick profile)
CELLS = {
    "efficientad": ("EfficientAD (bilinear, dropout 0.2)", "efficientad", {}),
    "ours": ("Ours (transposed, no dropout)", "ours", {}),
    "bilinear-no-dropout": ("bilinear, no dropout", "ours", {"decoder": "bilinear"}),
    "transposed-dropout": ("transposed, dropout 0.2", "ours", {"dropout": 0.2}),
}
MAPS = ("combined", "local")
REPLICATES = "replicates.npz"


def fit_cell(dataset, cell: str, seed: int, steps: int | None, out: Path, progress) -> None:
    """Fit one cell and write its two predictions folders (nothing when both exist)."""
    folders = {m: out / m for m in MAPS}
    if all((f / "meta.json").is_file() for f in folders.values()):
        return
    _, method, overrides = CELLS[cell]
    config = detector_config(method, "quick", steps, seed, overrides)
    detector, _, fit_seconds = fit_on(dataset, method, config, None, progress)
    images = [s.load_image() for s in dataset.test]
    for anomaly_map, folder in folders.items():
        detector.config.anomaly_map = anomaly_map
        started = time.perf_counter()
        scores, maps = score_in_chunks(detector, images, progress)
        write_run(folder, detector, dataset, "quick", fit_seconds, time.perf_counter() - started, scores, maps,
                  overwrite=True)


def metrics_of(dataset, folder: Path, bootstrap: int) -> tuple[dict, dict[str, np.ndarray]]:
    """(point metrics, bootstrap replicates) of a predictions folder, cached beside it."""
    cache = folder.parent / f"{folder.name}-{REPLICATES}"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as stored:
            point = json.loads(str(stored["point"]))
            if int(stored["samples"]) == bootstrap:
                return point, {m: stored[m] for m in point}
    result = evaluate(dataset, load_predictions(folder), bootstrap, 0, replicates=True)
    point = {m: v for m, v in result["metrics"].items()}
    buffer = io.BytesIO()
    np.savez(buffer, point=json.dumps(point), samples=bootstrap, **result["replicates"])
    atomic_write_bytes(cache, buffer.getvalue())
    return point, result["replicates"]


def summarise(dataset, root: Path, seeds: list[int], bootstrap: int) -> dict:
    """The track's table: per map and cell the mean over seeds; ours minus EfficientAD with its interval."""
    summary = {}
    for anomaly_map in MAPS:
        cells, replicates = {}, {}
        for cell in CELLS:
            rows = [metrics_of(dataset, root / f"{cell}-seed{s}" / anomaly_map, bootstrap) for s in seeds]
            names = [m for m in METRICS if m in rows[0][0]]
            cells[cell] = {m: float(np.mean([r[0][m] for r in rows])) for m in names}
            length = min(len(r[1][names[0]]) for r in rows)
            replicates[cell] = {m: np.stack([r[1][m][:length] for r in rows]) for m in names}
        difference = {m: cells["ours"][m] - cells["efficientad"][m] for m in cells["ours"]}
        interval = {m: seeds_and_groups_interval(replicates["efficientad"][m], replicates["ours"][m])
                    for m in cells["ours"]}
        summary[anomaly_map] = {"cells": cells, "ours_minus_efficientad": difference, "ci95": interval}
    return summary


def markdown(track: str, summary: dict, seeds: list[int]) -> list[str]:
    lines = [f"### {track} ({len(seeds)} seeds)", ""]
    for anomaly_map, part in summary.items():
        names = list(part["cells"]["ours"])
        lines += [f"{anomaly_map} map, mean over seeds (percent):", "",
                  "| cell | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for cell, values in part["cells"].items():
            lines.append(f"| {CELLS[cell][0]} | " + " | ".join(f"{100 * values[m]:.2f}" for m in names) + " |")
        lines.append("| ours - EfficientAD [95%, groups and seeds] | " + " | ".join(
            f"{100 * part['ours_minus_efficientad'][m]:+.2f} [{100 * part['ci95'][m][0]:+.2f}, "
            f"{100 * part['ci95'][m][1]:+.2f}]" for m in names) + " |")
        lines.append("")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, action="append", help="a built track; repeatable (default: the "
                        "built-in synthetic impellers)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, help="override the quick profile's most steps (a smoke test)")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    from impeller_bench.cli import _progress as progress  # the command line's bars (log lines under nohup)

    report, lines = {}, ["# The paper's ablation", ""]
    for folder in args.dataset or [default_dataset()]:
        dataset = load_dataset(folder)
        root = args.out / dataset.name
        for seed in seeds:
            for cell in CELLS:
                print(f"{dataset.name}: {cell}, seed {seed}", flush=True)
                fit_cell(dataset, cell, seed, args.steps, root / f"{cell}-seed{seed}", progress)
        report[dataset.name] = summarise(dataset, root, seeds, args.bootstrap)
        lines += markdown(dataset.name, report[dataset.name], seeds)
        text = "\n".join(lines) + "\n"
        print(text, flush=True)
        atomic_write_bytes(args.out / "ablation.md", text.encode())
        atomic_write_bytes(args.out / "ablation.json", (json.dumps(report, indent=1) + "\n").encode())


if __name__ == "__main__":
    main()
