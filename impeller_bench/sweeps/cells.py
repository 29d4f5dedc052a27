"""One cell of a sweep, run where it lands (this process or a Dask worker) and kept whole or not at all.

A sweep's output folder holds::

    sweep.json                 the cells, their definitions and digests
    cells/NAME/cell.json       a finished cell: its definition, metrics, intervals, times, worker
    cells/NAME/predictions/    its predictions folder (scores.csv, maps/, meta.json), as ``run`` writes it
    cells/NAME/replicates.npz  each metric over the bootstrap's resamples (the same ones for every cell of a
                               dataset), for paired intervals between cells
    failed/NAME.json           a cell that raised: its definition and the error, one line

A cell folder appears only when everything in it is written (a staged folder, renamed into place), so a
worker killed mid-cell leaves nothing that counts as done, and a cell is never recorded twice.
"""
from __future__ import annotations

import json
import os
import re
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..common.errors import ImpellerBenchError
from ..common.files import atomic_write_bytes, staged_directory
from ..common.version import source_commit
from .grid import Cell

CELLS, FAILED = "cells", "failed"
CELL_FILE, PREDICTIONS, REPLICATES = "cell.json", "predictions", "replicates.npz"


def cell_folder(out: str | Path, cell: Cell) -> Path:
    return Path(out) / CELLS / cell.name


def failure_file(out: str | Path, cell: Cell) -> Path:
    return Path(out) / FAILED / f"{cell.name}.json"


def is_done(out, cell: Cell) -> bool:
    return is_cell(cell_folder(out, cell))


def read_record(folder: str | Path) -> dict:
    """A finished cell's ``cell.json`` (one error naming the file when it is missing or not JSON)."""
    path = Path(folder) / CELL_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ImpellerBenchError(f"not a finished sweep cell ({exc.__class__.__name__}: {exc})", path) from None


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# Datasets this process has checked, by (folder, manifest sha256): a worker reads every image once, before its
# first cell on the dataset, not before each cell.
_checked: dict[tuple[str, str], object] = {}


def checked_dataset(cell: Cell):
    """The cell's dataset, as this process sees it, after checking it is the one the sweep was planned on:
    its manifest's sha256 equal to the cell's, and every file as the manifest's checksums say
    (:func:`impeller_bench.data.validate.require_valid`). A worker that sees another copy fails, naming it."""
    from ..data.dataset import load_dataset
    from ..data.validate import require_valid

    key = (cell.dataset, cell.manifest_sha256)
    if key not in _checked:
        dataset = load_dataset(cell.dataset)
        if dataset.manifest_sha256 != cell.manifest_sha256:
            raise ImpellerBenchError(f"on {worker_name()} the dataset's manifest has sha256 "
                                     f"{dataset.manifest_sha256[:12]}..., the sweep was planned on "
                                     f"{cell.manifest_sha256[:12]}...: this worker sees another copy of the data",
                                     Path(cell.dataset) / "manifest.json")
        _checked[key] = require_valid(dataset)
    return _checked[key]


def run_cell(cell: Cell, out: str | Path, torch_threads: int) -> dict:
    """Fit, score, write and evaluate one cell into ``out/cells/NAME`` (staged, renamed when whole); returns
    its record. A cell already done is not run again: its record is returned as it is."""
    import torch
    from threadpoolctl import threadpool_limits

    folder = cell_folder(out, cell)
    if is_done(out, cell):
        return read_record(folder)
    torch.set_num_threads(torch_threads)
    # Dask's nanny starts workers with OMP/MKL/OpenBLAS at one thread: the cell's BLAS gets its threads too.
    with threadpool_limits(torch_threads):
        return _run_cell(cell, out, torch_threads, folder)


def _run_cell(cell: Cell, out, torch_threads: int, folder: Path) -> dict:
    from ..evaluation.evaluate import evaluate
    from ..evaluation.predictions import load_predictions
    from ..inspection.runner import detector_config, fit_on, score_in_chunks, write_run

    started = time.perf_counter()
    dataset = checked_dataset(cell)
    options = {k: list(v) if isinstance(v, tuple) else v for k, v in cell.options}
    config = detector_config(cell.method, cell.profile, cell.steps, cell.seed, options)
    with staged_directory(folder) as stage:
        detector, _train, fit_seconds = fit_on(dataset, cell.method, config, cell.device)
        scoring_started = time.perf_counter()
        scores, maps = score_in_chunks(detector, [s.load_image() for s in dataset.test])
        score_seconds = time.perf_counter() - scoring_started
        write_run(stage / PREDICTIONS, detector, dataset, cell.profile, fit_seconds, score_seconds, scores, maps)
        result = evaluate(dataset, load_predictions(stage / PREDICTIONS), bootstrap_samples=cell.bootstrap,
                          replicates=True)
        with open(stage / REPLICATES, "wb") as handle:
            np.savez(handle, **result.pop("replicates"))
        record = {"name": cell.name, "digest": cell.digest, "status": "done", "cell": cell.to_dict(),
                  "command": cell.run_command, "metrics": result["metrics"], "ci95": result.get("ci95"),
                  "bootstrap": result.get("bootstrap"), "test_images": result["test_images"],
                  "fit_seconds": round(fit_seconds, 3), "score_seconds_per_image": round(score_seconds / len(scores), 5),
                  "wall_seconds": round(time.perf_counter() - started, 3), "torch_threads": torch_threads,
                  "worker": worker_name(), "finished": _now(), "commit": source_commit()}
        (stage / CELL_FILE).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    failure_file(out, cell).unlink(missing_ok=True)
    return record


