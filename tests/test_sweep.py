"""Sweeps: a grid expands into cells keyed by digest; the engines (in-process, an embedded LocalCluster, a real
`dask scheduler` with `dask worker` processes on loopback) give the same cells; a killed worker's cell runs
again elsewhere and is recorded once; a failing cell is recorded and the rest finish; a sweep resumes."""
from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from impeller_bench.cli import main
from impeller_bench.common.errors import ImpellerBenchError
from impeller_bench.detectors import base as detectors_base
from impeller_bench.sweeps import cells as sweep_cells
from impeller_bench.sweeps.engine import import_modules, plan_workers, run_sweep
from impeller_bench.sweeps.grid import Cell, expand, parse_set, read_grid
from impeller_bench.sweeps.results import write_results

HELPERS = Path(__file__).with_name("sweep_detectors.py")


@pytest.fixture(scope="module", autouse=True)
def sweep_detectors_registered():
    """mean-diff, crash-once and always-fails registered here too, for this module's tests only: the other
    modules see the package's own detectors."""
    before = dict(detectors_base._REGISTRY)
    import_modules([HELPERS])
    yield
    detectors_base._REGISTRY.clear()
    detectors_base._REGISTRY.update(before)
    sys.modules.pop(HELPERS.stem, None)


METRICS = ["image_auroc", "pixel_auroc", "pixel_pro_30", "pixel_f1_max"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from impeller_bench.data.synth import write_synthetic

    out = tmp_path_factory.mktemp("sweep") / "tiny"
    write_synthetic(out, train_good=8, test_good=5, test_defect=5, size=64, seed=1)
    return out


def small_grid(dataset: Path) -> dict:
    return {"datasets": [str(dataset)], "methods": {"padim": {}, "mean-diff": {}}, "seeds": [0, 1], "bootstrap": 40,
            "device": "cpu", "reference": "padim"}


@pytest.fixture(scope="module")
def in_process(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "in-process"
    cells = expand(small_grid(tiny))
    report = run_sweep(cells, out, torch_threads=1, in_process=True, log=lambda _text: None)
    assert report.ran == 4 and not report.failed
    return cells, out


def outputs(out: Path, cells: list[Cell]) -> dict:
    """Each cell's metrics and the bytes of its scores and maps."""
    found = {}
    for cell in cells:
        folder = sweep_cells.cell_folder(out, cell)
        record = sweep_cells.read_record(folder)
        files = sorted((folder / "predictions").rglob("*.npy")) + [folder / "predictions" / "scores.csv"]
        found[cell.name] = (record["metrics"], {f.relative_to(folder).as_posix(): f.read_bytes() for f in files})
    return found


def assert_same_cells(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        for metric in METRICS:
            assert abs(a[name][0][metric] - b[name][0][metric]) <= 1e-9, (name, metric)
        assert a[name][1] == b[name][1], f"{name}: predictions differ"  # both detectors are deterministic


def test_grid_expands_into_cells_keyed_by_their_definition(tiny, tmp_path):
    cells = expand(small_grid(tiny))
    assert [(c.method, c.seed) for c in cells] == [("padim", 0), ("padim", 1), ("mean-diff", 0), ("mean-diff", 1)]
    assert len({c.digest for c in cells}) == 4
    assert expand(small_grid(tiny))[0].digest == cells[0].digest  # the same definition, the same cell
    mixed = expand(small_grid(tiny) | {"methods": {"padim": {}, "ours": {}}, "seeds": [0],
                                       "set": {"anomaly_map": ["combined", "local"]}})
    assert [c.method for c in mixed] == ["padim", "ours", "ours"]
    assert mixed[0].digest == cells[0].digest  # anomaly_map goes only to the methods that have it
    ours = mixed[1:]
    assert [dict(c.options) for c in ours] == [{"anomaly_map": "combined"}, {"anomaly_map": "local"}]
    assert "--anomaly-map local" in ours[1].run_command and "--device cpu" in ours[1].run_command
    odd = Cell(**(ours[1].to_dict() | {"dataset": "/data/my track", "options": (("layers", ("stage3", "stage5")),
                                                                              ("lr", 0.0001))}))
    words = shlex.split(odd.run_command.split("  #")[0])
    assert words[words.index("--dataset") + 1] == "/data/my track"  # quoted
    assert words[words.index("--layers") + 1] == "stage3,stage5"  # a tuple of values, as run takes it
    assert "--lr" not in words and odd.run_command.endswith("# with lr=0.0001 (no run option: set by the grid)")
    # run's --map-padding also turns the border cover off: the flag only where the cell does the same
    framed = Cell(**(ours[1].to_dict() | {"options": (("cover_border", False), ("map_padding", "zero"))}))
    assert framed.run_command.endswith("--map-padding zero")
    covered = Cell(**(ours[1].to_dict() | {"options": (("map_padding", "zero"),)}))
    assert "--map-padding" not in covered.run_command and covered.run_command.endswith("# with map_padding=zero "
                                                                                        "(no run option: set by the grid)")
    moved = tmp_path / "moved"
    shutil.copytree(tiny, moved)
    assert expand(small_grid(moved))[0].digest == cells[0].digest  # known by the manifest, not the path
    for change in ({"seed": 2}, {"manifest_sha256": "0" * 64}, {"options": (("delay", 0.5),)}, {"bootstrap": 41}):
        assert Cell(**(cells[0].to_dict() | {"options": ()} | change)).digest != cells[0].digest, change
    assert Cell.from_dict(json.loads(json.dumps(ours[1].to_dict()))) == ours[1]


def test_grid_mistakes_are_one_clear_error(tiny, tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"datasets: [{tiny}]\nmethods: {{padim: {{}}}}\nseed: [0]\n")
    with pytest.raises(ImpellerBenchError, match="unknown grid key.*seed") as caught:
        read_grid(grid)
    assert str(grid) in str(caught.value)
    with pytest.raises(ImpellerBenchError, match="padim has no option.*no_such"):
        expand({"datasets": [str(tiny)], "methods": {"padim": {"set": {"no_such": [1]}}}})
    with pytest.raises(ImpellerBenchError, match="unknown detector 'nope'"):
        expand({"datasets": [str(tiny)], "methods": ["nope"]})
    with pytest.raises(ImpellerBenchError, match="whole numbers"):
        expand({"datasets": [str(tiny)], "methods": ["padim"], "seeds": ["a"]})
    with pytest.raises(ImpellerBenchError, match="more than once"):
        expand({"datasets": [str(tiny)], "methods": ["padim"], "seeds": [0, 1, 0]})
    with pytest.raises(ImpellerBenchError, match="no_such is an option of none"):
        expand({"datasets": [str(tiny)], "methods": ["padim"], "set": {"no_such": [1]}})  # not dropped silently
    with pytest.raises(ImpellerBenchError, match="seed is a cell's own setting.*seeds:"):
        expand({"datasets": [str(tiny)], "methods": {"padim": {"set": {"seed": [3]}}}})
    with pytest.raises(ImpellerBenchError, match="methods: a list of names"):
        expand({"datasets": [str(tiny)], "methods": "padim"})
    assert parse_set("dropout=0.2,0") == ("dropout", [0.2, 0])
    with pytest.raises(ImpellerBenchError, match="KEY=VALUE"):
        parse_set("dropout")


def test_cuda_cells_ask_for_a_gpu_and_cpu_cells_do_not(tiny):
    from impeller_bench.sweeps.engine import resources_for

    (cell,) = expand({"datasets": [str(tiny)], "methods": ["padim"], "device": "cpu"})
    assert resources_for(cell) is None
    on_gpu = Cell(**(cell.to_dict() | {"options": (), "device": "cuda"}))
    assert resources_for(on_gpu) == {"GPU": 1} and on_gpu.digest != cell.digest


def test_workers_times_threads_never_exceed_the_cores(monkeypatch):
    monkeypatch.setattr("impeller_bench.sweeps.engine.usable_cores", lambda: 8)
    assert plan_workers(20) == (2, 4)  # CELL_THREADS each
    assert plan_workers(1) == (1, 8)  # a lone cell takes every core
    assert plan_workers(20, torch_threads=1) == (8, 1)
    assert plan_workers(20, workers=8) == (8, 1)
    assert plan_workers(3, workers=3) == (3, 2)
    monkeypatch.setattr("impeller_bench.sweeps.engine.usable_cores", lambda: 2)
    assert plan_workers(4) == (1, 2)  # on 2 cores, one cell at a time on both (measured faster)


def test_local_cluster_equals_in_process_cell_for_cell(in_process, tmp_path):
    cells, reference = in_process
    report = run_sweep(cells, tmp_path / "dask", workers=2, torch_threads=1, preload=[HELPERS], log=lambda _text: None)
    assert report.engine.startswith("dask LocalCluster") and report.ran == 4 and report.workers == 2
    assert_same_cells(outputs(reference, cells), outputs(tmp_path / "dask", cells))
    written, table, summary = write_results(tmp_path / "dask", cells, "padim")
    assert {p.name for p in written} >= {"results.csv", "results.parquet", "summary.csv", "summary.md",
                                          "synthetic-impellers.png"}
    assert list(table.status) == ["done"] * 4
    assert pd.read_parquet(tmp_path / "dask" / "results.parquet").equals(table)
    means = summary.set_index("method")
    for method in ("padim", "mean-diff"):
        assert means.loc[method, "image_auroc"] == pytest.approx(table[table.method == method].image_auroc.mean())
        assert means.loc[method, "image_auroc_low"] <= means.loc[method, "image_auroc_high"]
    # mean-diff minus the reference, padim: the mean of the per-seed differences, inside its paired interval
    difference = (table[table.method == "mean-diff"].pixel_auroc.mean() - table[table.method == "padim"].pixel_auroc.mean())
    assert means.loc["mean-diff", "pixel_auroc_vs_padim"] == pytest.approx(difference)
    assert "pixel_auroc_vs_padim" not in means.columns or pd.isna(means.loc["padim", "pixel_auroc_vs_padim"])


def test_real_scheduler_and_two_workers_on_loopback(in_process, tmp_path):
    cells, reference = in_process
    scheduler_file = tmp_path / "scheduler.json"
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    processes = [subprocess.Popen(dask + ["--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                          "--scheduler-file", str(scheduler_file)], stderr=subprocess.DEVNULL)]
    try:
        for _ in range(600):
            if scheduler_file.is_file() and scheduler_file.read_text().strip():
                break
            time.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        for _ in range(2):
            processes.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address,
                                               "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"],
                                              stderr=subprocess.DEVNULL))
        from distributed import Client

        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
        report = run_sweep(cells, tmp_path / "remote", scheduler=address, torch_threads=1, preload=[HELPERS],
                           log=lambda _text: None)
        assert report.engine == f"dask {address}" and report.ran == 4
        workers = {sweep_cells.read_record(sweep_cells.cell_folder(tmp_path / "remote", c))["worker"] for c in cells}
        assert len(workers) == 2  # both worker processes took cells
        assert_same_cells(outputs(reference, cells), outputs(tmp_path / "remote", cells))
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            process.wait(timeout=60)


def test_killed_worker_failing_cell_and_resume(tiny, tmp_path):
    marker = tmp_path / "crashed"
    grid = {"datasets": [str(tiny)], "bootstrap": 20, "device": "cpu",
            "methods": {"crash-once": {"seeds": [0, 1], "set": {"crash_marker": [str(marker)]}},
                        "always-fails": {}, "mean-diff": {}}}
    cells = expand(grid)
    out = tmp_path / "sweep"
    lines = []
    report = run_sweep(cells, out, workers=2, torch_threads=1, preload=[HELPERS], log=lines.append)
    assert marker.exists()  # a worker died in the middle of a cell
    failing = next(c for c in cells if c.method == "always-fails")
    assert report.failed == [failing.name] and report.ran == 3
    done = sorted(p.name for p in (out / "cells").iterdir())
    assert done == sorted(c.name for c in cells if c is not failing)  # each once, no staging folder left
    failure = json.loads(sweep_cells.failure_file(out, failing).read_text())
    assert failure["error"] == "ValueError: this detector always fails (on purpose)"
    progress = [line for line in lines if " done, " in line]
    assert len(progress) == 4 and "left" in progress[0] and "1 failed" in progress[-1]  # the time left, the failures

    resumed = next(c for c in cells if c.method == "mean-diff")
    shutil.rmtree(sweep_cells.cell_folder(out, resumed))
    report = run_sweep(cells, out, in_process=True, torch_threads=1, log=lambda _text: None)
    assert (report.ran, report.kept, report.failed) == (1, 3, [])  # only the missing cell; the failed one kept
    report = run_sweep(cells, out, in_process=True, torch_threads=1, retry_failed=True, log=lambda _text: None)
    assert (report.ran, report.kept, report.failed) == (0, 3, [failing.name])
    _, table, _ = write_results(out, cells)
    assert sorted(table.status) == ["done", "done", "done", "failed"]


def test_without_dask_the_sweep_runs_in_this_process(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr("impeller_bench.sweeps.engine.dask_available", lambda: False)
    cells = expand({"datasets": [str(tiny)], "methods": ["mean-diff"], "seeds": [0, 1], "bootstrap": 20,
                    "device": "cpu"})
    lines = []
    report = run_sweep(cells, tmp_path / "out", torch_threads=1, log=lines.append)
    assert report.engine == "in-process" and report.ran == 2
    assert any("Dask is not installed" in line and "[cluster]" in line for line in lines)


def test_a_worker_seeing_another_copy_of_the_data_fails_naming_it(tiny, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny, copy)
    (cell,) = expand({"datasets": [str(copy)], "methods": ["mean-diff"], "bootstrap": 20, "device": "cpu"})
    image = next((copy / "test").rglob("*.png"))
    image.write_bytes(image.read_bytes()[:-40])  # truncated: its checksum no longer matches the manifest
    record = sweep_cells.execute_cell(cell.to_dict(), str(tmp_path / "out"), 1)
    assert record["status"] == "failed" and image.name in record["error"]
    other = Cell.from_dict(cell.to_dict() | {"manifest_sha256": "0" * 64})
    record = sweep_cells.execute_cell(other.to_dict(), str(tmp_path / "out"), 1)
    assert "another copy of the data" in record["error"] and "manifest.json" in record["error"]


def test_sweep_command_and_submit_from_its_cells(tiny, tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"datasets: [{tiny}]\nmethods: [mean-diff]\nbootstrap: 20\ndevice: cpu\n"
                    "submission:\n  name: '{method}-{track}{seed_suffix}'\n  authors: [tests]\n"
                    "  code: 'commit {commit}'\n  hardware: CI\n  notes: {mean-diff: a test detector}\n")
    runner = CliRunner()
    out = tmp_path / "sweep"
    base = ["sweep", str(grid), "--out", str(out), "--preload", str(HELPERS), "--in-process"]
    result = runner.invoke(main, base + ["--seeds", "0,1", "--dry-run"])
    assert result.exit_code == 0 and "2 of 2 cell(s) would run" in result.output, result.output
    result = runner.invoke(main, base + ["--seeds", "0,1"])
    assert result.exit_code == 0, result.output
    assert "2 cell(s) run, 0 kept, 0 failed, of 2" in result.output and "| mean-diff |" in result.output
    grid.write_text(grid.read_text().replace("a test detector", "notes edited since"))
    result = runner.invoke(main, base + ["--seeds", "0,1"])
    assert "0 cell(s) run, 2 kept" in result.output
    folders = sorted((out / "cells").iterdir())
    result = runner.invoke(main, ["leaderboard", "submit", *map(str, folders), "--board", str(tmp_path / "board"),
                                  "--bootstrap", "20", "--map-size", "16"])
    assert result.exit_code == 0, result.output
    entries = sorted(p.name for p in (tmp_path / "board" / "submissions").iterdir())
    assert entries == ["mean-diff-synthetic-impellers", "mean-diff-synthetic-impellers-seed1"]
    submitted = json.loads((tmp_path / "board" / "submissions" / entries[1] / "submission.json").read_text())
    assert submitted["command"].startswith("impeller-bench run mean-diff --dataset") and "--seed 1" in submitted["command"]
    assert submitted["notes"] == "notes edited since" and submitted["authors"] == ["tests"]  # the grid's now
    assert "commit" in sweep_cells.read_record(folders[1])  # the code that ran it (None outside a checkout)
    # the scores go in as they are (the maps are shrunk to 16 px): the image metrics are the cell's
    assert submitted["metrics"]["image_auroc"] == pytest.approx(
        sweep_cells.read_record(folders[1])["metrics"]["image_auroc"], abs=1e-12)
    result = runner.invoke(main, ["leaderboard", "submit", str(folders[0]), str(folders[1]), "--name", "x",
                                  "--board", str(tmp_path / "board")])
    assert result.exit_code == 2 and "--name names one entry" in result.output
    as_run = (folders[1] / "cell.json").read_text()
    record = json.loads(as_run)
    record["commit"] = "abc1234"  # as if another checkout had run it: the entry names that code
    record["cell"]["options"] = [["layers", ["stage3", "stage5"]], ["backbone_weights", "/w/x y.pth"]]
    record["cell"]["submission"]["name"] = "{method}{options}"
    (folders[1] / "cell.json").write_text(json.dumps(record))
    result = runner.invoke(main, ["leaderboard", "submit", str(folders[1]), "--board", str(tmp_path / "board")])
    assert result.exit_code == 0, result.output
    named = tmp_path / "board" / "submissions" / "mean-diff-layers-stage3-stage5-backbone_weights-w-x-y.pth"
    assert json.loads((named / "submission.json").read_text())["code"] == "commit abc1234"
    result = runner.invoke(main, ["leaderboard", "submit", str(folders[1]), "--name", "a/b", "--board",
                                  str(tmp_path / "board")])
    assert result.exit_code != 0 and "entry name 'a/b' is unsafe" in result.output
    (folders[1] / "cell.json").write_text(as_run)  # its definition as planned again: the plan's block applies
    plan = json.loads((out / "sweep.json").read_text())
    for planned in plan["cells"]:  # as if the grid had a seed-free name: the second entry would replace the first
        planned["cell"]["submission"]["name"] = "{method}-{track}"
    (out / "sweep.json").write_text(json.dumps(plan))
    result = runner.invoke(main, ["leaderboard", "submit", *map(str, folders), "--board", str(tmp_path / "board"),
                                  "--overwrite"])
    assert result.exit_code == 2 and "would both be entry 'mean-diff-synthetic-impellers'" in result.output
    assert "{seed_suffix} for seeds" in result.output


def test_seeds_and_groups_interval_of_a_mean():
    from impeller_bench.evaluation.significance import seeds_and_groups_interval, seeds_and_groups_mean_interval

    rng = np.random.default_rng(0)
    constant = np.full((3, 200), 0.7)
    assert seeds_and_groups_mean_interval(constant) == pytest.approx((0.7, 0.7))
    a, b = rng.random((3, 200)), rng.random((3, 200))
    assert seeds_and_groups_interval(a, b) == seeds_and_groups_mean_interval(b - a)
    spread = np.vstack([np.full(200, 0.5), np.full(200, 0.9)])  # the seeds alone differ: the interval spans them
    low, high = seeds_and_groups_mean_interval(spread)
    assert low == pytest.approx(0.5) and high == pytest.approx(0.9)
