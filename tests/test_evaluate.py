"""The reference evaluator end to end on synthetic data, and every bad input it must refuse."""
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from impeller_bench.cli import main
from impeller_bench.common import metrics
from impeller_bench.common.files import sha256_file
from impeller_bench.common.imageio import encode_png
from impeller_bench.data.dataset import load_dataset
from impeller_bench.evaluation.evaluate import compare, evaluate, resize_map
from impeller_bench.evaluation.predictions import load_predictions, write_predictions


def noisy_predictions(dataset, out, seed=0, noise=0.6, scale=1, **meta):
    """Maps = mask + noise (downscaled by ``scale``); image score = map maximum."""
    rng = np.random.default_rng(seed)
    scores, maps = {}, {}
    for s in dataset.test:
        mask = s.load_mask().astype(np.float32)
        m = mask + noise * rng.random(mask.shape, dtype=np.float32)
        m = m[::scale, ::scale] if scale > 1 else m
        maps[s.id], scores[s.id] = m, float(m.max())
    meta = {"method": f"noisy-{seed}", "manifest_sha256": dataset.manifest_sha256, "dataset": str(dataset.root)} | meta
    return write_predictions(out, scores, maps, meta, dtype=np.float32)


@pytest.fixture(scope="module")
def dataset(synthetic_dataset):
    return load_dataset(synthetic_dataset)


def test_evaluate_matches_the_metric_functions(dataset, tmp_path):
    pred = load_predictions(noisy_predictions(dataset, tmp_path / "p"))
    result = evaluate(dataset, pred)
    masks = [s.load_mask() for s in dataset.test]
    maps = [pred.load_map(s.id) for s in dataset.test]
    labels = [s.is_defect for s in dataset.test]
    scores = [pred.scores[s.id] for s in dataset.test]
    m = result["metrics"]
    assert m["pixel_auroc"] == pytest.approx(metrics.pixel_auroc(masks, maps), abs=1e-12)
    assert m["pixel_pro_30"] == pytest.approx(metrics.pro_auc(masks, maps), abs=1e-12)
    assert m["pixel_f1_max"] == pytest.approx(metrics.pixel_f1_max(masks, maps).f1, abs=1e-12)
    assert m["image_auroc"] == pytest.approx(metrics.image_auroc(labels, scores), abs=1e-12)
    assert set(m) == {"image_auroc", "image_auprc", "image_f1_max", "image_precision", "image_recall",
                      "pixel_auroc", "pixel_pro_30", "pixel_f1_max"}
    assert any(k.startswith("class ") for k in result["breakdown"]) and any(k.startswith("size ") for k in result["breakdown"])


def test_perfect_maps_score_one(dataset, tmp_path):
    pred = load_predictions(noisy_predictions(dataset, tmp_path / "p", noise=0.0))
    m = evaluate(dataset, pred)["metrics"]
    assert m["pixel_auroc"] == 1.0 and m["pixel_pro_30"] == pytest.approx(1.0) and m["image_auroc"] == 1.0


def test_maps_of_another_resolution_are_resized_bilinearly(dataset, tmp_path):
    pred = load_predictions(noisy_predictions(dataset, tmp_path / "half", scale=2))
    result = evaluate(dataset, pred)["metrics"]
    masks = [s.load_mask() for s in dataset.test]
    maps = [resize_map(pred.load_map(s.id), s.load_mask().shape) for s in dataset.test]
    assert result["pixel_auroc"] == pytest.approx(metrics.pixel_auroc(masks, maps), abs=1e-12)
    # half-pixel centres: a 2x2 map [[0, 1], [0, 1]] to 4x4 reads 0, 0.25, 0.75, 1 across
    np.testing.assert_allclose(resize_map(np.array([[0, 1], [0, 1]], np.float32), (4, 4))[0], [0, 0.25, 0.75, 1])


def test_bootstrap_is_seeded_and_brackets_the_estimate(dataset, tmp_path):
    pred = load_predictions(noisy_predictions(dataset, tmp_path / "p", noise=1.2))
    first = evaluate(dataset, pred, bootstrap_samples=60, seed=1)
    again = evaluate(dataset, pred, bootstrap_samples=60, seed=1)
    assert first["ci95"] == again["ci95"]
    for name, (lo, hi) in first["ci95"].items():
        assert lo <= hi
        assert lo - 1e-9 <= first["metrics"][name] <= hi + 1e-9 or name.startswith("image_")


