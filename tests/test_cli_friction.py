"""Issue 14, section 5: progress where no one watches a bar, --device checked up front, outputs that follow the
umask, help that names every method and option, a failed download that leaves nothing behind."""
import functools
import inspect
import itertools
import os
import re
import stat
import zipfile

import pytest
import torch
from click.testing import CliRunner
from conftest import REPO

from impeller_bench import detectors
from impeller_bench.cli import main
from impeller_bench.cli.options import detector_options
from impeller_bench.common.errors import ImpellerBenchError
from impeller_bench.common.files import atomic_write_bytes, staged_directory
from impeller_bench.common.progress import format_seconds, report_lines
from impeller_bench.data import synth
from impeller_bench.data.download import fetch
from impeller_bench.detectors.base import parse_device

pytestmark = pytest.mark.usefixtures("fixed_torch_threads")


def fake_clock(step: float = 1.0):
    """A clock that moves ``step`` seconds each time it is read."""
    ticks = itertools.count(0.0, step)
    return lambda: next(ticks)


# 1. Progress where stderr is not a terminal: a line now and then, and one at the end.

def test_lines_give_count_speed_and_time_left_every_interval():
    lines = []
    items = list(report_lines(range(100), "counting", write=lines.append, interval=20, clock=fake_clock()))
    assert items == list(range(100))
    assert lines == ["counting: 20/100 (20%), 1.00/s, about 1 min 20 s left",
                     "counting: 40/100 (40%), 1.00/s, about 1 min 00 s left",
                     "counting: 60/100 (60%), 1.00/s, about 40 s left",
                     "counting: 80/100 (80%), 1.00/s, about 20 s left",
                     "counting: 100/100 in 1 min 41 s, 0.99/s"]


def test_a_short_loop_writes_one_line_and_an_interrupted_one_no_end():
    lines = []
    list(report_lines([1, 2, 3], "quick", write=lines.append, interval=20, clock=fake_clock(0.01)))
    assert lines == ["quick: 3/3 in 40.0 ms, 75.00/s"]
    lines.clear()
    for _ in report_lines(range(10), "stopped", write=lines.append, interval=20, clock=fake_clock()):
        break
    assert lines == []


def test_a_training_loop_reports_step_loss_rate_and_time_left():
    """A tiny fit through the library's progress: its lines carry the loop's loss and speed."""
    lines = []
    progress = functools.partial(report_lines, write=lines.append, interval=20, clock=fake_clock(10))
    train = [synth.generate("train", "good", k, 0, 64)[0] for k in range(4)]
    detector = detectors.create("ours", image_size=64, steps=4, batch_size=2, seed=0, device="cpu", precision="float32",
                                teacher="random")
    detector.fit(train, progress)
    training = [line for line in lines if line.startswith("training:")]
    assert len(training) == 2  # after the second step (20 s at 10 s a step), then the end line (not every step)
    assert re.fullmatch(r"training: 2/4 \(50%\), loss [\d.]+  [\d.]+ steps/s, about 20 s left", training[0])
    assert re.fullmatch(r"training: 4/4 in 50 s, loss [\d.]+  [\d.]+ steps/s", training[-1])


