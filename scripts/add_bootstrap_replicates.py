"""Write ``bootstrap.npy`` into submissions made before it was part of the format (once, for the board's own
entries): the replicates are recomputed from the submission's own predictions, exactly as ``leaderboard
validate`` recomputes them, and written only where every claimed number and interval is recomputed first.

    python scripts/add_bootstrap_replicates.py --data data leaderboard/submissions/*
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from impeller_bench.evaluate import evaluate
from impeller_bench.imageio import atomic_write_bytes
from impeller_bench.predictions import load_predictions
from impeller_bench.submission import (BOOTSTRAP_FILE, PREDICTIONS_DIR, compare_claims, defined_metrics,
                                       load_published_dataset, read_submission, replicates_bytes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--data", type=Path, default=Path("data"), help="Folder of the built published splits.")
    parser.add_argument("--annotations", type=Path, default=Path("annotations"))
    args = parser.parse_args()
    for folder in args.folders:
        if (folder / BOOTSTRAP_FILE).exists():
            print(f"has {BOOTSTRAP_FILE}: {folder}")
            continue
        started = time.perf_counter()
        claimed, problems = read_submission(folder)
        if problems:
            raise SystemExit(f"{folder}: {'; '.join(problems)}")
        dataset = load_published_dataset(args.data, args.annotations, claimed["dataset"]["split"])
        result = evaluate(dataset, load_predictions(folder / PREDICTIONS_DIR), claimed["bootstrap"]["samples"],
                          claimed["bootstrap"]["seed"], replicates=True)
        problems = compare_claims(claimed, result)
        if problems:
            raise SystemExit(f"{folder}: the claims do not recompute: {'; '.join(problems)}")
        atomic_write_bytes(folder / BOOTSTRAP_FILE, replicates_bytes(result["replicates"], defined_metrics(claimed)))
        print(f"wrote {folder / BOOTSTRAP_FILE} in {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
