"""Wall time of `impeller-bench sweep` against the old serial loop (`impeller-bench run` for each cell in turn,
as scripts/seed_leaderboard.sh did), on the same cells; and whether the two give the same metrics.

    python benchmarks/sweep_vs_serial.py --dataset data/impeller-v2-native \
        --methods patchcore,padim,spade,patchsvdd --out runs/sweep-vs-serial

Writes OUT/sweep_vs_serial.json and prints a table. The serial runs use every core in one process (the run
command's default); the sweep its default local engine (workers x torch threads = the cores), with 2
bootstrap resamples per cell (as `run`, which computes no intervals; the board's submit step does that apart).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd

METRICS = ["image_auroc", "pixel_auroc", "pixel_pro_30"]


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--methods", required=True, help="comma-separated")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--sweep-options", default="", help="more options of the sweep, e.g. '--workers 2 "
                        "--threads-per-cell 1' (default: the sweep's own sizing)")
    args = parser.parse_args()
    methods, seeds = args.methods.split(","), args.seeds.split(",")
    if args.out.exists():
        shutil.rmtree(args.out)
    exe = [shutil.which("impeller-bench") or "impeller-bench"]
    serial = {}
    started = time.perf_counter()
    for method in methods:
        for seed in seeds:
            out = args.out / "serial" / f"{method}-seed{seed}"
            serial[f"{method}-seed{seed}"] = timed(exe + ["run", method, "--dataset", args.dataset, "--seed", seed,
                                                          "--out", str(out)])
            print(f"serial {method} seed {seed}: {serial[f'{method}-seed{seed}']:.1f} s", flush=True)
    serial_wall = time.perf_counter() - started
    sweep_wall = timed(exe + ["sweep", "--dataset", args.dataset, "--seeds", args.seeds, "--out",
                              str(args.out / "sweep"), "--bootstrap", "2"] + [f"--method={m}" for m in methods]
                       + args.sweep_options.split())
    table = pd.read_csv(args.out / "sweep" / "results.csv")
    from impeller_bench.evaluation.evaluate import evaluate

    rows = []
    for _, row in table.iterrows():
        key = f"{row.method}-seed{row.seed}"
        theirs = evaluate(args.dataset, args.out / "serial" / key)["metrics"]
        rows.append({"cell": key, "serial_seconds": round(serial[key], 1), "sweep_cell_seconds": row.wall_seconds,
                     "sweep_worker": row.worker}
                    | {f"{m}_difference": row[m] - theirs[m] for m in METRICS})
    result = {"dataset": args.dataset, "sweep_options": args.sweep_options, "cells": rows, "serial_wall_seconds": round(serial_wall, 1),
              "sweep_wall_seconds": round(sweep_wall, 1), "speedup": round(serial_wall / sweep_wall, 3),
              "sweep_torch_threads": int(table.torch_threads.iloc[0]), "sweep_workers": int(table.worker.nunique())}
    (args.out / "sweep_vs_serial.json").write_text(json.dumps(result, indent=1) + "\n")
    print(pd.DataFrame(rows).to_string(index=False))
    print(f"serial {serial_wall:.0f} s, sweep {sweep_wall:.0f} s: {serial_wall / sweep_wall:.2f}x")


if __name__ == "__main__":
    main()
