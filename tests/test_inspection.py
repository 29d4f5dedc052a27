"""Train once, judge new parts: model files, calibrated thresholds, predict on files and folders."""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from impeller_bench import detectors, load_model
from impeller_bench.cli import main
from impeller_bench.common.errors import ImpellerBenchError
from impeller_bench.data.dataset import load_dataset
from impeller_bench.evaluation.predictions import load_predictions
from impeller_bench.inspection import calibration as calibrating
from impeller_bench.inspection import model as inspection
from impeller_bench.inspection import predict
from impeller_bench.inspection.runner import run_method, train_model

pytestmark = pytest.mark.usefixtures("fixed_torch_threads")

# Small and fast: PaDiM at 64 x 64 fits the 12 synthetic training images in about a second.
FAST = {"image_size": 64}


# --------------------------------------------------------------------------- thresholds


@pytest.mark.parametrize("seed", range(20))
def test_threshold_for_rate_is_the_smallest_value_with_at_most_the_rate_above(seed):
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 6, rng.integers(1, 40)).astype(float)  # many ties
    rate = float(rng.choice([0.0, 0.01, 0.1, 0.25, 0.5, 0.9]))
    threshold = calibrating.threshold_for_rate(values, rate)
    allowed = math.floor(rate * len(values))
    admissible = [v for v in np.unique(values) if (values > v).sum() <= allowed]
    assert threshold == min(admissible)


def test_threshold_for_rate_refuses_nan_and_bad_rates():
    with pytest.raises(ImpellerBenchError, match="finite"):
        calibrating.threshold_for_rate([1.0, float("nan")], 0.01)
    with pytest.raises(ImpellerBenchError, match="not in"):
        calibrating.threshold_for_rate([1.0, 2.0], 1.0)


def test_decision_report_counts_by_definition():
    calibration = calibrating.Calibration(0.5, 0.5, 0.0, 0.01, 0.001, 4, "test")
    labels = np.array([0, 0, 0, 0, 1, 1, 1], bool)
    scores = np.array([0.1, 0.6, 0.5, 0.2, 0.7, 0.5, 0.9])
    masks = [np.zeros((2, 2), bool)] * 4 + [np.array([[1, 0], [0, 0]], bool)] * 3
    maps = [np.full((2, 2), 0.6)] + [np.zeros((2, 2))] * 3 + [np.array([[0.9, 0.9], [0.0, 0.0]])] * 3
    report = calibrating.decision_report(calibration, labels, scores, masks, maps)
    assert report["calibrated"]["false_alarm_rate"] == 1 / 4  # 0.6 only: 0.5 is not above 0.5
    assert report["calibrated"]["recall"] == 2 / 3
    assert report["calibrated"]["precision"] == 2 / 3
    assert report["pixel_calibrated"]["false_alarm_rate"] == (4 + 3) / (16 + 9)
    assert report["pixel_calibrated"]["recall"] == 1.0


# --------------------------------------------------------------------------- train, run --model, predict


@pytest.fixture(scope="module")
def trained(synthetic_dataset, tmp_path_factory):
    """``run padim --model`` and ``train padim`` on the synthetic dataset (same seed, same configuration)."""
    folder = tmp_path_factory.mktemp("inspection")
    run = run_method("padim", synthetic_dataset, folder / "predictions", model=folder / "run.model", **FAST)
    report = train_model("padim", synthetic_dataset, folder / "train.model", **FAST)
    return folder, run, report


def test_train_then_predict_gives_the_scores_and_maps_of_run(trained, synthetic_dataset):
    folder, _, _ = trained
    dataset = load_dataset(synthetic_dataset)
    predictions = load_predictions(folder / "predictions")
    for model_file in ("run.model", "train.model"):
        judged = load_model(folder / model_file).predict([s.image_path for s in dataset.test])
        for sample, judgement in zip(dataset.test, judged):
            assert judgement.score == pytest.approx(predictions.scores[sample.id], rel=1e-5, abs=1e-6)
            np.testing.assert_allclose(judgement.map, predictions.load_map(sample.id), rtol=1e-5, atol=1e-5)
            assert judgement.path == str(sample.image_path)


