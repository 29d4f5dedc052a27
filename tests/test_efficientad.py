"""EfficientAD and ours: size arithmetic, no checkerboard, training, determinism, persistence."""
import numpy as np
import pytest
import torch

from impeller_bench import detectors, synth
from impeller_bench.detectors.efficientad import AutoEncoder, TransposedDecoder, pdn, teacher_size
from impeller_bench.errors import ImpellerBenchError


@pytest.mark.parametrize("image_size", [64, 128, 256])
@pytest.mark.parametrize("decoder", ["bilinear", "transposed"])
def test_decoders_end_at_the_teacher_output_size(image_size, decoder):
    t = teacher_size(image_size)
    x = torch.zeros(2, 3, image_size, image_size)
    assert pdn(384, "small")(x).shape == (2, 384, t, t)
    assert AutoEncoder(image_size, decoder)(x).shape == (2, 384, t, t)
    assert teacher_size(256) == 56 and pdn(384, "medium")(torch.zeros(1, 3, 256, 256)).shape == (1, 384, 56, 56)


def test_transposed_sizes_follow_the_formula():
    out = torch.zeros(1, 64, 1, 1)
    sizes = []
    for layer in TransposedDecoder(56).upsample:
        out = layer(out)
        if isinstance(layer, torch.nn.ConvTranspose2d):
            k, s, p = layer.kernel_size[0], layer.stride[0], layer.padding[0]
            sizes.append((s, k, p, out.shape[-1]))
    h = 1
    for s, k, p, got in sizes:
        h = s * (h - 1) + k - 2 * p
        assert got == h
    assert [s[-1] for s in sizes] == [7, 14, 28, 56]


def phases_of_constant_input(stack: torch.nn.Sequential) -> torch.Tensor:
    """Uniform kernels, constant latent: the interior's four 2 x 2 pixel phases must agree."""
    with torch.no_grad():
        for layer in stack:
            if isinstance(layer, torch.nn.ConvTranspose2d):
                layer.weight.fill_(1.0)
                layer.bias.zero_()
        out = stack(torch.ones(1, 64, 1, 1))[0, 0]
    interior = out[4:-4, 4:-4]
    return torch.stack([interior[i::2, j::2].mean() for i in (0, 1) for j in (0, 1)])


def test_transposed_decoder_has_no_checkerboard():
    phases = phases_of_constant_input(TransposedDecoder(56).upsample)
    assert torch.allclose(phases, phases[0], rtol=1e-6)
    # The test can fail: a kernel of 3 with stride 2 overlaps unevenly.
    uneven = torch.nn.Sequential(torch.nn.ConvTranspose2d(64, 64, 7), torch.nn.ConvTranspose2d(64, 64, 3, stride=2, padding=1))
    phases = phases_of_constant_input(uneven)
    assert not torch.allclose(phases, phases[0], rtol=1e-3)


def test_registry_and_configs():
    assert {"ours", "efficientad"} <= set(detectors.available())
    ours, plain = detectors.create("ours"), detectors.create("efficientad")
    assert (ours.config.decoder, ours.config.dropout) == ("transposed", 0.0)
    assert (plain.config.decoder, plain.config.dropout) == ("bilinear", 0.2)
    with pytest.raises(ImpellerBenchError, match="no option"):
        detectors.create("ours", colour="red")
    with pytest.raises(ImpellerBenchError, match="unknown detector"):
        detectors.create("nope")


def synthetic_images(split, label, n, size=128, seed=0):
    return [synth.generate(split, label, k, seed, size)[0] for k in range(n)]


@pytest.fixture(scope="module")
def trained():
    detector = detectors.create("ours", image_size=128, steps=8, batch_size=2, seed=1, device="cpu")
    return detector.fit(synthetic_images("train", "good", 6))


def test_scores_and_maps_have_the_input_shape_and_are_finite(trained):
    images = synthetic_images("test", "defect", 3)
    scores, maps = trained.score_images(images)
    assert scores.shape == (3,) and maps.shape == (3, 128, 128)
    assert np.isfinite(scores).all() and np.isfinite(maps).all()
    np.testing.assert_allclose(scores, maps.reshape(3, -1).max(axis=1))


def test_same_seed_same_scores(trained):
    again = detectors.create("ours", image_size=128, steps=8, batch_size=2, seed=1, device="cpu")
    again.fit(synthetic_images("train", "good", 6))
    images = synthetic_images("test", "good", 2)
    np.testing.assert_array_equal(trained.score_images(images)[1], again.score_images(images)[1])


def test_save_load_gives_identical_scores(trained, tmp_path):
    path = tmp_path / "ours.pt"
    trained.save(path)
    loaded = detectors.load(path)
    images = synthetic_images("test", "defect", 2)
    np.testing.assert_array_equal(trained.score_images(images)[1], loaded.score_images(images)[1])
    assert loaded.describe()["teacher"].startswith("random")


