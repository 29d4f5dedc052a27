"""What each track can detect and what it costs: every finished run of the board's grid, with 95% intervals.

    python benchmarks/tracks_report.py [--runs runs] [--data data] [--bootstrap 1000] [--out runs/tracks.md]

Reads ``RUNS/<split>/<run>/`` (``impeller-bench run`` outputs, as the board's runs were kept before
``impeller-bench sweep``: ``<method>`` for seed 0, ``<method>-seed<k>`` for the others) and ``DATA/<split>``; evaluates each
run's predictions at their full resolution with the reference evaluator (bootstrap over photo groups,
seeded), and writes a Markdown table per split: training and scoring time per run (``meta.json``), every
metric with its interval and the interval's width, and, for methods with several seeds, their mean and
standard deviation. Times are as measured, under whatever else the machine was doing.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from impeller_bench.common.files import atomic_write_bytes
from impeller_bench.data.dataset import load_dataset
from impeller_bench.evaluation.evaluate import evaluate
from impeller_bench.evaluation.predictions import load_predictions

SHOWN = ("image_auroc", "pixel_auroc", "pixel_pro_30", "pixel_f1_max")


def run_rows(runs: Path, data: Path, bootstrap: int) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {}
    for split_dir in sorted(p for p in runs.iterdir() if p.is_dir() and (data / p.name).is_dir()):
        dataset = load_dataset(data / split_dir.name)
        for run in sorted(p for p in split_dir.iterdir() if (p / "meta.json").is_file()):
            meta = json.loads((run / "meta.json").read_text())
            result = evaluate(dataset, load_predictions(run), bootstrap_samples=bootstrap)
            rows.setdefault(split_dir.name, []).append({
                "run": run.name, "method": meta["method"], "seed": (meta.get("config") or {}).get("seed"),
                "fit_seconds": meta.get("fit_seconds"), "score_seconds_per_image": meta.get("score_seconds_per_image"),
                "steps_trained": meta.get("steps_trained"), "test_images": result["test_images"],
                "metrics": result["metrics"], "ci95": result.get("ci95", {})})
            print(f"{split_dir.name}/{run.name}: " + ", ".join(f"{k} {100 * v:.2f}" for k, v in result["metrics"].items()),
                  flush=True)
    return rows


def cell(row: dict, metric: str) -> str:
    if metric not in row["metrics"]:
        return "n/a"
    value, (low, high) = row["metrics"][metric], row["ci95"].get(metric, (np.nan, np.nan))
    return f"{100 * value:.2f} [{100 * low:.2f}, {100 * high:.2f}] ({100 * (high - low):.1f})"


def table(split: str, rows: list[dict]) -> list[str]:
    head = ["run", "fit s", "score s/image"] + [f"{m} [95%] (width)" for m in SHOWN]
    lines = [f"## {split}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        lines.append("| " + " | ".join([row["run"], f"{row['fit_seconds']:.0f}", f"{row['score_seconds_per_image']:.3f}"]
                                        + [cell(row, m) for m in SHOWN]) + " |")
    by_method: dict[str, list[dict]] = {}
    for row in rows:
        by_method.setdefault(row["method"], []).append(row)
    several = {m: r for m, r in by_method.items() if len(r) > 1}
    if several:
        lines += ["", "| method | seeds | " + " | ".join(f"{m} mean +- sd" for m in SHOWN) + " |",
                  "|" + "---|" * (2 + len(SHOWN))]
        for method, mine in several.items():
            stats = []
            for m in SHOWN:
                values = [100 * r["metrics"][m] for r in mine if m in r["metrics"]]
                stats.append(f"{np.mean(values):.2f} +- {np.std(values, ddof=1):.2f}" if values else "n/a")
            lines.append(f"| {method} | {len(mine)} | " + " | ".join(stats) + " |")
    total = sum(r["fit_seconds"] + r["score_seconds_per_image"] * r["test_images"] for r in rows)
    lines += ["", f"Compute of these {len(rows)} runs: {total / 3600:.2f} h (training plus scoring).", ""]
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("runs/tracks.md"))
    args = parser.parse_args(argv)
    rows = run_rows(args.runs, args.data, args.bootstrap)
    text = "\n".join(line for split, split_rows in rows.items() for line in table(split, split_rows))
    atomic_write_bytes(args.out, text.encode())
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
