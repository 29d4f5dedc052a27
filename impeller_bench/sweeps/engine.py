"""Running a sweep's cells: on Dask distributed (an embedded LocalCluster by default, or an existing cluster
given by its scheduler's address) or, without Dask, one after another in this process; the same results.

How the local engine sizes itself: each cell gets ``CELL_THREADS`` torch threads (or all the cores, where there
are fewer), and ``workers`` = min(cells to run, usable cores // those threads) processes run one cell each at
a time; cores left over when there are few cells go to the cells. So workers x threads never exceeds the
cores, and a cell keeps the threads that make it fast: on a 2-core machine, two one-thread cells at once
took 1.42x the wall of the same cells one after another on both cores (benchmarks/sweep_vs_serial.py), so
there the default is one worker with both cores. Either can be given (``--workers``, ``--threads-per-cell``). A cell's results depend on its definition and
its torch threads only, not on the engine: the same threads give the same metrics in every engine.

Dask runs a cell again on another worker when the worker running it dies (up to
``distributed.scheduler.allowed-failures`` times); a cell that raises is recorded as failed and the rest go on.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..common.errors import ImpellerBenchError
from ..common.files import atomic_write_bytes
from ..common.progress import format_seconds
from .cells import execute_cell, failure_file, is_done, read_record, record_failure
from .grid import Cell


@dataclass
class SweepReport:
    cells: int
    kept: int = 0
    ran: int = 0
    failed: list[str] = field(default_factory=list)
    engine: str = ""
    workers: int = 0
    torch_threads: int = 0
    wall_seconds: float = 0.0


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


CELL_THREADS = 4


def plan_workers(cells: int, workers: int | None = None, torch_threads: int | None = None) -> tuple[int, int]:
    """(worker processes, torch threads per cell) for ``cells`` cells on this machine (see the module text)."""
    cores = usable_cores()
    if workers is None:
        workers = max(1, min(cells, cores // (torch_threads or min(cores, CELL_THREADS))))
    return workers, torch_threads or max(1, cores // workers)


def resources_for(cell: Cell) -> dict | None:
    """The Dask worker resources a cell asks for: a GPU for a CUDA cell (workers started with
    ``--resources GPU=1`` take them), none for a CPU cell."""
    return {"GPU": 1} if cell.device.startswith("cuda") else None


def dask_available() -> bool:
    return importlib.util.find_spec("distributed") is not None


def import_modules(modules) -> None:
    """Import each of ``modules`` (a module name, or a .py file's path) once: user code that registers its own
    detectors, imported before any cell is planned or run."""
    for module in modules:
        path = Path(module)
        if path.suffix == ".py":
            if path.stem not in sys.modules:
                spec = importlib.util.spec_from_file_location(path.stem, path)
                if spec is None or not path.is_file():
                    raise ImpellerBenchError("cannot import: no such Python file", path)
                loaded = importlib.util.module_from_spec(spec)
                sys.modules[path.stem] = loaded
                spec.loader.exec_module(loaded)
        else:
            importlib.import_module(module)


def pending_cells(cells: list[Cell], out, retry_failed: bool = False) -> tuple[list[Cell], list[Cell]]:
    """(cells to run, cells kept): done cells are kept; failed ones too, unless ``retry_failed``."""
    todo, kept = [], []
    for cell in cells:
        settled = is_done(out, cell) or (not retry_failed and failure_file(out, cell).is_file())
        (kept if settled else todo).append(cell)
    return todo, kept


def write_plan(out, cells: list[Cell]) -> Path:
    """``sweep.json``: every cell of the sweep with its digest, for the results table and for resuming."""
    path = Path(out) / "sweep.json"
    plan = {"cells": [{"name": c.name, "digest": c.digest, "cell": c.to_dict()} for c in cells]}
    atomic_write_bytes(path, (json.dumps(plan, indent=1, sort_keys=True) + "\n").encode())
    return path


def read_plan(out) -> list[Cell]:
    path = Path(out) / "sweep.json"
    try:
        return [Cell.from_dict(entry["cell"]) for entry in json.loads(path.read_text())["cells"]]
    except (OSError, ValueError, KeyError) as exc:
        raise ImpellerBenchError(f"not a sweep's plan ({exc.__class__.__name__}: {exc})", path) from None


def run_sweep(cells: list[Cell], out, scheduler: str | None = None, workers: int | None = None,
              torch_threads: int | None = None, in_process: bool = False, retry_failed: bool = False,
              preload=(), log=print) -> SweepReport:
    """Run the cells of a sweep that are not done yet into ``out``; returns what happened.

    ``scheduler`` (``tcp://HOST:PORT``) runs them on an existing Dask cluster; otherwise an embedded
    LocalCluster when Dask is installed (the ``[cluster]`` extra) and ``in_process`` is not asked for; else
    this process. ``preload`` modules are imported here and on every worker."""
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    import_modules(preload)
    write_plan(out, cells)
    todo, kept = pending_cells(cells, out, retry_failed)
    report = SweepReport(cells=len(cells), kept=len(kept))
    if kept:
        log(f"sweep: {len(kept)} of {len(cells)} cell(s) already recorded in {out}, kept")
    if scheduler is None and not in_process and not dask_available():
        log("sweep: Dask is not installed (pip install 'impeller-bench[cluster]'): running in this process")
        in_process = True
    if todo:
        if in_process:
            workers, threads = 1, torch_threads or usable_cores()
            report.engine = "in-process"
            records = _in_process(todo, out, threads, _Progress(len(todo), 1, log))
        else:
            workers, threads = plan_workers(len(todo), workers, torch_threads)
            report.engine = f"dask {scheduler}" if scheduler else f"dask LocalCluster, {workers} worker(s)"
            records = _on_dask(todo, out, scheduler, workers, threads, preload, log)
        report.workers, report.torch_threads = workers, threads
        report.ran = sum(r["status"] == "done" for r in records)
        report.failed = [r["name"] for r in records if r["status"] != "done"]
    report.wall_seconds = time.perf_counter() - started
    return report


class _Progress:
    """Log lines as cells finish: done, running, failed, waiting, and the time left (the finished cells'
    mean duration x the cells left / the workers)."""

    def __init__(self, total: int, workers: int, log):
        self.total, self.workers, self.log = total, workers, log
        self.started, self.done, self.failed = time.perf_counter(), 0, 0

    def finished(self, record: dict) -> None:
        if record["status"] == "done":
            self.done += 1
        else:
            self.failed += 1
            self.log(f"sweep: FAILED {record['name']}: {record['error']}")
        finished = self.done + self.failed
        left = self.total - finished
        running = min(left, self.workers)
        elapsed = time.perf_counter() - self.started
        eta = f", about {format_seconds(elapsed / finished * left)} left" if left else ""
        self.log(f"sweep: {self.done} done, {running} running, {self.failed} failed, {left - running} waiting "
                 f"(of {self.total}); {format_seconds(elapsed)} so far{eta}")


def _in_process(todo: list[Cell], out: Path, threads: int, progress: _Progress) -> list[dict]:
    records = []
    for cell in todo:
        records.append(execute_cell(cell.to_dict(), str(out), threads))
        progress.finished(records[-1])
    return records


def _on_dask(todo: list[Cell], out: Path, scheduler: str | None, workers: int, threads: int, preload, log) -> list[dict]:
    from distributed import Client, LocalCluster, as_completed

    gpu = any(resources_for(c) for c in todo)
    if scheduler:
        cluster, client = None, Client(scheduler, timeout="30s")
    else:
        # One cell at a time per worker process; a CUDA sweep's local workers each hold the machine's GPU.
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                               resources={"GPU": 1} if gpu else None)
        client = Client(cluster)
    try:
        if preload:
            client.register_plugin(_preload_plugin(list(map(str, preload))), name="impeller-bench-preload")
        where = scheduler or "a LocalCluster"
        found = len(client.scheduler_info().get("workers", {}))
        log(f"sweep: {len(todo)} cell(s) on {where} ({found} worker(s) now), {threads} torch thread(s) per cell")
        futures = {client.submit(execute_cell, cell.to_dict(), str(out.resolve()), threads, key=f"cell-{cell.digest}",
                                 pure=False, resources=resources_for(cell)): cell
                   for cell in todo}
        progress = _Progress(len(todo), max(1, found or workers), log)
        records = []
        for future in as_completed(futures):
            cell = futures[future]
            try:
                record = future.result()
            except Exception as exc:  # the task itself lost (its workers died): the cell failed, the rest go on
                from .cells import one_line

                record = record_failure(out, cell, f"the cell's worker died: {one_line(exc)}")
            records.append(read_record(out / "cells" / cell.name) if record["status"] == "done" else record)
            progress.finished(record)
        return records
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _preload_plugin(modules: list[str]):
    """A worker plugin that imports the user's modules on each worker, those that join later (a restarted
    one) included."""
    from distributed.diagnostics.plugin import WorkerPlugin

    class Preload(WorkerPlugin):
        def setup(self, worker):
            import_modules(modules)

    return Preload()