def test_run_ends_with_wall_time_and_time_per_test_image(monkeypatch):
    """The CLI (stderr not a terminal under CliRunner) writes progress lines, and the run's last line its times."""
    from impeller_bench.evaluation import evaluate
    from impeller_bench.inspection import runner

    def fake_run(method, dataset_dir, out, profile, steps, seed, device, overwrite, progress, **options):
        for _ in progress(range(3), "training", lambda: "loss 0.500  2.00 steps/s"):
            pass
        return {"predictions": "predictions/ours", "fit_seconds": 125.0, "score_seconds_per_image": 0.0123}

    monkeypatch.setattr(runner, "run_method", fake_run)
    monkeypatch.setattr(evaluate, "format_table", lambda result: "(table)")
    result = CliRunner().invoke(main, ["run", "ours", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert re.search(r"^training: 3/3 in [\d.]+ (ms|s), loss 0.500  2.00 steps/s$", result.stderr, re.M)
    assert re.fullmatch(r"wrote predictions/ours in [\d.]+ (ms|s) \(training 2 min 05 s, 12.3 ms per test image\)",
                        result.stdout.splitlines()[-1])


def test_durations_read_as_people_say_them():
    assert [format_seconds(s) for s in (0.0123, 4.24, 37.4, 125, 4020)] == \
        ["12.3 ms", "4.2 s", "37 s", "2 min 05 s", "1 h 07 min"]


# 2. --device: one line naming the devices there are, before any work.

@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.fixture
def no_work(monkeypatch):
    """Commands that must stop at their options: any real work fails the test."""
    from impeller_bench.detectors.efficientad import distill
    from impeller_bench.inspection import latency, runner

    def work(*args, **kwargs):
        raise AssertionError("the command started its work")

    for module, name in ((runner, "run_method"), (latency, "measure_latencies"), (distill, "distill_teacher")):
        monkeypatch.setattr(module, name, work)


@pytest.mark.parametrize("command", [["run", "ours"], ["latency", "ours"], ["distill-teacher", "--out", "t.pt"]])
@pytest.mark.parametrize("device, message", [
    ("cuda", "error: --device cuda: CUDA is not available here; devices: cpu"),
    ("gpu", "error: --device gpu: not a device name; devices: cpu"),
    ("mps", "error: --device mps: mps is not available here; devices: cpu"),
])
def test_an_unavailable_device_is_one_line_before_any_work(no_cuda, no_work, command, device, message, tmp_path,
                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, command + ["--device", device])
    assert result.exit_code == 2 and result.output == message + "\n"
    assert os.listdir() == []


def test_a_missing_cuda_index_names_the_ones_there_are(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ImpellerBenchError) as error:
        parse_device("cuda:1", "--device")
    assert str(error.value) == "--device cuda:1: there is no CUDA device 1 here; devices: cpu, cuda:0"
    assert parse_device("cuda") == torch.device("cuda") and parse_device("cpu") == torch.device("cpu")


def test_library_callers_get_the_same_check(no_cuda):
    with pytest.raises(ImpellerBenchError, match="^device cuda: CUDA is not available here; devices: cpu$"):
        detectors.create("padim", device="cuda")


# 3. Written files and staged folders get the mode the umask gives any new file.

@pytest.fixture
def umask():
    """Set the process umask for a test, restored after."""
    before = os.umask(0o022)
    yield os.umask
    os.umask(before)


@pytest.mark.parametrize("mask, file_mode, folder_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_outputs_follow_the_umask(umask, tmp_path, mask, file_mode, folder_mode):
    umask(mask)
    atomic_write_bytes(tmp_path / "a.json", b"{}\n")
    with staged_directory(tmp_path / "out") as stage:
        (stage / "x.txt").write_text("x")
    source = tmp_path / "source.bin"
    source.write_bytes(b"data")
    fetch(source.as_uri(), tmp_path / "fetched.bin")
    mode = lambda path: stat.S_IMODE(path.stat().st_mode)
    assert (mode(tmp_path / "a.json"), mode(tmp_path / "fetched.bin")) == (file_mode, file_mode)
    assert mode(tmp_path / "out") == folder_mode
    atomic_write_bytes(tmp_path / "a.json", b"[]\n")  # a rewrite too (leaderboard build rewrites its files)
    assert mode(tmp_path / "a.json") == file_mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "fetched.bin", "out", "source.bin"]  # no leftovers


# 4. Help names every method and option; a failed download leaves nothing.

@pytest.mark.parametrize("command", ["run", "latency"])
def test_help_lists_every_registered_method(command):
    methods = detectors.available()
    assert len(methods) == 7
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0
    assert f"Methods: {', '.join(methods)}." in " ".join(result.output.split())


def test_the_detector_settings_run_takes_are_the_ones_a_sweep_writes_as_options():
    """A sweep cell's command uses a flag for exactly these settings (the others go in its comment)."""
    from impeller_bench.inspection.runner import COMMAND_LINE_OPTIONS

    flags = {opt for param in main.commands["run"].params for opt in param.opts}
    assert {f"--{key.replace('_', '-')}" for key in COMMAND_LINE_OPTIONS} <= flags
    every = {name: "x" for name in inspect.signature(detector_options).parameters}
    assert set(detector_options(**every)) - {"cover_border"} == set(COMMAND_LINE_OPTIONS)


def test_compare_options_have_help():
    helps = {p.name: p.help for p in main.commands["compare"].params if p.param_type_name == "option"}
    assert helps["dataset_dir"].startswith("Dataset folder") and helps["bootstrap_samples"].startswith("Paired bootstrap")
    assert all(helps.values())


def test_a_failed_download_creates_nothing(tmp_path):
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as handle:
        handle.writestr("top/unrelated.txt", b"not the source")
    to = tmp_path / "new" / "sources"
    result = CliRunner().invoke(main, ["download", "--to", str(to), "--source", "casting-supervisely",
                                       "--archive", f"casting-supervisely={bad}", "--annotations", str(REPO / "annotations")])
    assert result.exit_code == 2 and result.output.startswith("error: ") and result.output.count("\n") == 1
    assert "not the expected source" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.zip"]  # neither sources/ nor new/
    existing = tmp_path / "kept"
    existing.mkdir()
    CliRunner().invoke(main, ["download", "--to", str(existing), "--source", "casting-supervisely",
                              "--archive", f"casting-supervisely={bad}", "--annotations", str(REPO / "annotations")])
    assert existing.is_dir() and list(existing.iterdir()) == []  # a folder that was there stays


STAGED_THEN_WAITS = """
import sys, time
import click
from impeller_bench.cli import _Group
from impeller_bench.common.files import staged_directory

@click.group(cls=_Group)
def group():
    pass

@group.command()
@click.argument("out")
def work(out):
    with staged_directory(out) as stage:
        (stage / "half.txt").write_text("half")
        print("staged", flush=True)
        time.sleep(60)

group()
"""


def test_a_killed_command_leaves_no_staged_output(tmp_path):
    import signal
    import subprocess
    import sys

    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-c", STAGED_THEN_WAITS, "work", str(out)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "staged"
    assert any(p.name.endswith(".partial") for p in tmp_path.iterdir())
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []
