"""The paper's ablation: decoder {bilinear, transposed} x dropout {0.2, 0}, each fit scored with both maps.

    python benchmarks/ablate.py [--dataset data/impeller-v2-native --dataset DIR ...] [--seeds 0,1,2]
        [--out runs/ablation] [--steps N] [--bootstrap 1000]

The four cells: EfficientAD (bilinear decoder, dropout 0.2, as published), ours (transposed decoder, no
dropout) and the two crosses, each ``run``'s quick profile otherwise. Every fit (cell x seed x track) is
scored twice, with the published combined map and with the student-teacher (local) map alone, and each
scoring is written as a predictions folder, as ``run`` writes one (``OUT/<track>/<cell>-seed<k>/<map>/``).

Each scoring's numbers (point metrics and the bootstrap replicates, which pair across folders of one
split) are also kept in ``--results`` (default ``benchmarks/results/ablation/<track>/<cell>-seed<k>-<map>.npz``,
a few kB, committed): a fit whose two result files exist, for this split's manifest and bootstrap size, is
not fitted again, so the 36 fits per track add up across sessions and machines. A track is tabulated over
the seeds every cell has; the table says how many.

Then, per track and map: the mean over seeds of every metric per cell, and ours minus EfficientAD with a
95% interval that resamples both the photo groups and the seeds
(:func:`impeller_bench.evaluation.significance.seeds_and_groups_interval`; the bootstrap replicates are cached beside
each predictions folder). Printed, and written to ``OUT/ablation.md`` and ``OUT/ablation.json``.
"""
from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np

from impeller_bench.common.files import atomic_write_bytes
from impeller_bench.data.dataset import load_dataset
from impeller_bench.evaluation.evaluate import evaluate
from impeller_bench.evaluation.predictions import load_predictions
from impeller_bench.evaluation.significance import seeds_and_groups_interval
from impeller_bench.inspection.runner import (
    default_dataset,
    detector_config,
    fit_on,
    score_in_chunks,
    write_run,
)
from impeller_bench.leaderboard.submission import METRICS

# folder name -> (label, method, overrides of the method's quick profile)
CELLS = {
    "efficientad": ("EfficientAD (bilinear, dropout 0.2)", "efficientad", {}),
    "ours": ("Ours (transposed, no dropout)", "ours", {}),
    "bilinear-no-dropout": ("bilinear, no dropout", "ours", {"decoder": "bilinear"}),
    "transposed-dropout": ("transposed, dropout 0.2", "ours", {"dropout": 0.2}),
}
MAPS = ("combined", "local")


def result_path(results: Path, track: str, cell: str, seed: int, anomaly_map: str) -> Path:
    return results / track / f"{cell}-seed{seed}-{anomaly_map}.npz"


def read_result(path: Path, dataset, bootstrap: int) -> tuple[dict, dict[str, np.ndarray]] | None:
    """(point metrics, replicates) kept for this split and bootstrap size, or None."""
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as stored:
        if str(stored["manifest_sha256"]) != dataset.manifest_sha256 or int(stored["samples"]) != bootstrap:
            return None
        point = json.loads(str(stored["point"]))
        return point, {m: stored[m].astype(np.float64) for m in point if m in stored}


def keep_result(path: Path, dataset, folder: Path, bootstrap: int) -> None:
    result = evaluate(dataset, load_predictions(folder), bootstrap, 0, replicates=True)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, point=json.dumps(result["metrics"]), samples=bootstrap,
                        manifest_sha256=dataset.manifest_sha256,
                        **{m: v.astype(np.float32) for m, v in result["replicates"].items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())


