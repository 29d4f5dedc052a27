import numpy as np
import pytest

from impeller_bench.common.errors import ImpellerBenchError
from impeller_bench.common.files import staged_directory
from impeller_bench.common.imageio import (
    encode_png,
    read_gray,
    read_mask,
    resize_mask_area,
)


def brute_force_half_area_rule(mask: np.ndarray, size: int) -> np.ndarray:
    """Each target pixel covers a (H/size) x (W/size) box of the source; defective when >= half its area was."""
    h, w = mask.shape
    out = np.zeros((size, size), bool)
    for ty in range(size):
        for tx in range(size):
            y0, y1 = ty * h / size, (ty + 1) * h / size
            x0, x1 = tx * w / size, (tx + 1) * w / size
            area = 0.0
            for sy in range(int(np.floor(y0)), int(np.ceil(y1))):
                for sx in range(int(np.floor(x0)), int(np.ceil(x1))):
                    oy = min(y1, sy + 1) - max(y0, sy)
                    ox = min(x1, sx + 1) - max(x0, sx)
                    area += oy * ox * mask[sy, sx]
            out[ty, tx] = area >= 0.5 * (y1 - y0) * (x1 - x0) - 1e-9
    return out


@pytest.mark.parametrize("source,size", [(20, 10), (15, 6), (12, 8), (9, 9)])
def test_mask_resize_follows_the_half_area_rule(source, size):
    rng = np.random.default_rng(source)
    for _ in range(5):
        mask = rng.random((source, source)) < rng.uniform(0.2, 0.8)
        np.testing.assert_array_equal(resize_mask_area(mask, size), brute_force_half_area_rule(mask, size))


def test_exact_half_counts_as_defective():
    mask = np.zeros((4, 4), bool)
    mask[:, :1] = True  # left target pixel of a 2x2 result: half its 2x2 box is defect
    mask[:1, 1] = True
    assert resize_mask_area(mask, 2)[0, 0]
    assert not resize_mask_area(mask, 2)[1, 1]


def test_truncated_image_is_one_clear_error(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(encode_png(np.full((64, 64), 100, np.uint8))[:40])
    with pytest.raises(ImpellerBenchError) as info:
        read_gray(path)
    assert "broken.png" in str(info.value) and "unreadable" in str(info.value)


def test_non_binary_mask_is_refused(tmp_path):
    path = tmp_path / "m_mask.png"
    path.write_bytes(encode_png(np.array([[0, 128], [255, 0]], np.uint8)))
    with pytest.raises(ImpellerBenchError, match="not binary"):
        read_mask(path)


def test_png_encoding_is_deterministic():
    a = np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)
    assert encode_png(a) == encode_png(a.copy())


def test_staged_directory_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with staged_directory(out) as stage:
            (stage / "half.txt").write_text("x")
            raise RuntimeError("interrupted")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_staged_directory_refuses_to_clobber(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ImpellerBenchError, match="overwrite"):
        with staged_directory(out):
            pass
    with staged_directory(out, overwrite=True) as stage:
        (stage / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]


def test_image_resize_is_the_area_mean():
    from impeller_bench.common.imageio import resize_area

    image = np.random.default_rng(1).integers(0, 256, (300, 300)).astype(np.uint8)
    out = resize_area(image, 256)
    # Brute force for a few target pixels: the coverage-weighted mean of the source box.
    for ty, tx in [(0, 0), (17, 200), (255, 255), (128, 3)]:
        expected = brute_force_weighted_mean(image, ty, tx, 256)
        assert abs(int(out[ty, tx]) - expected) <= 0.5 + 1e-9
    halves = np.random.default_rng(2).integers(0, 256, (64, 64)).astype(np.uint8)
    np.testing.assert_array_equal(resize_area(halves, 32), np.rint(halves.reshape(32, 2, 32, 2).mean(axis=(1, 3))))


def brute_force_weighted_mean(image, ty, tx, size):
    h, w = image.shape
    y0, y1, x0, x1 = ty * h / size, (ty + 1) * h / size, tx * w / size, (tx + 1) * w / size
    total = weight = 0.0
    for sy in range(int(np.floor(y0)), int(np.ceil(y1))):
        for sx in range(int(np.floor(x0)), int(np.ceil(x1))):
            a = (min(y1, sy + 1) - max(y0, sy)) * (min(x1, sx + 1) - max(x0, sx))
            total += a * image[sy, sx]
            weight += a
    return total / weight
