"""The distilled EfficientAD teacher: free images only, cached once per machine, loadable without the cache."""
import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from impeller_bench import detectors
from impeller_bench.cli import main
from impeller_bench.common.errors import ImpellerBenchError
from impeller_bench.detectors.efficientad import distill

TINY_RECIPE = {"image_size": 64, "crop": 48, "steps": 3, "batch_size": 2, "precision": "float32", "synthetic_images": 2}


@pytest.fixture
def tiny(monkeypatch, tmp_path):
    """A seconds-long recipe, a cache folder of the test's own, one thread; yields the cache folder."""
    for key, value in TINY_RECIPE.items():
        monkeypatch.setitem(distill.DISTILL_RECIPE, key, value)
    cache = tmp_path / "cache"
    monkeypatch.setenv("IMPELLER_BENCH_CACHE", str(cache))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield cache
    torch.set_num_threads(threads)


@pytest.fixture
def distillations(monkeypatch):
    """The seeds distill_teacher was called with (it still distils)."""
    calls, real = [], distill.distill_teacher

    def counted(*args, **kwargs):
        calls.append(kwargs["seed"])
        return real(*args, **kwargs)

    monkeypatch.setattr(distill, "distill_teacher", counted)
    return calls


def test_free_images_read_no_dataset_and_are_not_a_datasets_images(monkeypatch, tiny):
    from impeller_bench.common import imageio
    from impeller_bench.data import dataset as data
    from impeller_bench.data import synth
    from impeller_bench.inspection import runner

    def refuse(*args, **kwargs):
        raise AssertionError("free_images read a dataset or an image file")

    for module, name in ((data, "load_dataset"), (runner, "default_dataset"), (imageio, "read_image"),
                         (distill, "read_image"), (synth, "write_synthetic")):
        monkeypatch.setattr(module, name, refuse)
    images, sources = distill.free_images(seed=0)
    assert len(images) >= 10 and all(image.dtype == np.uint8 for image in images)
    assert "scikit-image sample photos" in sources and "synthetic impellers" in sources and "CC0" in sources
    drawn = images[-TINY_RECIPE["synthetic_images"]:]
    for split, label in (("train", "good"), ("test", "good"), ("test", "defect")):  # the synthetic datasets' images
        assert not any(np.array_equal(drawn[0], synth.generate(split, label, k, 0, 64)[0]) for k in range(2))
    assert not np.array_equal(drawn[0], distill.free_images(seed=1)[0][-2])  # seeded


def test_cached_teacher_distils_once_per_backbone_recipe_and_seed(monkeypatch, tiny, distillations):
    first = distill.cached_teacher("efficientnet_lite0", seed=0)
    assert first == tiny / "teachers" / f"distilled-efficientnet_lite0-{distill.recipe_key()}-seed0.pt"
    assert first.is_file() and distillations == [0]
    assert distill.cached_teacher("efficientnet_lite0", seed=0) == first and distillations == [0]  # no work
    sidecar = json.loads(first.with_name(first.name + ".json").read_text())
    assert "free to use" in sidecar["image_licence"] and "scikit-image" in sidecar["image_sources"]
    assert sidecar["steps"] == 3 and sidecar["crop"] == 48

    keys = {first, distill.cached_teacher_path("efficientnet_lite0", 1), distill.cached_teacher_path("mobilenet_v2", 0),
            distill.cached_teacher_path("efficientnet_lite0", 0, pdn_size="medium"),
            distill.cached_teacher_path("efficientnet_lite0", 0, cache_dir=tiny / "elsewhere")}
    monkeypatch.setitem(distill.DISTILL_RECIPE, "steps", 4)
    keys.add(distill.cached_teacher_path("efficientnet_lite0", 0))
    assert len(keys) == 6  # each of seed, backbone, PDN size, folder and recipe makes another file
    with pytest.raises(ImpellerBenchError, match="no distillation recipe for backbone 'nope'"):
        distill.cached_teacher("nope", seed=0)
    assert distillations == [0]


def test_backbones_distil_at_least_384_channels():
    from impeller_bench.common.backbones import BACKBONES

    for name, stages in distill.DISTILL_STAGES.items():
        with torch.device("meta"):  # shapes only: no weights, no arithmetic
            maps = BACKBONES[name].build().features(torch.zeros(1, 3, 64, 64), stages)
        assert sum(m.shape[1] for m in maps.values()) >= 384, name


