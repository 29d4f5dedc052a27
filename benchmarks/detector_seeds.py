"""Several methods x several seeds on one dataset, same teacher and steps: every metric, mean and spread.

    python benchmarks/detector_seeds.py --dataset DIR [--methods ours efficientad] [--seeds 0 1 2]
        [--profile quick] [--steps N] [--image-size S] [--teacher NAME_OR_FILE] [--out runs/seeds]

Each run goes through ``impeller_bench.inspection.runner.run_method`` (fit on train/good,
score the test set, write the predictions folder, evaluate with the reference
evaluator). Writes ``OUT/results.json`` (every run) and ``OUT/table.md``
(mean +- sample std over seeds, percent) and prints the table.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from impeller_bench.common.files import atomic_write_bytes
from impeller_bench.inspection.runner import run_method


def summarise(runs: list[dict]) -> str:
    methods = list(dict.fromkeys(r["method"] for r in runs))
    names = list(runs[0]["metrics"])
    extra = [k for k, v in runs[0]["breakdown"].items() if "image_auroc" in v]
    header = ["method", "seeds", "fit s"] + names + [f"image_auroc {k}" for k in extra]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in methods:
        mine = [r for r in runs if r["method"] == method]

        def cell(values):
            values = 100 * np.asarray(values, float)
            return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}" if len(values) > 1 else f"{values[0]:.2f}"

        row = [method, str(len(mine)), f"{np.mean([r['fit_seconds'] for r in mine]):.0f}"]
        row += [cell([r["metrics"][n] for r in mine]) for n in names]
        row += [cell([r["breakdown"][k]["image_auroc"] for r in mine]) for k in extra]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, type=Path)
    parser.add_argument("--methods", nargs="+", default=["ours", "efficientad"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--teacher")
    parser.add_argument("--device")
    parser.add_argument("--out", type=Path, default=Path("runs/seeds"))
    args = parser.parse_args(argv)
    options = {k: v for k, v in (("image_size", args.image_size), ("teacher", args.teacher)) if v}
    runs = []
    for method in args.methods:
        for seed in args.seeds:
            started = time.perf_counter()
            result = run_method(method, args.dataset, args.out / f"{method}-seed{seed}", args.profile, args.steps, seed,
                                args.device, overwrite=True, **options)
            runs.append({"method": method, "seed": seed, "fit_seconds": result["fit_seconds"],
                         "wall_seconds": time.perf_counter() - started, "metrics": result["metrics"],
                         "breakdown": result["breakdown"]})
            print(f"{method} seed {seed}: fit {result['fit_seconds']:.0f} s, "
                  + ", ".join(f"{k} {100 * v:.2f}" for k, v in result["metrics"].items()), flush=True)
    table = summarise(runs)
    record = {"dataset": str(args.dataset), "profile": args.profile, "steps": args.steps, "options": options,
              "command": " ".join(sys.argv), "runs": runs}
    atomic_write_bytes(args.out / "results.json", (json.dumps(record, indent=1) + "\n").encode())
    atomic_write_bytes(args.out / "table.md", (table + "\n").encode())
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