def test_compare_identical_predictions_is_zero_and_better_maps_win(dataset, tmp_path):
    a = load_predictions(noisy_predictions(dataset, tmp_path / "a", seed=0, noise=2.0))
    same = compare(dataset, a, a, bootstrap_samples=30)
    assert all(v == 0 for v in same["difference"].values()) and all(ci == [0, 0] for ci in same["ci95"].values())
    b = load_predictions(noisy_predictions(dataset, tmp_path / "b", seed=1, noise=0.3))
    better = compare(dataset, a, b, bootstrap_samples=30)
    assert better["difference"]["pixel_auroc"] > 0 and better["ci95"]["pixel_auroc"][0] > 0
    # The board's test (its ranks) on the same resamples, and the difference this split detects for the pair.
    assert better["verdict"]["pixel_auroc"] == "B better" and same["verdict"]["pixel_auroc"] == "no clear difference"
    assert better["detectable_difference"]["pixel_auroc"] > 0 == same["detectable_difference"]["pixel_auroc"]


def refusal(dataset_dir, pred_dir):
    result = CliRunner().invoke(main, ["evaluate", str(pred_dir), "--dataset", str(dataset_dir)])
    assert result.exit_code == 2, result.output
    assert not (pred_dir / "metrics.json").exists()
    return result.output


def test_missing_and_extra_predictions_are_listed(dataset, tmp_path):
    pred = noisy_predictions(dataset, tmp_path / "p")
    victim = dataset.test[0].id
    lines = (pred / "scores.csv").read_text().splitlines()
    (pred / "scores.csv").write_text("\n".join(l for l in lines if not l.startswith(victim + ",")) + "\nstranger/x,0.5\n")
    (pred / "maps" / f"{dataset.test[1].id}.npy").unlink()
    output = refusal(dataset.root, pred)
    assert f"without a score: {victim}" in output and f"without a map: {dataset.test[1].id}" in output
    assert "not in the test set: stranger/x" in output


def test_nan_scores_and_maps_are_refused(dataset, tmp_path):
    pred = noisy_predictions(dataset, tmp_path / "p")
    text = (pred / "scores.csv").read_text().splitlines()
    first_id = text[1].split(",")[0]
    text[1] = f"{first_id},nan"
    (pred / "scores.csv").write_text("\n".join(text) + "\n")
    assert f"NaN or infinite score(s): {first_id}" in refusal(dataset.root, pred)
    pred2 = noisy_predictions(dataset, tmp_path / "q")
    bad = np.ones((8, 8), np.float32)
    bad[2, 2] = np.inf
    np.save(pred2 / "maps" / f"{dataset.test[2].id}.npy", bad)
    output = refusal(dataset.root, pred2)
    assert "NaN or infinite" in output and f"{dataset.test[2].id}.npy" in output


@pytest.mark.parametrize("shape", [(2, 8, 8), (0, 16), ()])
def test_map_that_is_not_2d_or_empty_is_refused(dataset, tmp_path, shape):
    pred = noisy_predictions(dataset, tmp_path / "p")
    np.save(pred / "maps" / f"{dataset.test[0].id}.npy", np.zeros(shape, np.float32))
    output = refusal(dataset.root, pred)
    assert "a non-empty 2-D array is required" in output and "Traceback" not in output


def test_manifest_hash_mismatch_is_refused(dataset, tmp_path):
    pred = noisy_predictions(dataset, tmp_path / "p", manifest_sha256="0" * 64)
    assert "manifest sha256 000000000000" in refusal(dataset.root, pred)


def test_unsafe_image_id_is_refused(dataset, tmp_path):
    pred = noisy_predictions(dataset, tmp_path / "p")
    with open(pred / "scores.csv", "a") as handle:
        handle.write("../../etc/passwd,1.0\n")
    assert "unsafe image id" in refusal(dataset.root, pred)


