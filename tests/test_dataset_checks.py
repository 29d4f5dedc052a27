"""One set of dataset checks: what ``validate`` calls an error, evaluate, run and the leaderboard refuse too,
in one line that gives the cause first, and ``run`` refuses before it trains."""
import json
import shutil
import time

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import SUPERVISELY, needs_shared_data

from impeller_bench import detectors
from impeller_bench.cli import main
from impeller_bench.common.errors import ImpellerBenchError
from impeller_bench.common.imageio import encode_png, read_image
from impeller_bench.data.dataset import load_dataset
from impeller_bench.data.synth import write_synthetic
from impeller_bench.data.validate import require_valid, validate
from impeller_bench.evaluation.evaluate import evaluate
from impeller_bench.evaluation.predictions import load_predictions, write_predictions
from impeller_bench.leaderboard import checks, submission


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny valid dataset: 4 train good, 3 test good, 3 test defect, 32 x 32."""
    out = tmp_path_factory.mktemp("checks") / "synthetic"
    write_synthetic(out, train_good=4, test_good=3, test_defect=3, size=32, seed=1)
    return out


@pytest.fixture
def dataset(base, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(base, root)
    return root


@pytest.fixture
def no_training(monkeypatch):
    """Every detector's fit fails the test: a refusal must come before any training."""

    def fit(self, images, progress=None):
        raise AssertionError("a detector was trained")

    for name in detectors.available():
        monkeypatch.setattr(detectors.detector_class(name), "fit", fit)


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def error_line(result) -> str:
    """The command's one error line (progress lines aside); exit code 2."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


def noise_predictions(dataset_dir, out):
    """A predictions folder for every test image of the dataset, with its manifest's sha256 in meta.json."""
    dataset = load_dataset(dataset_dir)
    rng = np.random.default_rng(0)
    ids = [s.id for s in dataset.test]
    meta = {"method": "noise", "dataset": str(dataset_dir), "manifest_sha256": dataset.manifest_sha256}
    return write_predictions(out, {i: float(rng.random()) for i in ids},
                             {i: rng.random((16, 16)).astype(np.float32) for i in ids}, meta)


def mismatched_masks(root):
    """The reported case, in the plain MVTec layout: a 40 x 40 defect image with a 32 x 32 mask, and a
    32 x 32 one with a 32 x 33 mask."""
    (root / "manifest.json").unlink()
    first, second = sorted((root / "test" / "defect").glob("*.png"))[:2]
    image = read_image(first)
    first.write_bytes(encode_png(np.pad(image, [(0, 8), (0, 8)] + [(0, 0)] * (image.ndim - 2))))  # 40 x 40
    tall = np.zeros((33, 32), bool)
    tall[4:20, 4:20] = True
    (root / "ground_truth" / "defect" / f"{second.stem}_mask.png").write_bytes(encode_png(tall))
    return first.stem, second.stem


MISMATCH_LINE = (
    "error: dataset {root} fails validation: 2 errors: "
    "ground_truth/defect/{a}_mask.png: mask-size-mismatch (mask is 32x32, its image test/defect/{a}.png is 40x40); "
    "ground_truth/defect/{b}_mask.png: mask-size-mismatch (mask is 32x33, its image test/defect/{b}.png is 32x32)"
)


def test_mismatched_masks_fail_validate_evaluate_and_run_alike(dataset, tmp_path, no_training):
    a, b = mismatched_masks(dataset)
    report = validate(dataset, audit=False)
    assert [f.code for f in report.errors] == ["mask-size-mismatch"] * 2
    assert cli("validate", dataset, "--no-audit").exit_code == 1
    predictions = noise_predictions(dataset, tmp_path / "pred")
    expected = MISMATCH_LINE.format(root=dataset, a=a, b=b)
    assert error_line(cli("evaluate", predictions)) == expected
    assert not (predictions / "metrics.json").exists()
    assert error_line(cli("run", "padim", "--dataset", dataset, "--out", tmp_path / "run")) == expected
    assert not (tmp_path / "run").exists()
    with pytest.raises(ImpellerBenchError) as refused:  # the library itself, not only the CLI
        evaluate(load_dataset(dataset), load_predictions(predictions))
    assert f"error: {refused.value}" == expected


def test_truncated_test_image_stops_run_before_training(dataset, tmp_path, no_training):
    victim = sorted((dataset / "test" / "good").glob("*.png"))[0]
    victim.write_bytes(victim.read_bytes()[:60])
    started = time.perf_counter()
    line = error_line(cli("run", "ours", "--dataset", dataset, "--out", tmp_path / "run", "--device", "cpu"))
    assert time.perf_counter() - started < 3  # a few files read, no model built
    assert line.startswith(f"error: dataset {dataset} fails validation: 2 errors: test/good/{victim.name}: "
                           "checksum-mismatch (")
    assert f"test/good/{victim.name}: unreadable-image (unreadable or truncated image" in line
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".run.*"))


def test_existing_predictions_folder_stops_run_before_training(dataset, tmp_path, no_training):
    out = tmp_path / "predictions" / "ours"
    out.mkdir(parents=True)
    (out / "scores.csv").write_text("kept\n")
    line = error_line(cli("run", "ours", "--dataset", dataset, "--out", out))
    assert line == f"error: {out}: output folder exists and is not empty (use --overwrite to replace it)"
    assert (out / "scores.csv").read_text() == "kept\n"


