"""Registration: exact maps on known re-processed variants, the same-photo rule, mask transfer, photo groups."""
import io

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from impeller_bench.data import grouping, registration, scanning, synth
from impeller_bench.data.registration import (
    Prepared,
    is_same_photo,
    register,
    residual_shift,
    transfer_mask,
)


def photo(seed, size=256, defects=("holes", "chipping")):
    return synth.impeller(np.random.default_rng([seed, 7]), size, defects)


def true_map(angle_deg, mirrored, scale, shift, source_size, target_size):
    """Target (row, col) -> source (row, col): rotate and mirror about the centres, scale, shift."""
    a = np.deg2rad(angle_deg)
    linear = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    if mirrored:
        linear = linear @ np.diag([1.0, -1.0])
    centre_t = np.full(2, (target_size - 1) / 2)
    centre_s = np.full(2, (source_size - 1) / 2) + np.asarray(shift, float)
    return np.hstack([linear, (centre_s - linear @ centre_t)[:, None]])


def variant(image, affine, target_size, gain=1.1, offset=-12.0, quality=85):
    """What a publisher's augmentation does: resample through ``affine``, re-light, re-encode as JPEG."""
    rr, cc = np.mgrid[0:target_size, 0:target_size].astype(np.float64)
    u = affine[0, 0] * rr + affine[0, 1] * cc + affine[0, 2]
    v = affine[1, 0] * rr + affine[1, 1] * cc + affine[1, 2]
    blurred = ndi.gaussian_filter(image.astype(np.float64), 0.5 * np.sqrt(abs(np.linalg.det(affine[:, :2]))))
    warped = ndi.map_coordinates(blurred, [u, v], order=1, mode="reflect")
    buffer = io.BytesIO()
    Image.fromarray(np.clip(gain * warped + offset, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("L"))


def max_point_error(found, expected, size):
    rr, cc = np.mgrid[size // 4 : 3 * size // 4 : 8, size // 4 : 3 * size // 4 : 8].astype(np.float64)
    points = np.stack([rr.ravel(), cc.ravel(), np.ones(rr.size)])
    return float(np.abs(found @ points - expected @ points).max())


@pytest.fixture(scope="module")
def original():
    return photo(1)


@pytest.mark.parametrize("angle, mirrored, scale, shift", [(37.0, False, 1.28, (4.0, -6.0)), (-121.0, True, 1.15, (-5.0, 3.0))])
def test_a_rotated_mirrored_scaled_relit_jpeg_variant_registers_exactly(original, angle, mirrored, scale, shift):
    image = original[0]
    expected = true_map(angle, mirrored, scale, shift, 256, 200)
    target = variant(image, expected, 200)
    found = register(image, target)
    assert is_same_photo(found), found
    assert max_point_error(found.affine, expected, 200) < 0.35
    assert found.gain == pytest.approx(1 / 1.1, rel=0.05) or found.gain == pytest.approx(1.1, rel=0.05)
    assert found.size == 200 and found.scale == pytest.approx(scale, rel=0.01)


def test_another_part_is_not_the_same_photo(original):
    other = photo(2)[0]
    target = variant(other, true_map(10.0, False, 1.2, (0, 0), 256, 200), 200)
    found = register(original[0], target)
    assert not is_same_photo(found)
    assert found.correlation < registration.SAME_PHOTO_MIN_CORRELATION


def test_carried_mask_matches_the_mask_carried_through_the_true_map(original):
    image, mask = original[0], original[1]
    expected = true_map(63.0, True, 1.2, (3.0, 2.0), 256, 200)
    target = variant(image, expected, 200)
    found = register(image, target)
    truth = registration.Registration(tuple(expected.ravel()), 1, 0, 1, 1, 0, 1, 200)
    carried, wanted = transfer_mask(mask, found, (200, 200)), transfer_mask(mask, truth, (200, 200))
    assert wanted.sum() > 100
    assert (carried & wanted).sum() / (carried | wanted).sum() > 0.9
    # Area is kept: a defect wholly inside the frame keeps its area, scaled by the map.
    assert wanted.sum() == pytest.approx(mask.sum() / 1.2 ** 2, rel=0.1)
    assert residual_shift(image, target, found, carried) < 0.5


def test_transfer_mask_takes_a_pixel_when_at_least_half_of_it_was_set():
    identity = registration.Registration((2.0, 0.0, 0.5, 0.0, 2.0, 0.5), 1, 0, 1, 1, 0, 1, 4)  # 2x2 source pixels each
    source = np.zeros((8, 8), bool)
    source[0:2, 0:2] = True  # the whole of target pixel (0, 0)
    source[2:4, 2] = True  # half of target pixel (1, 1)
    source[4, 4] = True  # a quarter of target pixel (2, 2)
    out = transfer_mask(source, identity, (4, 4))
    assert out[0, 0] and out[1, 1] and not out[2, 2] and out.sum() == 2


def test_prepared_images_give_the_same_registration(original):
    target = variant(original[0], true_map(20.0, False, 1.1, (0, 0), 256, 200), 200)
    plain = register(original[0], target)
    prepared = register(Prepared(original[0]), Prepared(target))
    assert plain == prepared


def test_grouping_registers_only_the_doubtful_candidates_and_joins_same_photos():
    fingerprints = [grouping.fingerprint(photo(k)[0]) for k in range(4)]
    asked = []

    def register_pair(a, b):
        asked.append((a, b))
        return (a, b) == (0, 1), 0.999

    # A threshold no pair reaches: every candidate scoring at least the minimum is registered.
    found = grouping.find_photo_groups([str(k) for k in range(4)], fingerprints, threshold=1.01,
                                       register=register_pair, registration_min_score=-1.0)
    assert found.group_of[0] == found.group_of[1] and len(set(found.group_of)) == 3
    assert found.registered_pairs == len(asked) == 6  # all pairs of four images are candidates
    assert found.registration_matches == [(0, 1, 0.999)]
    none = grouping.find_photo_groups([str(k) for k in range(4)], fingerprints, threshold=1.01)
    assert len(set(none.group_of)) == 4 and none.registered_pairs == 0


def test_a_variant_the_fingerprint_misses_is_joined_by_registration(original, tmp_path):
    from impeller_bench.data.sources.records import GOOD, SourceRecord

    image = original[0]
    paths = []
    for k, picture in enumerate([image, variant(image, true_map(45.0, True, 1.25, (6.0, -4.0), 256, 200), 200),
                                 photo(3)[0]]):
        path = tmp_path / f"{k}.png"
        Image.fromarray(picture).save(path)
        paths.append(path)
    records = [SourceRecord("s", "mvtec", p.name, p, GOOD, str(k)) for k, p in enumerate(paths)]
    scans, _ = scanning.scan(records)
    # A threshold over every fingerprint score leaves the joining to registration.
    with_registration = scanning.group_photos(records, scans, threshold=1.01)
    without = scanning.group_photos(records, scans, threshold=1.01, register=False)
    assert with_registration.group_of[0] == with_registration.group_of[1] != with_registration.group_of[2]
    assert len(set(without.group_of)) == 3
