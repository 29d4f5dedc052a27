import numpy as np
from conftest import SUPERVISELY, needs_shared_data
from PIL import Image

from impeller_bench.data import grouping, synth


def photo(k: int, size: int = 200) -> np.ndarray:
    return synth.generate("train", "good", k, seed=11, size=size)[0]


def relit_and_turned(image: np.ndarray, quarter_turns: int, flip: bool, gain: float) -> np.ndarray:
    """Exact pixel moves (no resampling blur) plus a brightness change."""
    out = np.rot90(image, quarter_turns)
    if flip:
        out = out[:, ::-1]
    return np.clip(out.astype(float) * gain, 0, 255).astype(np.uint8)


def test_turned_flipped_relit_copies_match_and_other_photos_do_not():
    base = [grouping.fingerprint(photo(k)) for k in range(5)]
    for k in range(5):
        for turns, flip, gain in [(1, False, 1.0), (2, True, 0.8), (3, True, 1.2)]:
            variant = grouping.fingerprint(relit_and_turned(photo(k), turns, flip, gain))
            assert grouping.match_score(base[k], variant) >= grouping.DEFAULT_MATCH_THRESHOLD
    cross = [grouping.match_score(base[i], base[j]) for i in range(5) for j in range(i + 1, 5)]
    assert max(cross) < grouping.DEFAULT_MATCH_THRESHOLD - 0.2


def test_groups_join_variants_and_byte_identical_copies():
    images, hashes = [], []
    for k in range(4):
        images.append(photo(k))
        hashes.append(f"h{k}")
    images += [relit_and_turned(photo(1), 1, True, 0.9), photo(2), relit_and_turned(photo(3), 2, False, 1.1)]
    hashes += ["v1", "h2", "v3"]  # index 5 is a byte-identical copy of image 2
    groups = grouping.find_photo_groups(hashes, [grouping.fingerprint(im) for im in images])
    g = groups.group_of
    assert g[1] == g[4] and g[2] == g[5] and g[3] == g[6]
    assert len({g[0], g[1], g[2], g[3]}) == 4
    assert groups.n_groups == 4 and groups.exact_duplicate_pairs == 1
    assert groups.summary()["images_in_shared_groups"] == 6
    assert list(g[:4]) == [0, 1, 2, 3]  # numbered in order of first appearance


@needs_shared_data
def test_real_photo_matches_its_resampled_rotated_scaled_relit_variants(shared_data):
    """The kinds of variants the 300x300 Kaggle set holds, made from an annotated 512x512 photo."""
    names = sorted(p.name for p in (SUPERVISELY / "img").iterdir())[:6]
    originals = [np.asarray(Image.open(SUPERVISELY / "img" / n).convert("L")) for n in names]
    prints = [grouping.fingerprint(im) for im in originals]
    for image, fp in zip(originals, prints):
        fill = int(np.median(image))
        variant = Image.fromarray(image).transpose(Image.FLIP_LEFT_RIGHT).rotate(
            137, resample=Image.BILINEAR, translate=(9, -6), fillcolor=fill)
        variant = variant.resize((300, 300), Image.BILINEAR)  # the other set's resolution
        relit = np.clip(np.asarray(variant).astype(float) * 0.85 + 12, 0, 255).astype(np.uint8)
        assert grouping.match_score(fp, grouping.fingerprint(relit)) >= grouping.DEFAULT_MATCH_THRESHOLD


def test_ring_centre_at_the_border_and_flat_images_are_fingerprinted():
    """Rings centred on the image's corner put the vote peak at the border (the window there is clipped);
    a flat image has no edges at all. Both used to fail inside the fingerprint."""
    size = grouping.WORK_SIZE
    yy, xx = np.mgrid[:size, :size]
    rings = np.sin(np.hypot(yy - (size - 1), xx - (size - 1)) / 3).astype(np.float32)
    cy, cx = grouping._ring_centre(rings)
    assert cy > size - 6 and cx > size - 6
    with np.errstate(all="raise"):
        assert grouping._ring_centre(np.zeros((size, size), np.float32)) == ((size - 1) / 2, (size - 1) / 2)
    rng = np.random.default_rng(0)
    for gray in (np.full((64, 64), 128, np.uint8), rng.integers(0, 256, (64, 64), dtype=np.uint8)):
        assert np.isfinite(grouping.fingerprint(gray).descriptor).all()