def execute_cell(cell_data: dict, out: str, torch_threads: int) -> dict:
    """The task a worker runs: :func:`run_cell`, with an error turned into a failure record (kept in
    ``out/failed``) so that the sweep goes on; only a dying worker makes the engine run the cell elsewhere."""
    cell = Cell.from_dict(cell_data)
    try:
        return run_cell(cell, out, torch_threads)
    except Exception as exc:  # any error of one cell is that cell's result: the others go on
        return record_failure(out, cell, one_line(exc))


def record_failure(out: str | Path, cell: Cell, error: str) -> dict:
    record = {"name": cell.name, "digest": cell.digest, "status": "failed", "cell": cell.to_dict(),
              "error": error, "worker": worker_name(), "finished": _now()}
    atomic_write_bytes(failure_file(out, cell), (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())
    return record


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def submission_defaults(folder: str | Path) -> dict:
    """What ``leaderboard submit`` takes from a finished cell: its predictions folder and command, and from the
    grid's ``submission`` block its entry name, authors, code, hardware, latency file and notes (each where
    given). The name and texts may hold {method}, {dataset}, {track} (the dataset's name less 'impeller-'),
    {seed}, {seed_suffix} ('' for seed 0, else '-seed<k>'), {options} ('' without, else '-key-value...') and
    {commit} (the commit of the code that ran the cell, as its record says)."""
    record = read_record(folder)
    cell = record["cell"]
    block = _submission_block(folder, cell)
    options = "".join(f"-{k}-{'-'.join(map(str, v)) if isinstance(v, list) else v}" for k, v in cell["options"])
    options = re.sub(r"[^A-Za-z0-9_.]+", "-", options)  # a path's '/' or a space would not name an entry
    fields = {"method": cell["method"], "dataset": cell["dataset_name"], "seed": cell["seed"],
              "track": cell["dataset_name"].removeprefix("impeller-"),
              "seed_suffix": "" if cell["seed"] == 0 else f"-seed{cell['seed']}", "options": options,
              "commit": record.get("commit") or "unknown"}
    notes = block.get("notes")
    notes = notes.get(cell["method"]) if isinstance(notes, dict) else notes
    defaults = {"predictions": Path(folder) / PREDICTIONS, "command": record["command"], "dataset_dir": cell["dataset"],
                "name": block.get("name"), "authors": block.get("authors"), "code": block.get("code"),
                "hardware": block.get("hardware"), "latency": block.get("latency"), "notes": notes}
    try:
        return {k: v.format(**fields) if isinstance(v, str) and k in ("name", "code", "hardware", "notes") else v
                for k, v in defaults.items()}
    except (KeyError, ValueError) as exc:
        raise ImpellerBenchError(f"the grid's submission block has a bad placeholder ({exc}); known: "
                                 f"{', '.join('{' + f + '}' for f in fields)}", Path(folder) / CELL_FILE) from None


def _submission_block(folder: str | Path, cell: dict) -> dict:
    """The grid's ``submission`` block as the sweep's latest plan (``sweep.json``) has it for this cell, else as
    the cell's record has it: the block is not part of a cell's digest, so a kept cell's record holds the texts
    of the grid it ran under, not the ones edited since."""
    digest = Cell.from_dict(cell).digest
    try:
        planned = json.loads((Path(folder).parent.parent / "sweep.json").read_text())["cells"]
    except (OSError, ValueError, KeyError, TypeError):
        planned = []
    for entry in planned:
        if isinstance(entry, dict) and entry.get("digest") == digest:
            return entry.get("cell", {}).get("submission") or {}
    return cell.get("submission") or {}


def is_cell(folder: str | Path) -> bool:
    """Whether ``folder`` is a finished cell (its record is written last)."""
    return (Path(folder) / CELL_FILE).is_file()
