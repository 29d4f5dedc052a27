"""Backbones: the packaged weights are real (ImageNet classes of scikit-image's sample photos), the
torchvision architectures match theirs, and missing or wrong weights give one clear error."""
import importlib.util
import os

import numpy as np
import pytest
import torch
from skimage import data

from impeller_bench.common import backbones
from impeller_bench.common.errors import ImpellerBenchError

CATS = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967

# The same logits on every machine: a fixed thread count (conftest.fixed_torch_threads).
pytestmark = pytest.mark.usefixtures("fixed_torch_threads")


@pytest.fixture(scope="module")
def lite0():
    return backbones.load_backbone("efficientnet_lite0")


def top_class(model, image):
    with torch.no_grad():
        return int(model(backbones.imagenet_tensor([image], 224)).argmax())


def test_lite0_classifies_a_cat_and_an_espresso(lite0):
    assert top_class(lite0, data.chelsea()) in CATS
    assert top_class(lite0, data.coffee()) == ESPRESSO


def test_feature_maps_have_the_documented_strides(lite0):
    x = backbones.imagenet_tensor([np.zeros((256, 256), np.uint8)])
    maps = lite0.features(x, ("stage2", "stage3", "stage4", "stage5"))
    assert {k: tuple(v.shape[1:]) for k, v in maps.items()} == {
        "stage2": (24, 64, 64), "stage3": (40, 32, 32), "stage4": (80, 16, 16), "stage5": (112, 16, 16)}
    assert all(not p.requires_grad for p in lite0.parameters())


def test_tampered_or_foreign_checkpoints_are_refused(tmp_path):
    bad = tmp_path / "evil.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ImpellerBenchError, match="not a loadable tensor checkpoint"):
        backbones.load_backbone("efficientnet_lite0", bad)
    wrong = tmp_path / "wrong.pth"
    torch.save({"_conv_stem.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ImpellerBenchError, match="does not fit"):
        backbones.load_backbone("efficientnet_lite0", wrong)
    with pytest.raises(ImpellerBenchError, match="sha256"):
        backbones.load_state_dict(wrong, "0" * 64)


def test_a_pickled_object_is_not_executed(tmp_path):
    class Boom:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "pickle.pth"
    torch.save({"x": Boom()}, path)
    with pytest.raises(ImpellerBenchError, match="not a loadable tensor checkpoint"):
        backbones.load_state_dict(path)


def _weights_package(name):
    """A backbone whose weights come in a package: on a machine without it the test skips and says so,
    except where the README's test command ran (it installs them all; CI sets IMPELLER_BENCH_REQUIRE_DATA)."""
    spec = backbones.BACKBONES[name]
    missing = importlib.util.find_spec(spec.package) is None
    return pytest.param(name, marks=pytest.mark.skipif(
        missing and os.environ.get("IMPELLER_BENCH_REQUIRE_DATA") != "1",
        reason=f"optional weights package not installed: {spec.pip}"))


@pytest.mark.parametrize("name", [_weights_package("efficientnet_lite2"), _weights_package("mobilenet_v2")])
def test_other_packaged_backbones_classify_a_cat_and_an_espresso(name):
    model = backbones.load_backbone(name)
    assert top_class(model, data.chelsea()) in CATS
    assert top_class(model, data.coffee()) == ESPRESSO


# torchvision's published parameter counts: the architectures match theirs, so their checkpoints load strict.
TORCHVISION_PARAMETERS = {"resnet18": 11_689_512, "wide_resnet50_2": 68_883_240, "wide_resnet101_2": 126_886_696,
                          "mobilenet_v2": 3_504_872}


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMETERS))
def test_torchvision_architectures_have_torchvision_parameter_counts(name):
    model = backbones.BACKBONES[name].build()
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_PARAMETERS[name]


def test_resnet_feature_maps_and_a_user_checkpoint(tmp_path):
    model = backbones.BACKBONES["resnet18"].build()
    path = tmp_path / "mine.pth"
    torch.save(model.state_dict(), path)
    loaded = backbones.load_backbone("resnet18", path)
    x = backbones.imagenet_tensor([np.zeros((256, 256), np.uint8)])
    maps = loaded.features(x, ("layer1", "layer2", "layer3", "layer4"))
    assert {k: tuple(v.shape[1:]) for k, v in maps.items()} == {
        "layer1": (64, 64, 64), "layer2": (128, 32, 32), "layer3": (256, 16, 16), "layer4": (512, 8, 8)}
    assert loaded(x).shape == (1, 1000)


def test_missing_weights_say_where_they_were_looked_for(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = tmp_path / "hub" / "checkpoints" / "wide_resnet50_2-95faca4d.pth"
    with pytest.raises(ImpellerBenchError, match="were not found") as error:
        backbones.load_backbone("wide_resnet50_2")
    assert str(expected) in str(error.value)
    expected.parent.mkdir(parents=True)
    torch.save({"fc.weight": torch.zeros(1)}, expected)  # right name, wrong content: the hash prefix differs
    with pytest.raises(ImpellerBenchError, match="sha256"):
        backbones.load_backbone("wide_resnet50_2")


def test_unknown_backbone_and_layer_names_are_refused(lite0):
    with pytest.raises(ImpellerBenchError, match="unknown backbone 'resnet9000'; known: efficientnet_lite0"):
        backbones.load_backbone("resnet9000")
    with pytest.raises(ImpellerBenchError, match=r"unknown feature map\(s\) \['layer2'\]"):
        lite0.features(torch.zeros(1, 3, 64, 64), ("layer2",))