def test_model_file_holds_thresholds_and_provenance(trained, synthetic_dataset):
    folder, run, report = trained
    model = load_model(folder / "train.model")
    dataset = load_dataset(synthetic_dataset)
    assert model.method == "padim"
    assert model.info["manifest_sha256"] == dataset.manifest_sha256
    assert model.info["input_size"] == 64
    assert model.info["description"]["backbone"]
    assert model.calibration.false_alarm_rate == calibrating.DEFAULT_FALSE_ALARM_RATE
    # 12 training images, each its own photo group: a seeded 20% (2) held out, scored by a copy fitted on 10.
    assert model.calibration.images == 2 and "photo group(s) held out" in model.calibration.source
    assert "other 10" in model.calibration.source
    assert report["calibration"] == run["model"]["calibration"]
    test = report["test_report"]
    assert test["test_good"] == 6 and test["test_defect"] == 8
    assert 0 <= test["calibrated"]["false_alarm_rate"] <= 1 and "pixel_calibrated" in test
    # Decisions follow the thresholds: above the image threshold is a defect, the mask is the pixels above.
    judged = model.predict([s.load_image() for s in dataset.test], image_threshold=-1e30, pixel_threshold=1e30)
    assert all(j.decision == "defect" and j.defect_area == 0 and not j.mask.any() for j in judged)


def test_detector_validation_images_calibrate_efficientad(draw_impellers):
    train, _, _ = draw_impellers(0, 64, 10, 1, ["holes"])
    detector = detectors.create("ours", device="cpu", image_size=64, steps=2, precision="float32",
                                validation_fraction=0.3)
    detector.fit(train)
    calibration = calibrating.calibrate(detector, train)
    assert calibration.images == len(detector.validation_indices) == 3
    assert "validation images" in calibration.source
    scores, _ = detector.score_images([train[i] for i in detector.validation_indices])
    assert calibration.image_threshold == pytest.approx(scores.max())  # 3 images < 1 / 1%: their maximum


