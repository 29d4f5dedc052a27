"""The pretrained backbone is real: ImageNet classes of scikit-image's sample photos."""
import numpy as np
import pytest
import torch
from skimage import data

from impeller_bench import backbones
from impeller_bench.errors import ImpellerBenchError

CATS = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


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
