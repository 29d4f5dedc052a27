"""ONNX export: the graph scores as the torch detector does, carries its metadata, and refuses what it cannot do."""
import sys

import numpy as np
import onnx  # the test extra installs it (and onnxruntime)
import pytest
import torch
from PIL import Image
from scipy import ndimage as ndi

from impeller_bench import detectors
from impeller_bench.common.backbones import images01
from impeller_bench.common.errors import ImpellerBenchError
from impeller_bench.data import synth
from impeller_bench.inspection.export import (
    check_export,
    export_onnx,
    exportable_methods,
    onnx_scorer,
)

# Tiny fitted detectors, float32 on the CPU. PaDiM keeps 6 channels so that 8 training images give a full-rank
# covariance: map values of a few units, like a real fit's (100 channels of 8 images: values near 600, where
# float32 alone rounds by 1e-4).
CONFIGS = {
    "ours": detectors.detector_class("ours").profiles["quick"] | {"steps": 2, "precision": "float32", "cached_views": 2},
    # The published layout: a PDN teacher (random here: a file's loads into the same network), the frame, dropout;
    # and the image score from the highest 5% of the cells (top-k in the graph).
    "efficientad": {"image_size": 64, "steps": 2, "batch_size": 2, "precision": "float32", "teacher": "random",
                    "student_width": 0.25, "image_score_share": 0.05},
    "padim": {"image_size": 64, "channels": 6},
    "patchcore": {"image_size": 64},
}
METHODS = list(CONFIGS)
TRAINING_IMAGES = {"ours": 4}  # else 8; the quick profile's teacher sees 352 x 352 inputs: the slow one
TOLERANCE = 1e-4

pytestmark = pytest.mark.usefixtures("fixed_torch_threads")


def synthetic_images(split, label, n, size, seed=0):
    return [synth.generate(split, label, k, seed, size)[0] for k in range(n)]


@pytest.fixture(scope="module")
def export_of(tmp_path_factory):
    """method -> (method, fitted detector, test images at its input size, their torch scores and maps, the ONNX
    file), each made once."""
    made = {}

    def make(name):
        if name not in made:
            detector = detectors.create(name, device="cpu", seed=1, **CONFIGS[name])
            size = detector.model_input_size
            detector.fit(synthetic_images("train", "good", TRAINING_IMAGES.get(name, 8), size))
            test = synthetic_images("test", "defect", 3, size) + synthetic_images("test", "good", 2, size)
            scores, maps = detector.score_images(test)
            path = tmp_path_factory.mktemp("onnx") / f"{name}.onnx"
            export_onnx(detector, path, metadata={"threshold": "0.25"})
            made[name] = name, detector, test, scores, maps, path
        return made[name]

    return make


@pytest.fixture(params=METHODS)
def exported(request, export_of):
    return export_of(request.param)


def test_onnx_runtime_scores_as_the_torch_detector(exported):
    name, detector, test, scores, maps, path = exported
    size = detector.model_input_size
    scorer = onnx_scorer(path)
    onnx_scores, onnx_maps = scorer.score_batch(images01(test, size).numpy())
    assert onnx_scores.shape == (5,) and onnx_maps.shape == (5, size, size)
    print(f"\n{name}: max |torch - onnx| scores {np.abs(onnx_scores - scores).max():.2e}, "
          f"maps {np.abs(onnx_maps - maps).max():.2e} (map values up to {np.abs(maps).max():.3g})")
    np.testing.assert_allclose(onnx_scores, scores, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(onnx_maps, maps, rtol=0, atol=TOLERANCE)
    assert np.ptp(maps) > 100 * TOLERANCE  # the maps are not flat: equal maps say something
    one_score, one_map = scorer.score_batch(images01(test[3:4], size).numpy())  # the batch axis is dynamic
    np.testing.assert_allclose(one_map[0], maps[3], rtol=0, atol=TOLERANCE)
    assert check_export(detector, path, test) <= TOLERANCE


def test_export_leaves_the_detector_scoring_as_before(exported):
    """The exporter switches modules to eval and back: dropout (EfficientAD's autoencoder) must stay off."""
    _, detector, test, scores, maps, _ = exported
    again_scores, again_maps = detector.score_images(test)
    np.testing.assert_array_equal(again_scores, scores)
    np.testing.assert_array_equal(again_maps, maps)


def test_exported_graph_has_its_names_shapes_and_metadata(exported):
    name, detector, _, _, _, path = exported
    size = detector.model_input_size
    model = onnx.load(str(path))
    (image,), outputs = model.graph.input, model.graph.output
    assert image.name == "image" and image.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = image.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, size, size]
    assert [o.name for o in outputs] == ["score", "map"]
    assert [d.dim_param for d in outputs[0].type.tensor_type.shape.dim] == ["batch"]
    assert [(d.dim_param, d.dim_value) for d in outputs[1].type.tensor_type.shape.dim] == [("batch", 0), ("", size), ("", size)]
    props = {p.key: p.value for p in model.metadata_props}
    assert props["method"] == name and props["model_input_size"] == str(size) and props["threshold"] == "0.25"
    assert props["input"].startswith(f"image: RGB float32 in [0,1], N x 3 x {size} x {size}, resized to {size}x{size}")
    scorer = onnx_scorer(path)
    assert (scorer.method, scorer.model_input_size) == (name, size)