def test_photo_groups_are_held_out_whole(draw_impellers):
    train, _, _ = draw_impellers(1, 64, 12, 1, ["holes"])
    detector = detectors.create("padim", device="cpu", image_size=64).fit(train)
    groups = [k // 3 for k in range(12)]  # four photos, three variants each
    calibration = calibrating.calibrate(detector, train, groups=groups, seed=4)
    # About 20% of 12 images: one whole group of 3 (never a part of one), scored by a copy fitted on 9.
    assert calibration.images == 3 and "from 1 photo group(s)" in calibration.source and "other 9" in calibration.source
    assert calibrating.calibrate(detector, train, groups=groups, seed=4) == calibration  # seeded


def test_existing_model_file_is_refused_before_training(synthetic_dataset, tmp_path, monkeypatch):
    existing = tmp_path / "m.model"
    existing.write_bytes(b"keep")
    monkeypatch.setattr(detectors.base.Detector, "fit", lambda *a, **k: pytest.fail("trained before checking"))
    for call in (lambda: train_model("padim", synthetic_dataset, existing, **FAST),
                 lambda: run_method("padim", synthetic_dataset, tmp_path / "p", model=existing, **FAST)):
        with pytest.raises(ImpellerBenchError, match="model file exists"):
            call()
    assert existing.read_bytes() == b"keep" and not (tmp_path / "p").exists()


# --------------------------------------------------------------------------- refused model files


def _rewrite(source: Path, target: Path, change) -> None:
    payload = torch.load(source, weights_only=True)
    header = json.loads(bytes(payload["header"].tolist()).decode())
    change(header, payload)
    payload["header"] = torch.tensor(list(json.dumps(header).encode()), dtype=torch.uint8)
    torch.save(payload, target)


def test_tampered_and_other_version_model_files_are_refused_in_one_line(trained, tmp_path):
    from impeller_bench.detectors.base import checkpoint_digest

    source = trained[0] / "train.model"

    def edit_weights(header, payload):
        key = next(k for k in payload if k.startswith("state.") and payload[k].is_floating_point())
        payload[key] = payload[key] + 1e-3

    def other_version(header, payload):  # digest recomputed: only the version differs
        header["package_version"] = "0.0.1"
        state = {k[len("state."):]: v for k, v in payload.items() if k.startswith("state.")}
        extras = {k[len("extra."):]: v for k, v in payload.items() if k.startswith("extra.")}
        header["sha256"] = checkpoint_digest(header, state, extras)

    def edit_threshold(header, payload):
        header["model"]["calibration"]["image_threshold"] = 0.0

    cases = {"weights": (edit_weights, "changed after it was saved"),
             "version": (other_version, "written by impeller-bench 0.0.1"),
             "threshold": (edit_threshold, "changed after it was saved")}
    for name, (change, message) in cases.items():
        target = tmp_path / f"{name}.model"
        _rewrite(source, target, change)
        with pytest.raises(ImpellerBenchError, match=message) as caught:
            load_model(target)
        assert "\n" not in str(caught.value) and str(target) in str(caught.value)
        result = CliRunner().invoke(main, ["predict", str(target), str(source), "--out", str(tmp_path / name)])
        assert result.exit_code == 2 and message in result.output and not (tmp_path / name).exists()


def _restate(change):
    """A rewrite that changes the tensors, then recomputes the digest: an intact file with the wrong contents."""
    from impeller_bench.detectors.base import checkpoint_digest

    def rewrite(header, payload):
        state = {k[len("state."):]: v for k, v in payload.items() if k.startswith("state.")}
        change(header, state)
        for key in [k for k in payload if k.startswith("state.")]:
            del payload[key]
        payload.update({f"state.{k}": v for k, v in state.items()})
        extras = {k[len("extra."):]: v for k, v in payload.items() if k.startswith("extra.")}
        header["sha256"] = checkpoint_digest(header, state, extras)
    return rewrite


class _NoStateUntilFitted(detectors.Detector):
    """A user's detector whose state exists only after a fit (its unfitted ``state_dict`` raises)."""

    config_class = dataclasses.make_dataclass("NoStateConfig", [("seed", int, 0)])

    def state_dict(self):
        return {"mean": torch.from_numpy(self.mean)}


def test_a_model_file_with_tensors_its_detector_cannot_use_is_refused_on_load(trained, tmp_path, synthetic_dataset,
                                                                             monkeypatch):
    from impeller_bench.detectors import base

    # Naming the method whose tensors a file holds asks every registered detector: one that cannot say is passed by.
    monkeypatch.setitem(base._REGISTRY, "no-state-until-fitted", _NoStateUntilFitted)
    source = trained[0] / "train.model"
    patchcore = tmp_path / "patchcore.model"
    train_model("patchcore", synthetic_dataset, patchcore, **FAST)

    def padim_under_patchcore(header, state):
        state.clear()
        state.update({k[len("state."):]: v for k, v in torch.load(source, weights_only=True).items()
                      if k.startswith("state.")})

    cases = {  # the reported case (a shape), then other members of its kind: a dtype, another method's tensors
        "shape": (source, lambda h, s: s.update(mean=s["mean"][:, :-1]), "tensor mean: expected ("),
        "dtype": (source, lambda h, s: s.update(precision=s["precision"].double()), "tensor precision: expected"),
        "rows": (source, lambda h, s: s.update(precision=s["precision"][:-1]), "tensor precision: expected ("),
        "method": (patchcore, padim_under_patchcore, "not a PatchCore model (it holds PaDiM's tensors)"),
    }
    for name, (original, change, message) in cases.items():
        target = tmp_path / f"{name}.model"
        _rewrite(original, target, _restate(change))
        with pytest.raises(ImpellerBenchError) as caught:
            load_model(target)
        assert message in str(caught.value) and str(target) in str(caught.value) and "\n" not in str(caught.value)
        result = CliRunner().invoke(main, ["export", str(target), "--out", str(tmp_path / f"{name}.onnx")])
        assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output
    load_model(source)  # the untouched file still loads


def test_a_plain_detector_checkpoint_is_not_a_model_file(trained, tmp_path):
    detector = load_model(trained[0] / "train.model").detector
    detector.save(tmp_path / "plain.pt")
    assert detectors.load(tmp_path / "plain.pt").name == "padim"
    with pytest.raises(ImpellerBenchError, match="not a model file"):
        load_model(tmp_path / "plain.pt")
    (tmp_path / "junk.model").write_bytes(b"not a checkpoint")
    with pytest.raises(ImpellerBenchError, match="not a loadable tensor checkpoint"):
        load_model(tmp_path / "junk.model")


# --------------------------------------------------------------------------- predict on folders


def _png(array: np.ndarray, path: Path, **params) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **params)