def test_unknown_method_is_refused_before_the_synthetic_default_is_announced_or_made(tmp_path, monkeypatch):
    monkeypatch.setenv("IMPELLER_BENCH_CACHE", str(tmp_path / "cache"))
    result = cli("run", "nosuchmethod")
    assert error_line(result).startswith("error: unknown detector 'nosuchmethod'; available: ")
    assert "synthetic" not in result.output and not (tmp_path / "cache").exists()


def test_evaluate_on_the_wrong_dataset_says_so_first_and_lists_no_ids(base, tmp_path):
    other = tmp_path / "other"
    write_synthetic(other, train_good=4, test_good=5, test_defect=5, size=32, seed=2)
    predictions = noise_predictions(base, tmp_path / "pred")
    line = error_line(cli("evaluate", predictions, "--dataset", other))
    made_on, other_sha = load_dataset(base).manifest_sha256, load_dataset(other).manifest_sha256
    assert line == (f"error: predictions {predictions} were made on another dataset: meta.json gives manifest sha256 "
                    f"{made_on[:12]}..., this dataset's is {other_sha[:12]}...")
    assert "test/" not in line


def test_a_corrupt_mask_is_refused_by_validate_evaluate_run_and_the_leaderboard_alike(dataset, tmp_path,
                                                                                     no_training):
    name = load_dataset(dataset).name
    data_root, annotations = tmp_path / "data", tmp_path / "annotations"
    annotations.mkdir()
    shutil.copy(dataset / "manifest.json", annotations / f"{name}.json")
    shutil.copytree(dataset, data_root / name)
    published = load_dataset(data_root / name)
    entry = tmp_path / "board" / "noise"
    submission.package_submission(load_predictions(noise_predictions(data_root / name, tmp_path / "run0")), entry,
                                  published, authors=["tests"], code="tests", version="test", hardware="CI",
                                  command="impeller-bench run noise", bootstrap_samples=5)
    assert checks.validate_submission(entry, data_root, annotations).ok  # sound before the damage
    predictions = noise_predictions(dataset, tmp_path / "pred")

    for root in (dataset, data_root / name):
        mask = sorted((root / "ground_truth" / "defect").glob("*_mask.png"))[0]
        mask.write_bytes(mask.read_bytes()[:40])
    rel = mask.relative_to(data_root / name).as_posix()
    assert {(f.code, f.path) for f in validate(dataset, audit=False).errors} == {("checksum-mismatch", rel),
                                                                                 ("unreadable-mask", rel)}
    assert cli("validate", dataset, "--no-audit").exit_code == 1
    cause = f"fails validation: 2 errors: {rel}: checksum-mismatch ("
    assert error_line(cli("evaluate", predictions)).startswith(f"error: dataset {dataset} {cause}")
    assert error_line(cli("run", "padim", "--dataset", dataset, "--out", tmp_path / "run")).startswith(
        f"error: dataset {dataset} {cause}")
    check = checks.validate_submission(entry, data_root, annotations)
    assert len(check.problems) == 1 and check.problems[0].startswith(f"dataset {data_root / name} {cause}")
    with pytest.raises(ImpellerBenchError, match="unreadable-mask"):
        require_valid(dataset)


def test_a_long_list_of_errors_names_three_and_counts_the_rest(dataset):
    for image in sorted((dataset / "train" / "good").glob("*.png")):
        image.write_bytes(b"not a png")
    with pytest.raises(ImpellerBenchError) as refused:
        require_valid(load_dataset(dataset))
    line = str(refused.value)
    assert line.startswith(f"dataset {dataset} fails validation: 8 errors: train/good/")
    assert line.count("; ") == 3 and line.endswith(f"; and 5 more (impeller-bench validate {dataset} lists them all)")


# --- a source folder: the quirks build-split handles are warnings, damaged files errors -------------------

HANDLED_QUIRKS = {
    *{("name-contradicts-objects", f"cast_ok_0_{n}.jpeg") for n in (2351, 2720, 3138, 5548, 6418)},
    *{("tag-contradicts-objects", f"cast_ok_0_{n}.jpeg") for n in (2351, 2720, 3138, 5548, 6418)},
    ("name-contradicts-objects", "cast_def_0_2917.jpeg"), ("name-contradicts-objects", "cast_def_0_9995.jpeg"),
    ("tag-contradicts-objects", "cast_def_0_9995.jpeg"),
}


def source_report(folder):
    result = cli("validate", folder, "--json")
    return result.exit_code, json.loads(result.output[result.output.index("{"):])


@needs_shared_data
def test_the_annotated_sources_documented_quirks_are_handled_by_build_split(shared_data):
    exit_code, report = source_report(SUPERVISELY)
    assert exit_code == 0 and report["ok"]
    handled = {(f["code"], f["path"].split("/")[-1]) for f in report["findings"] if "handled by build-split" in f["message"]}
    assert handled == HANDLED_QUIRKS
    assert {("missing-tag", "cast_def_0_7275.jpeg"), ("tag-contradicts-name", "cast_def_0_2917.jpeg")} <= {
        (f["code"], f["path"].split("/")[-1]) for f in report["findings"]}


@needs_shared_data
def test_a_damaged_source_file_stays_an_error(shared_data, tmp_path):
    copy = tmp_path / "casting-supervisely"
    shutil.copytree(SUPERVISELY, copy)
    victim = sorted((copy / "img").glob("cast_ok_*"))[0]
    victim.chmod(0o644)
    victim.write_bytes(victim.read_bytes()[:200])
    exit_code, report = source_report(copy)
    assert exit_code == 1
    assert [(f["code"], f["path"]) for f in report["findings"] if f["severity"] == "error"] == [
        ("unreadable-image", f"casting-supervisely/img/{victim.name}")]