def test_run_command_writes_predictions_that_evaluate(synthetic_dataset, tmp_path):
    import json

    from click.testing import CliRunner

    from impeller_bench.cli import main

    out = tmp_path / "pred"
    result = CliRunner().invoke(main, ["run", "ours", "--dataset", str(synthetic_dataset), "--out", str(out),
                                       "--steps", "2", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "meta.json").read_text())
    assert meta["method"] == "ours" and meta["teacher"].startswith("random") and meta["config"]["steps"] == 2
    assert "pixel_pro_30" in result.output
    assert CliRunner().invoke(main, ["evaluate", str(out)]).exit_code == 0
    ablation = CliRunner().invoke(main, ["run", "efficientad", "--dataset", str(synthetic_dataset), "--out", str(tmp_path / "abl"),
                                         "--steps", "1", "--device", "cpu", "--decoder", "transposed", "--dropout", "0.1"])
    assert ablation.exit_code == 0, ablation.output
    config = json.loads((tmp_path / "abl" / "meta.json").read_text())["config"]
    assert (config["decoder"], config["dropout"]) == ("transposed", 0.1)


def test_latency_command_reports_median_and_p90(tmp_path):
    import json

    from click.testing import CliRunner

    from impeller_bench.cli import main

    result = CliRunner().invoke(main, ["latency", "ours", "efficientad", "--runs", "2", "--warmup", "1", "--device", "cpu",
                                       "--json", str(tmp_path / "lat.json"), "--plot", str(tmp_path / "lat.png")])
    assert result.exit_code == 0, result.output
    figures = json.loads((tmp_path / "lat.json").read_text())
    assert [f["method"] for f in figures] == ["ours", "efficientad"]
    assert all(0 < f["median_ms"] <= f["p90_ms"] for f in figures) and (tmp_path / "lat.png").stat().st_size > 0


def test_distilled_teacher_loads_into_the_detector(tmp_path):
    import json

    from impeller_bench.distill import distill_teacher, sample_photos

    photos = sample_photos()
    assert len(photos) >= 5  # offline images exist
    out = tmp_path / "teacher.pt"
    meta = distill_teacher(photos[:4] + synthetic_images("train", "good", 2, size=64), out, image_size=64, steps=3,
                           batch_size=2, seed=0, device="cpu")
    assert np.isfinite(meta["final_loss"]) and "substitute" in json.loads(out.with_name("teacher.pt.json").read_text())["backbone"]
    detector = detectors.create("ours", image_size=64, teacher_weights=str(out), device="cpu")
    state = torch.load(out, weights_only=True)
    assert all(torch.equal(detector.teacher.state_dict()[k], v) for k, v in state.items())
    assert detector.describe()["teacher"] == str(out)


def test_published_teacher_layouts_are_mapped(tmp_path):
    from impeller_bench.detectors.efficientad import teacher_state_from_file

    reference = pdn(384, "small").state_dict()
    anomalib_layout = {}
    for index, name in zip((0, 3, 6, 8), ("conv1", "conv2", "conv3", "conv4")):
        anomalib_layout[f"{name}.weight"] = reference[f"{index}.weight"]
        anomalib_layout[f"{name}.bias"] = reference[f"{index}.bias"]
    path = tmp_path / "anomalib_teacher.pt"
    torch.save(anomalib_layout, path)
    mapped = teacher_state_from_file(path, "small")
    assert mapped.keys() == reference.keys() and all(torch.equal(mapped[k], reference[k]) for k in reference)


def test_training_progress_reports_loss_and_speed():
    seen = []

    def progress(items, label, status=None):
        for item in items:
            yield item
        seen.append((label, status()))

    detector = detectors.create("ours", image_size=64, steps=3, batch_size=2, seed=0, device="cpu")
    detector.fit(synthetic_images("train", "good", 4, size=64), progress)
    (label, text), = seen
    assert label == "training" and f"loss {detector.last_loss:.3f}" in text and "steps/s" in text
    assert np.isfinite(detector.last_loss)


def test_bfloat16_training_is_recorded_and_repeatable():
    images = synthetic_images("train", "good", 4, size=64)
    runs = []
    for _ in range(2):
        detector = detectors.create("ours", image_size=64, steps=3, batch_size=2, seed=0, device="cpu", precision="bfloat16")
        detector.fit(images)
        runs.append(detector.score_images(images[:2])[1])
        assert detector.describe()["training_precision"] == "bfloat16" and runs[-1].dtype == np.float32
    np.testing.assert_array_equal(runs[0], runs[1])
    assert detectors.create("ours", precision="auto", device="cpu").training_precision in ("float32", "bfloat16")
    with pytest.raises(ImpellerBenchError, match="precision"):
        detectors.create("ours", precision="half", device="cpu").training_precision


def test_distillation_targets_from_fit_equal_fresh_ones():
    from impeller_bench.backbones import images01
    from impeller_bench.distill import FeatureTarget, sample_photos

    data = images01(sample_photos()[:5], 64)
    target = FeatureTarget(64, torch.device("cpu"))
    fitted = target.fit(data, seed=0)
    assert fitted.shape == (5, 384, teacher_size(64), teacher_size(64))
    torch.testing.assert_close(fitted, target(data), atol=1e-4, rtol=1e-4)
    assert abs(float(fitted.mean())) < 0.05 and abs(float(fitted.std()) - 1) < 0.1  # normalised per channel