@pytest.fixture()
def parts_folder(tmp_path, synthetic_dataset):
    """A folder as the line makes it: subfolders, a 16-bit TIFF, a JPEG of another size, a corrupt file, a
    text file (not an image: ignored)."""
    dataset = load_dataset(synthetic_dataset)
    good, defect = dataset.test[0].load_image(), dataset.test[-1].load_image()
    folder = tmp_path / "line"
    _png(good, folder / "a" / "good.png")
    _png(defect, folder / "a" / "b" / "defect.bmp")
    deep = (defect.astype(np.uint16) * 257)
    Image.fromarray(deep).save(folder / "deep.tif")  # mode I;16
    _png(np.asarray(Image.fromarray(good).resize((96, 80))), folder / "wide.jpg", quality=95)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (folder / "notes.txt").write_text("not an image")
    return folder, good, defect


def test_predict_folder_writes_results_maps_overlays_masks_and_skips_unreadable(trained, parts_folder, tmp_path):
    folder, good, defect = parts_folder
    model_file = trained[0] / "train.model"
    out = tmp_path / "judged"
    result = CliRunner().invoke(main, ["predict", str(model_file), str(folder), "--out", str(out), "--batch-size", "2"])
    assert result.exit_code == 1, result.output  # one file skipped
    assert "broken.png" in result.output and "judged 4 image(s)" in result.output
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert sorted(Path(r["path"]).name for r in rows) == ["deep.tif", "defect.bmp", "good.png", "wide.jpg"]
    skipped = list(csv.DictReader((out / "skipped.csv").open()))
    assert [Path(r["path"]).name for r in skipped] == ["broken.png"] and skipped[0]["problem"]
    model = load_model(model_file)
    by_name = {Path(r["path"]).name: r for r in rows}
    for name, relative, shape in (("good.png", "a/good", (128, 128)), ("defect.bmp", "a/b/defect", (128, 128)),
                                  ("deep.tif", "deep", (128, 128)), ("wide.jpg", "wide", (80, 96))):
        row = by_name[name]
        assert row["name"] == f"line/{relative}"
        anomaly_map = np.load(out / "maps" / "line" / f"{relative}.npy")
        mask = np.asarray(Image.open(out / "masks" / "line" / f"{relative}.png"))
        overlay = np.asarray(Image.open(out / "overlays" / "line" / f"{relative}.png"))
        assert anomaly_map.dtype == np.float32 and anomaly_map.shape == shape == mask.shape
        assert overlay.shape == (shape[0], 2 * shape[1], 3)
        assert set(np.unique(mask)) <= {0, 255}
        assert int(row["defect_area_px"]) == int((mask == 255).sum()) == int((anomaly_map > model.calibration.pixel_threshold).sum())
        assert row["decision"] == ("defect" if float(row["score"]) > model.calibration.image_threshold else "ok")
    # The 16-bit TIFF is read as a viewer shows it (>> 8): the same judgement as the 8-bit image.
    assert float(by_name["deep.tif"]["score"]) == pytest.approx(float(by_name["defect.bmp"]["score"]), rel=1e-5)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 4 and summary["skipped"] == 1 and summary["images_per_second"] > 0


