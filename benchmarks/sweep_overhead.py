"""The sweep engine's overhead per cell (scheduling, transfer, a worker's first imports) on tiny cells.

    python benchmarks/sweep_overhead.py [--cells 40] [--out runs/sweep-overhead]

The same N tiny cells (``mean-diff`` of tests/sweep_detectors.py: distance to the mean training image, on a
64-px synthetic set of 8 + 10 images, 20 bootstrap resamples) are run three ways, each into a fresh folder:
in this process (no Dask), on a LocalCluster of one worker (so the difference per cell is the engine's cost),
and on a LocalCluster of two. Writes OUT/sweep_overhead.json and prints the figures.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from impeller_bench.data.synth import write_synthetic
from impeller_bench.sweeps.engine import import_modules, run_sweep
from impeller_bench.sweeps.grid import expand

HELPERS = Path(__file__).resolve().parents[1] / "tests" / "sweep_detectors.py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=40)
    parser.add_argument("--out", type=Path, default=Path("runs/sweep-overhead"))
    args = parser.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    import_modules([HELPERS])
    dataset = args.out / "tiny"
    write_synthetic(dataset, train_good=8, test_good=5, test_defect=5, size=64, seed=1)
    cells = expand({"datasets": [str(dataset)], "methods": {"mean-diff": {}}, "seeds": list(range(args.cells)),
                    "bootstrap": 20, "device": "cpu"})
    figures = {"cells": len(cells)}
    for label, options in (("in_process", {"in_process": True}), ("local_cluster_1", {"workers": 1}),
                           ("local_cluster_2", {"workers": 2})):
        started = time.perf_counter()
        report = run_sweep(cells, args.out / label, torch_threads=1, preload=[HELPERS], log=lambda _text: None,
                           **options)
        assert report.ran == len(cells), report
        wall = time.perf_counter() - started
        cell_seconds = [json.loads((args.out / label / "cells" / c.name / "cell.json").read_text())["wall_seconds"]
                        for c in cells]
        figures[label] = {"wall_seconds": round(wall, 2), "per_cell_wall_seconds": round(wall / len(cells), 4),
                          "mean_cell_seconds": round(sum(cell_seconds) / len(cells), 4)}
        print(label, figures[label], flush=True)
    one = figures["local_cluster_1"]["wall_seconds"] - figures["in_process"]["wall_seconds"]
    figures["engine_seconds_per_cell_one_worker"] = round(one / len(cells), 4)
    (args.out / "sweep_overhead.json").write_text(json.dumps(figures, indent=1) + "\n")
    print(f"engine cost on one worker: {one:.1f} s for {len(cells)} cells (cluster start included), "
          f"{one / len(cells) * 1000:.0f} ms per cell")


if __name__ == "__main__":
    main()