@pytest.mark.parametrize("fill, message", [(False, "no defect region"), (True, "no normal pixel")])
def test_test_set_without_defect_region_or_normal_pixel(dataset, tmp_path, fill, message):
    """Datasets that validate passes (an empty mask on a defect image would not) yet cannot be scored per pixel."""
    root = tmp_path / "ds"
    shutil.copytree(dataset.root, root)
    manifest = json.loads((root / "manifest.json").read_text())
    kept = "defect" if fill else "good"  # only defect images, masks covering them whole; or only good images
    manifest["entries"] = [e for e in manifest["entries"] if e["split"] == "train" or e["label"] == kept]
    for e in manifest["entries"]:
        if e["mask"]:
            (root / e["mask"]).write_bytes(encode_png(np.full((128, 128), True)))
            e.update(mask_sha256=sha256_file(root / e["mask"]), region_count=1, defect_area=128 * 128,
                     region_classes=e["region_classes"][:1])
    (root / "manifest.json").write_text(json.dumps(manifest))
    changed = load_dataset(root)
    pred = noisy_predictions(changed, tmp_path / "p")
    assert message in refusal(root, pred)


def test_image_level_test_set_gets_image_metrics_only(dataset, tmp_path):
    root = tmp_path / "image-level"
    shutil.copytree(dataset.root, root)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["build"]["pixel_masks"] = False
    (root / "manifest.json").write_text(json.dumps(manifest))
    changed = load_dataset(root)
    pred = noisy_predictions(changed, tmp_path / "p")
    shutil.rmtree(pred / "maps")
    result = CliRunner().invoke(main, ["evaluate", str(pred), "--dataset", str(root)])
    assert result.exit_code == 0, result.output
    assert "image-level metrics only" in result.output
    saved = json.loads((pred / "metrics.json").read_text())
    assert saved["pixel_level"] is False and "pixel_auroc" not in saved["metrics"]


def test_cli_writes_metrics_json_and_plots(dataset, tmp_path):
    pred = noisy_predictions(dataset, tmp_path / "p")
    plots = tmp_path / "plots"
    result = CliRunner().invoke(main, ["evaluate", str(pred), "--bootstrap", "20", "--plots", str(plots)])
    assert result.exit_code == 0, result.output
    saved = json.loads((pred / "metrics.json").read_text())
    assert saved["metrics"]["pixel_auroc"] > 0.5 and "ci95" in saved
    assert sorted(p.name for p in plots.iterdir()) == ["image_pr.png", "image_roc.png", "pixel_roc.png", "pro_curve.png"]
    assert "pixel_pro_30" in result.output
    compared = CliRunner().invoke(main, ["compare", str(pred), str(pred), "--bootstrap", "5"])
    assert compared.exit_code == 0 and "no clear difference" in compared.output


def test_the_evaluator_takes_paths(dataset, tmp_path):
    import impeller_bench

    pred = noisy_predictions(dataset, tmp_path / "p")
    by_path = impeller_bench.evaluate(dataset.root, pred)["metrics"]
    assert by_path == evaluate(dataset, load_predictions(pred))["metrics"]


def test_breakdown_by_source_of_the_good_images():
    from sklearn.metrics import roc_auc_score

    from impeller_bench.evaluation.evaluate import EvaluationInputs, breakdown

    rng = np.random.default_rng(3)
    labels = np.array([1] * 6 + [0] * 8, bool)
    scores = rng.integers(0, 4, len(labels)).astype(float)  # ties on purpose
    sources = ["a"] * 6 + ["a", "b", "a", "b", "b", "a", "b", "b"]
    inputs = EvaluationInputs([f"i{k}" for k in range(len(labels))], labels, scores, None, sources=sources)
    rows = breakdown(inputs)
    for source in ("a", "b"):
        chosen = labels | (np.array(sources) == source)
        row = rows[f"good from {source}"]
        assert row["good_images"] == int((~labels & chosen).sum())
        assert row["image_auroc"] == pytest.approx(roc_auc_score(labels[chosen], scores[chosen]))
    one_source = EvaluationInputs(inputs.ids, labels, scores, None, sources=["a"] * len(labels))
    assert breakdown(one_source) == {}