def test_random_crops_are_the_whole_images_cells():
    """A PDN (no padding) on a crop at a multiple of its stride gives the whole image's output over the crop's cells."""
    net = distill.pdn(8, "small").eval()
    views = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        targets = net(views)
        x, y = distill.random_crops(views, targets, 4, 48, torch.Generator().manual_seed(0))
        torch.testing.assert_close(net(x), y)


def random_images(count: int, size: int = 64) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(count)]


def test_a_distilled_teacher_trains_and_a_saved_detector_needs_no_cache(monkeypatch, tiny, tmp_path, distillations):
    def fitted():  # efficientad: its decoder's dropout draws from torch's global random state
        return detectors.create("efficientad", teacher="distilled", image_size=64, steps=2, batch_size=2, seed=0,
                                precision="float32", device="cpu").fit(images)

    images = random_images(4)
    assert detectors.create("efficientad", teacher="distilled", device="cpu").config.teacher == \
        "distilled:efficientnet_lite0" and distillations == []  # nothing done before the teacher first runs
    detector = fitted()
    assert distillations == [0]
    cached = torch.load(distill.cached_teacher("efficientnet_lite0", 0), weights_only=True)
    assert all(torch.equal(detector.teacher.state_dict()[k], v) for k, v in cached.items())
    label = detector.describe()["teacher"]
    assert label.startswith("PDN distilled from efficientnet_lite0 features on free images") and distill.recipe_key() in label
    scores = detector.score_images(images)[0]
    # Distilling in the middle of fit left the random state alone: the same detector with the cached teacher is equal.
    np.testing.assert_array_equal(fitted().score_images(images)[0], scores)
    assert distillations == [0]

    path = tmp_path / "model.pt"
    detector.save(path)
    shutil.rmtree(tiny)  # another machine: no cache

    def refuse(*args, **kwargs):
        raise AssertionError("loading a saved detector distilled a teacher")

    monkeypatch.setattr(distill, "distill_teacher", refuse)
    loaded = detectors.load(path, device="cpu")
    np.testing.assert_allclose(loaded.score_images(images)[0], scores, rtol=1e-5, atol=1e-6)
    assert not tiny.exists()


def test_distilled_teacher_specs_are_checked():
    with pytest.raises(ImpellerBenchError, match="no distillation recipe for backbone 'resnet9'"):
        detectors.create("ours", teacher="distilled:resnet9", device="cpu")
    with pytest.raises(ImpellerBenchError, match="distilled"):
        detectors.create("ours", teacher="distiled", device="cpu")
    with pytest.raises(ImpellerBenchError, match="names no backbone"):
        detectors.create("ours", teacher="distilled:", device="cpu")


def test_distill_teacher_command_uses_free_images_and_has_no_dataset_option(tiny, tmp_path):
    out = tmp_path / "teacher.pt"
    result = CliRunner().invoke(main, ["distill-teacher", "--out", str(out), "--steps", "2", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    sidecar = json.loads(out.with_name("teacher.pt.json").read_text())
    assert sidecar["steps"] == 2 and "synthetic impellers" in sidecar["image_sources"]
    assert "free to use" in sidecar["image_licence"] and sidecar["backbone"].startswith("efficientnet_lite0")
    result = CliRunner().invoke(main, ["distill-teacher", "--out", str(out), "--dataset", str(tmp_path)])
    assert result.exit_code == 2 and "No such option" in result.output and "--dataset" in result.output


def test_run_with_a_distilled_teacher_distils_it_first_with_progress(tiny, synthetic_dataset, tmp_path):
    """First use on a machine: the teacher is distilled (progress shown) before the fit, then taken from the cache."""
    from impeller_bench.inspection.runner import run_method

    labels = []

    def progress(iterable, label, status=None):
        labels.append(label)
        return iterable

    run_method("ours", synthetic_dataset, tmp_path / "run", steps=2, device="cpu", progress=progress,
               teacher="distilled", precision="float32", image_size=64, cached_views=2)
    assert labels.index("distilling") < labels.index("training")
    assert len(list((tiny / "teachers").glob("*.pt"))) == 1
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["teacher"].startswith("PDN distilled from efficientnet_lite0")
