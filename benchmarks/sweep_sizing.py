"""How long a sweep takes on W workers, from its cells' measured durations: to size a cluster.

    python benchmarks/sweep_sizing.py runs/board/results.csv [--workers 1,2,8,32]
    python benchmarks/sweep_sizing.py --seconds 380,453,56 [--workers 1,2,8,32]

Cells are placed longest first, each on the worker that frees up first (the longest-processing-time rule,
as a scheduler that starts the longest cells first would); the wall time is the last worker's finish. The
bound below it is max(the longest cell, total / W): no schedule beats it, and the longest cell bounds the wall
however many workers there are. The durations are the cells' own (fit, scoring, evaluation); the engine's
per-cell overhead (benchmarks/sweep_overhead.py) is far below them.
"""
from __future__ import annotations

import argparse
import heapq

import pandas as pd


def longest_first_wall(seconds: list[float], workers: int) -> float:
    """The finish time of ``seconds`` placed longest first on the earliest-free of ``workers``."""
    free = [0.0] * workers
    for duration in sorted(seconds, reverse=True):
        heapq.heappush(free, heapq.heappop(free) + duration)
    return max(free)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="?", help="a sweep's results.csv (its wall_seconds column)")
    parser.add_argument("--seconds", help="comma-separated cell durations instead")
    parser.add_argument("--workers", default="1,2,8,32")
    args = parser.parse_args()
    if args.seconds:
        seconds = [float(s) for s in args.seconds.split(",")]
    else:
        table = pd.read_csv(args.results)
        seconds = list(table.loc[table.status == "done", "wall_seconds"])
    total = sum(seconds)
    print(f"{len(seconds)} cells, {total / 3600:.2f} h of cell time, the longest {max(seconds) / 60:.1f} min")
    print("| workers | wall (longest first) | bound: max(longest, total / W) |\n|---|---|---|")
    for workers in map(int, args.workers.split(",")):
        wall, bound = longest_first_wall(seconds, workers), max(max(seconds), total / workers)
        print(f"| {workers} | {wall / 60:.1f} min | {bound / 60:.1f} min |")


if __name__ == "__main__":
    main()
