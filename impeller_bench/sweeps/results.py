"""A sweep's results: a table with a row per cell (CSV, and Parquet where pyarrow is installed), a summary per
method, options and dataset (mean over seeds, 95% interval resampling photo groups and seeds, and the paired
interval against a reference method), and one plot per dataset."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..common.files import atomic_write_bytes
from ..evaluation.significance import seeds_and_groups_interval, seeds_and_groups_mean_interval
from .cells import REPLICATES, cell_folder, failure_file, is_cell, is_done, read_record
from .grid import Cell
from .plots import SHOWN, summary_plots

METRICS = ("image_auroc", "image_auprc", "image_f1_max", "pixel_auroc", "pixel_pro_30", "pixel_f1_max")


def options_text(cell: Cell) -> str:
    return " ".join(f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in cell.options) or "-"


def results_table(out, cells: list[Cell]) -> pd.DataFrame:
    """One row per cell: its definition, status (done, failed, missing), times, worker and metrics."""
    rows = []
    for cell in cells:
        row = {"name": cell.name, "digest": cell.digest, "method": cell.method, "dataset": cell.dataset_name,
               "seed": cell.seed, "profile": cell.profile, "options": options_text(cell), "device": cell.device}
        folder, failure = cell_folder(out, cell), failure_file(out, cell)
        if is_cell(folder):
            record = read_record(folder)
            row |= {"status": "done", "error": None, "worker": record["worker"],
                    "torch_threads": record["torch_threads"], "wall_seconds": record["wall_seconds"],
                    "fit_seconds": record["fit_seconds"], "score_seconds_per_image": record["score_seconds_per_image"]}
            row |= {m: record["metrics"].get(m) for m in METRICS}
        elif failure.is_file():
            record = json.loads(failure.read_text())
            row |= {"status": "failed", "error": record["error"], "worker": record["worker"]}
        else:
            row |= {"status": "missing"}
        rows.append(row)
    return pd.DataFrame(rows)


def load_replicates(out, cell: Cell) -> dict[str, np.ndarray]:
    with np.load(cell_folder(out, cell) / REPLICATES) as data:
        return {name: data[name] for name in data.files}


def summary_table(out, cells: list[Cell], reference: str | None = None) -> pd.DataFrame:
    """Per dataset, method and options: seeds done, and per metric the mean over seeds, its 95% interval
    (photo groups and seeds resampled) and, against ``reference`` (the same dataset and options where it has
    them, else its plain cells), the mean difference with its paired 95% interval over the seeds both have."""
    done = [c for c in cells if is_done(out, c)]
    groups: dict[tuple, dict[int, Cell]] = {}
    for cell in done:
        groups.setdefault((cell.dataset_name, cell.method, options_text(cell)), {})[cell.seed] = cell
    rows = []
    for (dataset, method, options), by_seed in groups.items():
        replicates = {seed: load_replicates(out, c) for seed, c in sorted(by_seed.items())}
        row = {"dataset": dataset, "method": method, "options": options, "seeds": len(by_seed)}
        for metric in METRICS:
            table = _table(replicates, metric)
            if table is None:
                continue
            values = [read_record(cell_folder(out, c))["metrics"][metric] for c in by_seed.values()]
            row[metric] = float(np.mean(values))
            row[f"{metric}_low"], row[f"{metric}_high"] = seeds_and_groups_mean_interval(table)
        ref = _reference_cells(groups, dataset, reference, options) if reference and method != reference else None
        if ref:
            common = sorted(set(ref) & set(by_seed))
            ref_replicates = {s: load_replicates(out, ref[s]) for s in common}
            mine = {s: replicates[s] for s in common}
            for metric in METRICS:
                a, b = _table(ref_replicates, metric), _table(mine, metric)
                if a is None or b is None or not common:
                    continue
                row[f"{metric}_vs_{reference}"] = float(np.mean([row_metric(out, by_seed[s], metric)
                                                                 - row_metric(out, ref[s], metric) for s in common]))
                row[f"{metric}_vs_{reference}_low"], row[f"{metric}_vs_{reference}_high"] = \
                    seeds_and_groups_interval(a, b)
        rows.append(row)
    return pd.DataFrame(rows)


def row_metric(out, cell: Cell, metric: str) -> float:
    return read_record(cell_folder(out, cell))["metrics"][metric]


def _reference_cells(groups: dict, dataset: str, reference: str, options: str) -> dict[int, Cell] | None:
    return groups.get((dataset, reference, options)) or groups.get((dataset, reference, "-"))


def _table(replicates: dict[int, dict[str, np.ndarray]], metric: str) -> np.ndarray | None:
    """Seeds x bootstrap replicates of ``metric`` (None where a cell lacks it or the lengths differ)."""
    rows = [r.get(metric) for r in replicates.values()]
    if not rows or any(r is None for r in rows) or len({len(r) for r in rows}) != 1 or len(rows[0]) < 2:
        return None
    return np.stack(rows)


def format_summary(summary: pd.DataFrame, reference: str | None = None) -> str:
    """The summary as a Markdown table: per metric of :data:`SHOWN`, mean [95% interval] in percent."""
    if summary.empty:
        return "(no finished cells)"
    shown = [m for m in SHOWN if m in summary]
    versus = [m for m in shown if reference and f"{m}_vs_{reference}" in summary]
    header = ["dataset", "method", "options", "seeds"] + shown + [f"{m} - {reference}" for m in versus]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in summary.iterrows():
        cells = [row["dataset"], row["method"], row["options"], str(row["seeds"])]
        cells += [_interval_text(row, m) for m in shown]
        cells += [_interval_text(row, f"{m}_vs_{reference}") for m in versus]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _interval_text(row, key: str) -> str:
    value = row.get(key)
    if value is None or pd.isna(value):
        return "-"
    return f"{100 * value:.2f} [{100 * row[f'{key}_low']:.2f}, {100 * row[f'{key}_high']:.2f}]"


def write_results(out, cells: list[Cell], reference: str | None = None) -> tuple[list[Path], pd.DataFrame,
                                                                                pd.DataFrame]:
    """results.csv (and .parquet), summary.csv, summary.md and plots/DATASET.png in ``out``; their paths, the
    results table and the summary."""
    out = Path(out)
    table, summary = results_table(out, cells), summary_table(out, cells, reference)
    written = [_write(out / "results.csv", table.to_csv(index=False).encode()),
               _write(out / "summary.csv", summary.to_csv(index=False).encode()),
               _write(out / "summary.md", (format_summary(summary, reference) + "\n").encode())]
    try:
        import io

        buffer = io.BytesIO()
        table.to_parquet(buffer, index=False)
        written.append(_write(out / "results.parquet", buffer.getvalue()))
    except ImportError:  # pyarrow is in the [cluster] extra; the CSV holds the same table
        pass
    if not summary.empty:
        written += summary_plots(out, table, summary)
    return written, table, summary


def _write(path: Path, data: bytes) -> Path:
    atomic_write_bytes(path, data)
    return path