def test_score_images_makes_maps_at_a_non_square_images_own_size(exported):
    name, detector, test, _, _, path = exported
    wide = [np.asarray(Image.fromarray(image).resize((90, 70))) for image in test[:2]]
    scores, maps = detector.score_images(wide)
    assert scores.shape == (2,) and maps.shape == (2, 70, 90) and np.isfinite(maps).all()
    onnx_scores, onnx_maps = onnx_scorer(path).score_images(wide)
    assert onnx_maps.shape == (2, 70, 90)
    # The graph's S x S map resized to 70 x 90 against torch's map made at 70 x 90: the same map, up to the order
    # of interpolation (and, for PaDiM and PatchCore, smoothing at S rather than at the image size).
    assert np.corrcoef(maps.ravel(), onnx_maps.ravel())[0, 1] > 0.98


def test_check_export_refuses_another_detectors_graph(export_of):
    name, detector, test, _, _, path = export_of("patchcore")
    other = detectors.create(name, device="cpu", seed=1, **CONFIGS[name])
    other.load_state_dict({"bank": detector.bank * 1.05})
    other.fitted = True
    with pytest.raises(ImpellerBenchError, match="differ from torch's"):
        check_export(other, path, test)


@pytest.mark.parametrize("name", ["spade", "ast", "patchsvdd"])
def test_unsupported_methods_are_refused_in_one_line(name, tmp_path):
    detector = detectors.create(name, device="cpu")
    detector.fitted = True  # refused for what it is, not for being unfitted
    with pytest.raises(ImpellerBenchError) as error:
        export_onnx(detector, tmp_path / "model.onnx")
    assert str(error.value) == f"{name} cannot be exported to ONNX; exportable methods: efficientad, ours, padim, patchcore"
    assert exportable_methods() == ["efficientad", "ours", "padim", "patchcore"]
    assert not (tmp_path / "model.onnx").exists()


@pytest.mark.parametrize("name", ["ours", "padim", "patchcore"])
def test_unfitted_detectors_are_refused(name, tmp_path):
    with pytest.raises(ImpellerBenchError, match=f"^{name} has not been fitted"):
        export_onnx(detectors.create(name, device="cpu", image_size=64), tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()


def test_missing_packages_and_reserved_metadata_are_one_clear_error(monkeypatch, tmp_path):
    detector = detectors.create("padim", device="cpu", image_size=64)
    detector.prepare_untrained()
    with pytest.raises(ImpellerBenchError, match="written by the export itself"):
        export_onnx(detector, tmp_path / "model.onnx", metadata={"method": "mine"})
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    with pytest.raises(ImpellerBenchError, match=r"onnxruntime is missing\): pip install impeller-bench\[export\]"):
        export_onnx(detector, tmp_path / "model.onnx")
    with pytest.raises(ImpellerBenchError, match=r"pip install impeller-bench\[export\]"):
        onnx_scorer(tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()


def test_gaussian_blur_module_is_scipys_filter():
    """The fixed convolution in the graph: scipy's kernel and edge mode, also where the radius passes the size."""
    from impeller_bench.detectors.features import GaussianBlur

    maps = torch.rand(2, 10, 37, generator=torch.Generator().manual_seed(0)) * 5
    for sigma in (4.0, 1.5):
        expected = ndi.gaussian_filter(maps.numpy(), sigma=(0, sigma, sigma))
        np.testing.assert_allclose(GaussianBlur(sigma)(maps).numpy(), expected, rtol=0, atol=2e-6)
    assert torch.equal(GaussianBlur(0.0)(maps), maps)
    assert not np.allclose(GaussianBlur(4.0)(maps).numpy(), ndi.gaussian_filter(maps.numpy(), (0, 4, 4), mode="nearest"))


def test_patchcore_batched_image_score_is_the_per_image_equation(export_of):
    """Eq. 7 over a batch with gathers (the exportable form) equals the per-image computation with cdist."""
    from impeller_bench.common.backbones import normalise
    from impeller_bench.detectors.neighbours import nearest

    _, detector, test, scores, _, _ = export_of("patchcore")
    with torch.no_grad():
        features = detector.backbone.patch_features(normalise(images01(test, 64)), detector.layers, 3)
    bank, expected = detector.bank, []
    for patches in features.flatten(2).transpose(1, 2):
        distances, rows = (t[:, 0] for t in nearest(patches, bank))
        worst = int(distances.argmax())
        _, support = nearest(bank[rows[worst]][None], bank, 9)
        to_support = torch.cdist(patches[worst][None], bank[support[0]])[0]
        expected.append(float((1 - torch.softmax(to_support, 0)[0]) * distances[worst]))
    np.testing.assert_allclose(scores, expected, rtol=1e-5)


def test_latency_through_onnx_runtime_records_the_runtime():
    from impeller_bench.inspection.latency import measure_latency

    timed = measure_latency("patchcore", device="cpu", runs=2, warmup=1, image_size=64, onnx=True)
    assert timed["runtime"] == "onnxruntime" and timed["device"] == "cpu" and timed["median_ms"] > 0
    assert measure_latency("patchcore", device="cpu", runs=1, warmup=0, image_size=64)["runtime"] == "torch"
    with pytest.raises(ImpellerBenchError):
        measure_latency("spade", device="cpu", runs=1, warmup=0, image_size=64, onnx=True)