def fit_cell(dataset, cell: str, seed: int, steps: int | None, out: Path, results: Path, bootstrap: int,
             progress) -> None:
    """Fit one cell, write its two predictions folders and keep their numbers (nothing when both are kept)."""
    kept = {m: result_path(results, dataset.name, cell, seed, m) for m in MAPS}
    if all(read_result(path, dataset, bootstrap) is not None for path in kept.values()):
        return
    folders = {m: out / m for m in MAPS}
    if not all((f / "meta.json").is_file() for f in folders.values()):
        _, method, overrides = CELLS[cell]
        config = detector_config(method, "quick", steps, seed, overrides)
        detector, _, fit_seconds = fit_on(dataset, method, config, None, progress)
        images = [s.load_image() for s in dataset.test]
        for anomaly_map, folder in folders.items():
            detector.config.anomaly_map = anomaly_map
            started = time.perf_counter()
            scores, maps = score_in_chunks(detector, images, progress)
            write_run(folder, detector, dataset, "quick", fit_seconds, time.perf_counter() - started, scores,
                      maps, overwrite=True)
    for anomaly_map, folder in folders.items():
        keep_result(kept[anomaly_map], dataset, folder, bootstrap)


def complete_seeds(dataset, results: Path, seeds: list[int], bootstrap: int) -> list[int]:
    """The seeds whose fits every cell has kept, both maps."""
    return [s for s in seeds if all(read_result(result_path(results, dataset.name, c, s, m), dataset, bootstrap)
                                    for c in CELLS for m in MAPS)]


def summarise(dataset, results: Path, seeds: list[int], bootstrap: int) -> dict:
    """The track's table over ``seeds``: per map and cell the mean over seeds; ours minus EfficientAD with
    its interval (photo groups and seeds resampled)."""
    summary = {}
    for anomaly_map in MAPS:
        cells, replicates = {}, {}
        for cell in CELLS:
            rows = [read_result(result_path(results, dataset.name, cell, s, anomaly_map), dataset, bootstrap)
                    for s in seeds]
            names = [m for m in METRICS if m in rows[0][0] and rows[0][0][m] is not None]
            cells[cell] = {m: float(np.mean([r[0][m] for r in rows])) for m in names}
            replicates[cell] = {m: np.stack([r[1][m] for r in rows]) for m in names}
        difference = {m: cells["ours"][m] - cells["efficientad"][m] for m in cells["ours"]}
        interval = {m: seeds_and_groups_interval(replicates["efficientad"][m], replicates["ours"][m])
                    for m in cells["ours"]}
        summary[anomaly_map] = {"cells": cells, "ours_minus_efficientad": difference, "ci95": interval}
    return {"seeds": seeds, "maps": summary}


def markdown(track: str, summary: dict, asked: list[int]) -> list[str]:
    seeds = summary["seeds"]
    lines = [f"### {track} (seeds {', '.join(map(str, seeds))}: {len(seeds)} of the {len(asked)} asked)", ""]
    for anomaly_map, part in summary["maps"].items():
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
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"), help="predictions folders and tables")
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/ablation"),
                        help="each fit's numbers, kept (commit them)")
    parser.add_argument("--fit", action=argparse.BooleanOptionalAction, default=True,
                        help="fit what is missing (--no-fit: tabulate what is kept)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    from impeller_bench.cli.options import (
        progress_bar as progress,  # the command line's bars (log lines under nohup)
    )

    report, lines = {}, ["# The paper's ablation", ""]
    for folder in args.dataset or [default_dataset()]:
        dataset = load_dataset(folder)
        root = args.out / dataset.name
        for seed in seeds if args.fit else ():
            for cell in CELLS:
                print(f"{dataset.name}: {cell}, seed {seed}", flush=True)
                fit_cell(dataset, cell, seed, args.steps, root / f"{cell}-seed{seed}", args.results, args.bootstrap,
                         progress)
        done = complete_seeds(dataset, args.results, seeds, args.bootstrap)
        if not done:
            print(f"{dataset.name}: no seed has all four cells yet", flush=True)
            continue
        report[dataset.name] = summarise(dataset, args.results, done, args.bootstrap)
        lines += markdown(dataset.name, report[dataset.name], seeds)
        text = "\n".join(lines) + "\n"
        print(text, flush=True)
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(args.out / "ablation.md", text.encode())
        atomic_write_bytes(args.out / "ablation.json", (json.dumps(report, indent=1) + "\n").encode())


if __name__ == "__main__":
    main()