def test_predict_a_clean_folder_exits_0_and_refuses_missing_inputs(trained, parts_folder, tmp_path):
    folder, _, _ = parts_folder
    (folder / "broken.png").unlink()
    model_file = str(trained[0] / "train.model")
    out = tmp_path / "ok"
    assert CliRunner().invoke(main, ["predict", model_file, str(folder), "--out", str(out)]).exit_code == 0
    again = CliRunner().invoke(main, ["predict", model_file, str(folder), "--out", str(out)])
    assert again.exit_code == 2 and "exists" in again.output
    missing = CliRunner().invoke(main, ["predict", model_file, str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")])
    assert missing.exit_code == 2 and "no such file or folder" in missing.output and not (tmp_path / "x").exists()


def test_input_files_walks_folders_and_keeps_output_names_apart(tmp_path):
    for name in ("x/p.png", "x/p.jpg", "x/sub/q.tif", "x/readme.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    files = predict.input_files([tmp_path / "x", tmp_path / "x", tmp_path / "x" / "p.png"])
    names = [str(name) for _, name in files]
    assert len(set(names)) == len(names) == 3  # each file once, however often it is reached
    assert sorted(Path(p).name for p, _ in files) == ["p.jpg", "p.png", "q.tif"]


def test_predict_accepts_arrays_and_paths_and_refuses_what_it_would_misread(trained, synthetic_dataset, tmp_path):
    model = load_model(trained[0] / "train.model")
    sample = load_dataset(synthetic_dataset).test[0]
    from_array, from_path = model.predict([sample.load_image(), sample.image_path])
    assert from_array.score == from_path.score and from_array.path is None
    # One path, not its characters; scored alone rather than in a batch of two, which may round differently
    # in the last float32 bits (the CPU's convolution picks its blocking by batch size).
    (alone,) = model.predict(str(sample.image_path))
    assert alone.path == str(sample.image_path) and alone.score == pytest.approx(from_path.score, rel=1e-5)
    image = sample.load_image()
    for wrong in (image / 255.0, image.astype(np.uint16) * 257, np.dstack([image] * 4)):
        with pytest.raises(ImpellerBenchError, match="expected uint8"):
            model.predict([image, wrong])
    with pytest.raises(ImpellerBenchError, match="is a folder"):
        model.predict([tmp_path])
    with pytest.raises(ImpellerBenchError, match="not a finite number"):
        model.predict([image], image_threshold=float("nan"))


def test_predict_with_no_readable_file_or_a_nan_threshold_writes_nothing(trained, tmp_path):
    model_file = str(trained[0] / "train.model")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "empty.png").write_bytes(b"")
    (tmp_path / "in" / "text.jpg").write_text("not a photo")
    result = CliRunner().invoke(main, ["predict", model_file, str(tmp_path / "in"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "none of the 2 image file(s) could be read" in result.output
    assert "BytesIO" not in result.output and not (tmp_path / "o").exists()
    result = CliRunner().invoke(main, ["predict", model_file, str(tmp_path / "in"), "--out", str(tmp_path / "o"),
                                       "--image-threshold", "nan"])
    assert result.exit_code == 2 and "not a finite number" in result.output and not (tmp_path / "o").exists()


def test_export_never_replaces_a_file_with_an_unchecked_graph(trained, tmp_path, monkeypatch):
    from impeller_bench.inspection import export

    model_file, out = str(trained[0] / "train.model"), tmp_path / "m.onnx"
    out.write_bytes(b"previous")
    refused = CliRunner().invoke(main, ["export", model_file, "--out", str(out)])
    assert refused.exit_code == 2 and "exists" in refused.output and out.read_bytes() == b"previous"

    def mismatch(*args, **kwargs):
        raise ImpellerBenchError("the ONNX graph's scores or maps differ from torch's")

    monkeypatch.setattr(export, "check_export", mismatch)
    failed = CliRunner().invoke(main, ["export", model_file, "--out", str(out), "--overwrite"])
    assert failed.exit_code == 2 and out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no half-checked graph left beside it


def test_overlay_scale_is_fixed_by_the_calibration():
    calibration = calibrating.Calibration(1.0, 2.0, 0.0, 0.01, 0.001, 3, "test")
    image = np.full((8, 8), 100, np.uint8)
    anomaly_map = np.zeros((8, 8))
    anomaly_map[:4] = 4.0  # twice the threshold's distance: fully hot
    png = predict.overlay_png(image, anomaly_map, anomaly_map > 2.0, calibration)
    pixels = np.asarray(Image.open(io.BytesIO(png)))
    assert pixels.shape == (8, 16, 3)
    assert (pixels[:, :8] == 100).all()  # the image itself on the left
    assert (pixels[6:, 8:] == 100).all()  # normal pixels (at the reference) are not tinted
    assert not (pixels[1, 9:15] == 100).all()  # hot pixels are


def test_train_export_and_latency_commands(synthetic_dataset, tmp_path):
    import onnx

    model_file = tmp_path / "cli.model"
    trained = CliRunner().invoke(main, ["train", "padim", "--dataset", str(synthetic_dataset), "--model",
                                        str(model_file), "--false-alarm-rate", "0.05"])
    assert trained.exit_code == 0, trained.output
    assert "image threshold" in trained.output and "on the test set (6 good, 8 defect)" in trained.output
    assert load_model(model_file).calibration.false_alarm_rate == 0.05
    again = CliRunner().invoke(main, ["train", "padim", "--dataset", str(synthetic_dataset), "--model", str(model_file)])
    assert again.exit_code == 2 and "model file exists" in again.output
    exported = CliRunner().invoke(main, ["export", str(model_file), "--out", str(tmp_path / "m.onnx"),
                                         "--check-images", str(synthetic_dataset / "test")])
    assert exported.exit_code == 0, exported.output
    assert "ONNX Runtime matches torch on 14 image(s)" in exported.output
    kept = load_model(model_file).check_images  # held-out normals at the input size, not noise, by default
    assert kept and all(image.shape == (256, 256, 3) and image.dtype == np.uint8 for image in kept)
    by_default = CliRunner().invoke(main, ["export", str(model_file), "--out", str(tmp_path / "d.onnx")])
    assert by_default.exit_code == 0 and f"matches torch on {len(kept)} image(s)" in by_default.output, by_default.output
    assert "noise" not in by_default.output
    metadata = {p.key: p.value for p in onnx.load(tmp_path / "m.onnx").metadata_props}
    c = load_model(model_file).calibration
    assert float(metadata["image_threshold"]) == (c.image_threshold if c.graph_image_threshold is None
                                                  else c.graph_image_threshold)
    timed = CliRunner().invoke(main, ["latency", "ours", "--onnx", "--profile", "quick", "--device", "cpu",
                                      "--runs", "2", "--warmup", "0", "--plot", str(tmp_path / "l.png")])
    assert timed.exit_code == 0, timed.output
    runtimes = [entry["runtime"] for entry in json.loads(timed.stdout)]
    assert runtimes == ["torch", "onnxruntime"] and (tmp_path / "l.png").is_file()


def test_efficientad_validation_holds_out_whole_photo_groups():
    from impeller_bench.detectors.efficientad.training import validation_split

    order = [5, 2, 7, 0, 1, 3, 4, 6]
    assert validation_split(order, 3) == [5, 2, 7]
    assert validation_split(order, 3, list(range(8))) == [5, 2, 7]  # one image per photo: as without groups
    groups = [0, 0, 1, 1, 1, 2, 2, 3]
    assert validation_split(order, 3, groups) == [5, 6, 2, 3, 4]  # image 5's photo (5, 6), then image 2's
    assert validation_split([0, 1, 2], 1, [0, 0, 0]) == [0]  # one photo only: nothing else to hold out


# --------------------------------------------------------------------------- predict on a production folder


def test_files_that_cannot_be_read_are_skipped_with_their_reason(trained, parts_folder, tmp_path, monkeypatch):
    folder, _, _ = parts_folder
    (folder / "dangling.png").symlink_to(folder / "nowhere.png")  # a link to nothing
    (folder / "loop.png").symlink_to(folder / "loop.png")  # a link to itself
    locked = folder / "a" / "locked.png"
    locked.write_bytes((folder / "a" / "good.png").read_bytes())
    read_bytes = Path.read_bytes

    def unreadable(path):  # (tests may run as root, whom chmod does not stop)
        if path.name == "locked.png":
            raise PermissionError(13, "Permission denied", str(path))
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", unreadable)
    listed = predict.input_files
    monkeypatch.setattr(predict, "input_files", lambda inputs: listed(inputs) + [(folder / "gone.png", Path("gone"))])
    model = load_model(trained[0] / "train.model")
    summary = predict.predict_files(model, [folder], tmp_path / "out", batch_size=2)
    problems = {Path(s["path"]).name: s["problem"] for s in summary["skipped_files"]}
    assert problems["dangling.png"] == "a link to a file that does not exist"
    assert problems["locked.png"] == "permission denied"
    assert problems["gone.png"] == "no such file (removed?)"
    assert problems["loop.png"].startswith("cannot be read")
    assert summary["images"] == 4 and (tmp_path / "out" / "skipped.csv").read_text().count("\n") == 1 + 5


def test_an_output_folder_that_cannot_be_made_is_one_line_before_any_image_is_judged(trained, parts_folder,
                                                                                     tmp_path, monkeypatch):
    folder, _, _ = parts_folder
    (tmp_path / "a-file").write_text("x")
    judged = []
    monkeypatch.setattr(inspection.InspectionModel, "predict", lambda self, *a: judged.append(1))
    for out in (tmp_path / "a-file" / "out", Path("/proc/impeller-bench-test/out")):  # under a file; where none may
        result = CliRunner().invoke(main, ["predict", str(trained[0] / "train.model"), str(folder), "--out", str(out)])
        assert result.exit_code == 2 and result.output.count("\n") == 1 and str(out) in result.output, result.output
    assert not judged


def test_every_name_the_file_system_allows_reaches_the_outputs(trained, parts_folder, tmp_path):
    folder, _, _ = parts_folder
    source = (folder / "a" / "good.png").read_bytes()
    names = [b"caf\xe9-latin1.png", b"line\nbreak.png", "über, \"quoted\".png".encode()]
    for name in names:
        with open(os.path.join(os.fsencode(folder), name), "wb") as f:
            f.write(source)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["predict", str(trained[0] / "train.model"), str(folder), "--out", str(out)])
    assert result.exit_code == 1, result.output  # broken.png is skipped; every other file is judged
    rows = list(csv.DictReader((out / "results.csv").open(encoding="utf-8")))
    shown = {Path(r["path"]).name for r in rows}
    assert {"caf\\xe9-latin1.png", "line\\x0abreak.png", "über, \"quoted\".png"} <= shown
    assert json.loads((out / "summary.json").read_text())["images"] == len(rows) == 4 + len(names)
    for row in rows:  # each row names outputs that exist (their file names as the file system holds them)
        assert row["decision"] in ("ok", "defect")
    assert len(list((out / "maps").rglob("*.npy"))) == len(rows)


def test_a_failure_at_the_end_keeps_what_was_judged(trained, parts_folder, tmp_path, monkeypatch):
    folder, _, _ = parts_folder
    out = tmp_path / "out"
    write = predict.atomic_write_bytes

    def full_disk(path, data):
        if Path(path).name == "summary.json":
            raise OSError(28, "No space left on device")
        return write(path, data)

    monkeypatch.setattr(predict, "atomic_write_bytes", full_disk)
    with pytest.raises(OSError) as caught:
        predict.predict_files(load_model(trained[0] / "train.model"), [folder], out, batch_size=2)
    (kept,) = tmp_path.glob(".out.*.partial")
    assert str(kept) in "\n".join(caught.value.__notes__) and not out.exists()
    assert len(list(csv.DictReader((kept / "results.csv").open()))) == 4  # every readable image, judged
    monkeypatch.setattr(predict, "atomic_write_bytes", write)
    predict.predict_files(load_model(trained[0] / "train.model"), [folder], out)  # the next run into out
    assert out.is_dir() and not list(tmp_path.glob(".out.*"))  # the dead run's folder is gone, no lock left


def test_two_writers_of_one_output_the_second_refused_naming_the_first(trained, parts_folder, tmp_path):
    from impeller_bench.common.files import output_lock, staged_directory

    folder, _, _ = parts_folder
    out = tmp_path / "out"
    with output_lock(out):  # another run holds it (flock: per open file, so this process counts as another)
        result = CliRunner().invoke(main, ["predict", str(trained[0] / "train.model"), str(folder), "--out", str(out)])
        assert result.exit_code == 2 and f"is being written by process {os.getpid()}" in result.output
        with pytest.raises(ImpellerBenchError, match="is being written by"):  # run, submit, build: one rule
            with staged_directory(tmp_path / "out"):
                pass
    assert not out.exists() and not list(tmp_path.glob(".out.*"))
    other = tmp_path / ".out.b.0123456789ab.partial"  # a live staging folder of another output, "out.b"
    other.mkdir()
    with staged_directory(out) as stage:
        (stage / "x").write_text("1")
    assert (out / "x").read_text() == "1" and other.is_dir()
    (tmp_path / ".link.lock").symlink_to(tmp_path / "target")  # a planted lock link is not followed
    with pytest.raises(ImpellerBenchError, match="cannot write beside"):
        with staged_directory(tmp_path / "link"):
            pass
    assert not (tmp_path / "target").exists()


@pytest.mark.parametrize("side", [64, 96])
def test_an_exported_graph_is_judged_by_thresholds_for_its_own_input(synthetic_dataset, side):
    """A model calibrated on images of another size than its input S (the reported case: 300 or 512 px
    photos) exports thresholds recalibrated on the same held-out images resized to S: the graph's scores are
    made at S x S, and the share of held-out normals above its threshold keeps the calibrated rate."""
    from impeller_bench.inspection.export import graph_thresholds

    images = [calibrating.resize_image(s.load_image(), side) for s in load_dataset(synthetic_dataset).train]
    detector = detectors.create("padim", device="cpu", image_size=64).fit(images)
    calibration = calibrating.calibrate(detector, images, false_alarm_rate=0.2, seed=0)
    assert calibration.image_sizes == [[side, side]]
    metadata = graph_thresholds(calibration)
    if side == 64:  # the images are the graph's input: the model's own thresholds
        assert calibration.graph_image_threshold is None
        assert float(metadata["image_threshold"]) == calibration.image_threshold
        return
    assert float(metadata["image_threshold"]) == calibration.graph_image_threshold != calibration.image_threshold
    assert float(metadata["pixel_threshold"]) == calibration.graph_pixel_threshold
    assert "96x96 px" in metadata["thresholds_calibrated_on"]
    scorer, held, _ = calibrating.held_out_normals(detector, images, 0)
    graph_scores = calibrating.score_by_size(scorer, [calibrating.resize_image(image, 64) for image in held])[0]
    assert np.mean(graph_scores > calibration.graph_image_threshold) <= 0.2
