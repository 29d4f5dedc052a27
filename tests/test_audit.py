"""The shortcut audit: it passes a clean synthetic split and fails each planted shortcut."""
import io
import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from impeller_bench.data import audit, audit_measures, synth
from impeller_bench.data.audit import (
    TEST_DEFECT,
    TEST_GOOD,
    TRAIN_GOOD,
    audit_images,
    source_mix,
)
from impeller_bench.data.audit_measures import AuditImage, grouped_auroc

SIZE = 128


@pytest.fixture(scope="module")
def clean_split():
    """Synthetic impellers: 24 train good, 16 test good, 16 test defect, each image its own photo group."""
    def one(role, k, defects=()):
        image, mask, _, _ = synth.impeller(np.random.default_rng([5, len(role), k]), SIZE, defects)
        return AuditImage(image, role, "synthetic", hash((role, k)) % 10**6, mask if defects else None)

    kinds = synth.DEFECT_KINDS
    return ([one(TRAIN_GOOD, k) for k in range(24)] + [one(TEST_GOOD, k) for k in range(16)]
            + [one(TEST_DEFECT, k, (kinds[k % len(kinds)],)) for k in range(16)])


@pytest.fixture(scope="module")
def clean_result(clean_split):
    return audit_images(clean_split, seed=0)


def planted(images, role, change):
    return [AuditImage(change(im.image), im.role, im.source, im.group, im.mask) if im.role == role else im
            for im in images]


def jpeg(image, quality):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("L"))


def failed(result):
    return {(s.measure, s.compare) for s in result.separability if not s.passed}


def test_a_clean_split_passes(clean_result):
    assert clean_result.passed, "\n".join(clean_result.lines())
    assert clean_result.source_mix.passed and clean_result.source_mix.difference == 0
    measured = [s for s in clean_result.separability if s.auroc is not None]
    assert len(measured) == 6  # statistics and features on both comparisons, brightness and sharpness
    assert all(s.interval[0] <= s.auroc <= s.interval[1] for s in measured)


def test_blurred_good_test_images_fail_the_audit(clean_split):
    result = audit_images(planted(clean_split, TEST_GOOD, lambda a: ndi.gaussian_filter(a, 1.0)), seed=0, features=False)
    assert not result.passed
    assert ("acquisition statistics", "test good vs test defect") in failed(result)
    assert ("acquisition statistics", "train good vs test good") in failed(result)


def test_re_encoded_defect_images_fail_the_audit(clean_split):
    result = audit_images(planted(clean_split, TEST_DEFECT, lambda a: jpeg(a, 30)), seed=0, features=False)
    assert not result.passed
    assert ("acquisition statistics", "test good vs test defect") in failed(result)


def test_pretrained_features_see_a_re_encoding_of_the_good_test_images(clean_split):
    result = audit_images(planted(clean_split, TEST_GOOD, lambda a: jpeg(ndi.gaussian_filter(a, 0.8), 40)), seed=0)
    assert ("pretrained features", "test good vs test defect") in failed(result)


def test_darker_defect_images_fail_on_brightness_alone(clean_split):
    result = audit_images(planted(clean_split, TEST_DEFECT, lambda a: np.clip(a.astype(int) - 40, 0, 255).astype(np.uint8)),
                          seed=0, features=False)
    brightness = next(s for s in result.separability if s.measure == "brightness")
    assert not brightness.passed and brightness.auroc > 0.95 and brightness.note == "lower in the second set"


def test_source_mix_fails_when_good_and_defect_test_images_come_from_different_sources():
    roles = [TRAIN_GOOD] * 4 + [TEST_GOOD] * 4 + [TEST_DEFECT] * 4
    mixed = source_mix(roles, ["k"] * 4 + ["k", "k", "a", "a"] + ["a"] * 4)
    assert not mixed.passed and mixed.difference == pytest.approx(0.5) and mixed.untrained_sources == ["a"]
    same = source_mix(roles, ["k", "a", "k", "a"] + ["k", "a", "k", "a"] + ["a", "k", "a", "k"])
    assert same.passed and same.difference == 0 and same.untrained_sources == []
    untrained = source_mix(roles, ["k"] * 4 + ["a"] * 8)
    assert not untrained.passed and untrained.difference == 0 and untrained.untrained_sources == ["a"]


def test_a_side_with_one_photo_group_cannot_be_shown_clean_and_fails(clean_split):
    one_group = [AuditImage(im.image, im.role, im.source, 7 if im.role == TEST_GOOD else im.group, im.mask)
                 for im in clean_split]
    result = audit_images(one_group, seed=0, features=False)
    unmeasured = [s for s in result.separability if s.auroc is None]
    assert not result.passed and len(unmeasured) == 4 and not any(s.passed for s in unmeasured)
    assert all("FAIL, not measurable (1 photo group(s) on one side)" in line for line in result.lines()
               if "not measurable" in line)


def test_grouped_auroc_resamples_groups_and_refuses_single_groups():
    rng = np.random.default_rng(0)
    labels = np.repeat([False, True], 20)
    x = (labels + rng.normal(0, 0.1, 40))[:, None]
    groups = np.arange(40) // 2  # pairs of images share a group
    auroc, interval, _ = grouped_auroc(x, labels, groups, seed=0)
    assert auroc == 1.0 and interval == (1.0, 1.0)
    single = grouped_auroc(x, labels, np.where(labels, 1, 0), seed=0)
    assert single[0] is None and "1 photo group" in single[2]


def test_audit_dataset_reads_a_written_split_and_its_result_is_json(synthetic_dataset):
    from impeller_bench.data.dataset import load_dataset

    result = audit.audit_dataset(load_dataset(synthetic_dataset), features=False)
    again = audit.audit_dataset(load_dataset(synthetic_dataset), features=False)
    assert result.to_dict() == again.to_dict()  # seeded: the same verdict and figures every time
    text = json.dumps(result.to_dict())
    assert "source_mix" in text and result.lines()[0].startswith("shortcut audit:")


def test_defect_regions_are_widened_by_the_disc_dilation_they_stand_for():
    """The distance-transform shortcut equals the definition: dilation by a disc of that radius."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = rng.random((int(rng.integers(8, 60)), int(rng.integers(8, 60)))) < rng.choice([0.002, 0.02, 0.1])
        radius = int(rng.integers(1, 9))
        yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
        disc = yy * yy + xx * xx <= radius * radius
        np.testing.assert_array_equal(audit_measures.within_distance(mask, radius), ndi.binary_dilation(mask, structure=disc))
