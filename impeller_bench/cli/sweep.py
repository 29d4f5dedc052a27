"""The sweep command: a grid of runs (methods x datasets x seeds x options), resumable, on Dask or in-process."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from .options import MethodsCommand


@click.command("sweep", cls=MethodsCommand)
@click.argument("grid_file", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The sweep's folder: its cells, results and plots (an existing sweep is resumed).")
@click.option("--method", "methods", multiple=True, help="Repeatable; replaces the grid file's methods.")
@click.option("--dataset", "datasets", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="Repeatable; replaces the grid file's datasets.")
@click.option("--seeds", help="Comma-separated seeds, e.g. 0,1,2; replaces the grid's (default 0).")
@click.option("--set", "sets", multiple=True, metavar="KEY=V1,V2",
              help="Repeatable: a detector option and its values (e.g. anomaly_map=combined,local), for every "
                   "method that has it; added to the grid's.")
@click.option("--profile", type=click.Choice(["quick", "paper"]), help="Run profile (default quick).")
@click.option("--steps", type=click.IntRange(1), help="Training steps (overrides the profile).")
@click.option("--device", help="cpu or cuda (default: CUDA when this machine has it); CUDA cells ask the "
                               "workers for a GPU resource.")
@click.option("--bootstrap", "bootstrap_samples", type=click.IntRange(2),
              help="Bootstrap resamples behind each cell's intervals (default 1000).")
@click.option("--reference", help="The method the summary's paired intervals are against.")
@click.option("--scheduler", help="An existing Dask cluster's scheduler, tcp://HOST:PORT (default: an embedded "
                                  "LocalCluster on this machine).")
@click.option("--workers", type=click.IntRange(1), help="Local worker processes (default: min(cells, cores // 4), at least 1).")
@click.option("--threads-per-cell", "torch_threads", type=click.IntRange(1),
              help="Torch threads per cell (default: cores // workers; 4 when there are many cells).")
@click.option("--in-process", is_flag=True, help="Run the cells one after another in this process, without Dask.")
@click.option("--retry-failed", is_flag=True, help="Run again the cells recorded as failed.")
@click.option("--preload", multiple=True, help="Repeatable: a module or .py file imported here and on every "
                                               "worker first (your own detectors, registered by it).")
@click.option("--dry-run", is_flag=True, help="List the cells and which would run; run nothing.")
def sweep_command(grid_file, out, methods, datasets, seeds, sets, profile, steps, device, bootstrap_samples,
                  reference, scheduler, workers, torch_threads, in_process, retry_failed, preload, dry_run):
    """Run a grid of cells, each what 'run' does (fit, score, predictions, metrics), from GRID_FILE (YAML)
    and/or the options; write OUT/results.csv (and .parquet), OUT/summary.csv and .md, OUT/plots/.

    A cell is keyed by the digest of its definition: finished cells are kept, so a stopped sweep resumes
    where it stopped. Exit code 0 when every cell is done, 1 when some failed."""
    from ..sweeps.engine import import_modules, pending_cells, run_sweep
    from ..sweeps.grid import expand, parse_set, read_grid
    from ..sweeps.results import format_summary, write_results

    import_modules(preload)
    grid = read_grid(grid_file) if grid_file else {}
    overrides = {"methods": list(methods) or None, "datasets": list(datasets) or None,
                 "seeds": [_seed(s) for s in seeds.split(",")] if seeds else None, "profile": profile,
                 "steps": steps, "device": device, "bootstrap": bootstrap_samples, "reference": reference}
    grid |= {k: v for k, v in overrides.items() if v is not None}
    grid["set"] = dict(grid.get("set") or {}) | dict(parse_set(s) for s in sets)
    cells = expand(grid, grid_file or "the options")
    if dry_run:
        todo, _ = pending_cells(cells, out, retry_failed)
        for cell in cells:
            click.echo(f"{'run ' if cell in todo else 'kept'}  {cell.name}  {cell.run_command}")
        click.echo(f"{len(todo)} of {len(cells)} cell(s) would run")
        return
    report = run_sweep(cells, out, scheduler, workers, torch_threads, in_process, retry_failed, preload,
                       log=lambda text: click.echo(text, err=True))
    written, table, summary = write_results(out, cells, grid.get("reference"))
    click.echo(format_summary(summary, grid.get("reference")))
    engine = f" on {report.engine}, {report.torch_threads} torch thread(s) per cell" if report.ran or report.failed else ""
    click.echo(f"{report.ran} cell(s) run, {report.kept} kept, {len(report.failed)} failed, of {report.cells}"
               f"{engine}, in {report.wall_seconds:.1f} s; wrote {', '.join(str(p) for p in written[:3])} ...")
    failed = list(table.name[table.status == "failed"])
    if failed:
        click.echo(f"failed: {', '.join(failed)} (errors in {out / 'failed'}; --retry-failed runs them again)",
                   err=True)
        sys.exit(1)


def _seed(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise click.BadParameter(f"{text!r}: seeds are whole numbers, comma-separated", param_hint="--seeds") from None
