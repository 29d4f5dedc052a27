"""Several methods' predictions on one dataset, in one table with 95% bootstrap intervals (percent).

    python benchmarks/methods_table.py --dataset DIR PRED_DIR... [--bootstrap 1000] [--out table.md]

Each predictions folder is scored with the reference evaluator (image-level
and pixel-level metrics, the 95% interval from resampling the test images);
the method, its backbone (or teacher) and its training time come from the
folder's meta.json. A first step towards the leaderboard's tables.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from impeller_bench.common.files import atomic_write_bytes
from impeller_bench.data.dataset import load_dataset
from impeller_bench.evaluation.evaluate import evaluate
from impeller_bench.evaluation.predictions import load_predictions

COLUMNS = ("image_auroc", "image_auprc", "image_f1_max", "pixel_auroc", "pixel_pro_30", "pixel_f1_max")


def row(result: dict, meta: dict) -> str:
    cells = [meta.get("method", "?"), meta.get("backbone") or meta.get("teacher", "-"), f"{meta.get('fit_seconds', '?')}"]
    for name in COLUMNS:
        value, (low, high) = result["metrics"][name], result["ci95"][name]
        cells.append(f"{100 * value:.2f} [{100 * low:.2f}, {100 * high:.2f}]")
    return "| " + " | ".join(cells) + " |"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("predictions", nargs="+", type=Path)
    parser.add_argument("--dataset", required=True, type=Path)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="Also write the table here (markdown).")
    args = parser.parse_args(argv)
    dataset = load_dataset(args.dataset)
    lines = [f"{dataset.name}: {len(dataset.test)} test images; 95% intervals from {args.bootstrap} bootstrap "
             f"resamples of the test images (seed {args.seed})", "",
             "| method | backbone / teacher | fit s | " + " | ".join(COLUMNS) + " |",
             "|---" * (3 + len(COLUMNS)) + "|"]
    for folder in args.predictions:
        predictions = load_predictions(folder)
        result = evaluate(dataset, predictions, args.bootstrap, args.seed)
        lines.append(row(result, predictions.meta))
        print(lines[-1], file=sys.stderr, flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        atomic_write_bytes(args.out, text.encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