def test_group_bootstrap_resamples_whole_photo_groups():
    """Two identical copies per photo, resampled by group, give exactly the image bootstrap of one copy each."""
    from impeller_bench.evaluation.evaluate import EvaluationInputs, bootstrap

    rng = np.random.default_rng(4)
    labels = np.array([0] * 7 + [1] * 9, bool)
    scores = rng.integers(0, 5, len(labels)).astype(float)  # ties on purpose
    single = EvaluationInputs([f"i{k}" for k in range(16)], labels, scores, None)
    doubled = EvaluationInputs([f"i{k}-{c}" for k in range(16) for c in "ab"], np.repeat(labels, 2),
                               np.repeat(scores, 2), None, groups=np.repeat(np.arange(16) * 7 + 3, 2))
    (by_image,) = bootstrap([single], 200, seed=5)
    (by_group,) = bootstrap([doubled], 200, seed=5)
    for name in ("image_auroc", "image_auprc", "image_f1_max"):
        np.testing.assert_allclose(by_group[name], by_image[name], atol=1e-12)
    # Resampling the 32 images one by one instead treats the copies as independent: narrower intervals.
    (naive,) = bootstrap([EvaluationInputs(doubled.ids, doubled.labels, doubled.scores, None)], 200, seed=5)
    assert np.std(naive["image_auroc"]) < np.std(by_group["image_auroc"])


def test_manifest_asks_for_the_group_bootstrap(dataset, tmp_path):
    root = tmp_path / "grouped"
    shutil.copytree(dataset.root, root)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["build"]["bootstrap_unit"] = "group"
    (root / "manifest.json").write_text(json.dumps(manifest))
    grouped = load_dataset(root)
    pred = load_predictions(noisy_predictions(grouped, tmp_path / "p", noise=1.2))
    result = evaluate(grouped, pred, bootstrap_samples=20, seed=1)
    assert result["bootstrap"]["unit"] == "photo group"
    assert evaluate(dataset, load_predictions(noisy_predictions(dataset, tmp_path / "q")), 5)["bootstrap"]["unit"] == "image"


def offset_maps(dataset, scale=1):
    """The field report's kind: 1e6 + small differences, which any rounding to float32 flattens."""
    rng = np.random.default_rng(3)
    maps = {}
    for s in dataset.test:
        mask = s.load_mask()
        m = 1e6 + 0.02 * rng.random(mask.shape) + 0.01 * mask
        maps[s.id] = m[::scale, ::scale]
    return maps


@pytest.mark.parametrize("scale", [1, 2])
def test_float64_maps_are_evaluated_at_their_precision(dataset, tmp_path, scale):
    maps = offset_maps(dataset, scale)
    scores = {i: float(m.max()) for i, m in maps.items()}
    pred = load_predictions(write_predictions(tmp_path / "p", scores, maps, {"method": "offset"}))
    assert pred.load_map(dataset.test[0].id).dtype == np.float64
    masks = [s.load_mask() for s in dataset.test]
    exact = [resize_map(maps[s.id], s.load_mask().shape) for s in dataset.test]
    assert all(m.dtype == np.float64 for m in exact)
    result = evaluate(dataset, pred)["metrics"]
    assert result["pixel_auroc"] == pytest.approx(metrics.pixel_auroc(masks, exact), abs=1e-12)
    assert result["pixel_auroc"] > 0.75  # rounded to float32 the maps were one constant: 0.5
    rounded = [m.astype(np.float32) for m in exact]
    assert metrics.pixel_auroc(masks, rounded) < 0.6


def test_write_predictions_keeps_the_maps_type(dataset, tmp_path):
    maps = offset_maps(dataset)
    written = write_predictions(tmp_path / "p", {i: 1.0 for i in maps}, maps, {})
    assert np.load(written / "maps" / f"{dataset.test[0].id}.npy").dtype == np.float64


def test_integer_maps_past_float64_are_refused_naming_the_file(dataset, tmp_path):
    maps = {s.id: np.full(s.load_mask().shape, 2 ** 60, np.int64) for s in dataset.test}
    pred = load_predictions(write_predictions(tmp_path / "p", {i: 1.0 for i in maps}, maps, {}))
    with pytest.raises(Exception, match=r"2\*\*53") as caught:
        evaluate(dataset, pred)
    assert "maps/" in str(caught.value)


def test_running_out_of_memory_is_one_line(dataset, tmp_path, monkeypatch):
    pred = noisy_predictions(dataset, tmp_path / "p")

    def no_memory(*args, **kwargs):
        return np.empty((2 ** 22, 2 ** 22))  # numpy's own out-of-memory error, raised before allocating

    monkeypatch.setattr(metrics.PixelSet, "from_maps", no_memory)
    result = CliRunner().invoke(main, ["evaluate", str(pred), "--dataset", str(dataset.root), "--bootstrap", "10"])
    assert result.exit_code == 3
    errors = [line for line in result.output.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and errors[0].startswith("error: out of memory in 'evaluate'")
    assert "Traceback" not in result.output
