"""Every encoding an image or mask file may use is read as a viewer shows it, or refused in one line naming the file.

The table writes each encoding with Pillow into a small synthetic file and
states what reading it gives: the exact array (within JPEG error where the
file is lossy), or the refusal. The expected turns of the EXIF orientations
are written from the EXIF specification, not from Pillow's implementation.
"""

import numpy as np
import pytest
from PIL import Image

from impeller_bench.common.errors import ImpellerBenchError
from impeller_bench.common.imageio import encode_png, read_gray, read_image, read_mask
from impeller_bench.data import build, scanning
from impeller_bench.data.dataset import load_dataset
from impeller_bench.data.synth import write_synthetic

# A non-square, smooth grey picture (smooth so that JPEG keeps it within a few levels), and a mask.
PICTURE = (np.add.outer(np.arange(8) * 12, np.arange(16) * 9) + 20).astype(np.uint8)  # 8 x 16, 20..239
MASK = np.zeros((16, 16), np.uint8)
MASK[:8, 8:] = 255  # whole 8 x 8 JPEG blocks: a JPEG of it decodes to exactly 0 and 255
# What a viewer shows for a stored array under each EXIF orientation (EXIF 2.3, tag 0x0112).
SHOWN = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1, :],
    5: lambda a: a.T,
    6: lambda a: np.rot90(a, -1),  # stored turned 90 degrees counter-clockwise: shown turned clockwise
    7: lambda a: np.rot90(a, 2).T,
    8: lambda a: np.rot90(a, 1),
}
SIXTEEN_BIT = np.array([[0, 255, 256, 4095], [4096, 32768, 65280, 65535]], np.uint16)


def save(image: Image.Image, fmt: str, **options):
    """A writer for the table: saves ``image`` as ``fmt`` into the path it is given."""
    return lambda path: image.save(path, fmt, **options)


def with_orientation(array: np.ndarray, orientation: int, fmt: str = "PNG", **options):
    exif = Image.Exif()
    exif[0x0112] = orientation
    return save(Image.fromarray(array), fmt, exif=exif, **options)


def rgba(grey: np.ndarray, alpha: np.ndarray) -> Image.Image:
    return Image.fromarray(np.dstack([grey, grey, grey, alpha]), "RGBA")


def palette(grey: np.ndarray) -> Image.Image:
    """A "P" image whose palette entry k is the grey level k."""
    image = Image.fromarray(grey, "L").convert("P")
    image.putpalette([v for k in range(256) for v in (k, k, k)])
    return image


def several(fmt: str):
    frames = [Image.fromarray(PICTURE), Image.fromarray(255 - PICTURE)]
    return save(frames[0], fmt, save_all=True, append_images=frames[1:])


def truncated(path):
    """Half of a PNG of noise (the compressed pixels cut short)."""
    noise = np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)
    data = encode_png(noise)
    path.write_bytes(data[: len(data) // 2])


class Refused(tuple):
    """Expected refusal: the words its one-line message holds."""


class Near(tuple):
    """Expected (array, tolerance) for a lossy file."""


def refused(*words):
    return Refused(words)


def near(array, tolerance):
    return Near((array, tolerance))


opaque = np.full(PICTURE.shape, 255, np.uint8)
half_see_through = opaque.copy()
half_see_through[:, :4] = 128
colour_key = PICTURE.copy()
colour_key[0, 0] = 7  # the one pixel a colour key of 7 makes transparent
deep_expected = (SIXTEEN_BIT >> 8).astype(np.uint8)
grey_rgb = np.dstack([PICTURE] * 3)
binary = MASK == 255

# (name, role, writer, suffix, expected): role "gray" reads with read_gray, "image" with read_image, "mask"
# with read_mask; expected is an array, near(array, tolerance) for lossy files, or refused(words in the message).
ENCODINGS = [
    # EXIF orientation: applied, as viewers do, to images and masks alike.
    *[(f"orientation-{o}-png", "gray", with_orientation(PICTURE, o), ".png", SHOWN[o](PICTURE)) for o in range(1, 9)],
    *[(f"orientation-{o}-jpeg", "gray", with_orientation(PICTURE, o, "JPEG", quality=95), ".jpg",
       near(SHOWN[o](PICTURE), 4)) for o in (3, 6, 8)],
    ("orientation-6-tiff", "gray", save(Image.fromarray(PICTURE), "TIFF", tiffinfo={274: 6}), ".tif",
     SHOWN[6](PICTURE)),
    ("orientation-0-invalid-no-turn", "gray", with_orientation(PICTURE, 0), ".png", PICTURE),
    ("orientation-9-invalid-no-turn", "gray", with_orientation(PICTURE, 9), ".png", PICTURE),
    *[(f"mask-orientation-{o}-png", "mask", with_orientation(MASK, o), ".png", SHOWN[o](binary)) for o in (2, 5, 6, 7)],
    ("mask-orientation-6-jpeg", "mask", with_orientation(MASK, 6, "JPEG", quality=95), ".jpg", SHOWN[6](binary)),
    # Plain encodings.
    ("grey-png", "gray", save(Image.fromarray(PICTURE), "PNG"), ".png", PICTURE),
    ("grey-bmp", "image", save(Image.fromarray(PICTURE), "BMP"), ".bmp", PICTURE),
    ("grey-jpeg", "image", save(Image.fromarray(PICTURE), "JPEG", quality=95), ".jpg", near(PICTURE, 4)),
    ("rgb-png-as-image", "image", save(Image.fromarray(grey_rgb), "PNG"), ".png", grey_rgb),
    ("rgb-png-as-gray", "gray", save(Image.fromarray(grey_rgb), "PNG"), ".png", PICTURE),
    ("bilevel-png", "image", save(Image.fromarray(MASK).convert("1"), "PNG"), ".png", MASK),
    ("palette-png-as-image", "image", save(palette(PICTURE), "PNG"), ".png", grey_rgb),
    ("palette-png-as-gray", "gray", save(palette(PICTURE), "PNG"), ".png", PICTURE),
    ("mpo-two-pictures-reads-the-first", "gray", several("MPO"), ".jpg", near(PICTURE, 4)),
    # Transparency: fully opaque reads (the alpha dropped); any see-through pixel is refused.
    ("rgba-opaque", "image", save(rgba(PICTURE, opaque), "PNG"), ".png", grey_rgb),
    ("rgba-translucent", "gray", save(rgba(PICTURE, half_see_through), "PNG"), ".png",
     refused("32 of 128 pixels are transparent or translucent")),
    ("grey-alpha-opaque", "gray", save(Image.fromarray(np.dstack([PICTURE, opaque]), "LA"), "PNG"), ".png", PICTURE),
    ("grey-alpha-translucent", "image", save(Image.fromarray(np.dstack([PICTURE, half_see_through]), "LA"), "PNG"),
     ".png", refused("transparent or translucent")),
    ("palette-transparency-unused", "gray", save(palette(PICTURE), "PNG", transparency=1), ".png", PICTURE),
    ("palette-transparency-used", "gray", save(palette(PICTURE), "PNG", transparency=20), ".png",
     refused("1 of 128 pixels are transparent")),
    ("grey-colour-key-used", "gray", save(Image.fromarray(colour_key), "PNG", transparency=7), ".png",
     refused("1 of 128 pixels are transparent")),
    ("rgb-colour-key-used", "image", save(Image.fromarray(np.dstack([colour_key] * 3)), "PNG", transparency=(7, 7, 7)),
     ".png", refused("1 of 128 pixels are transparent")),
    ("grey-colour-key-unused", "gray", save(Image.fromarray(PICTURE), "PNG", transparency=7), ".png", PICTURE),
    # 16-bit grey: scaled by the full range (value >> 8), not clipped at 255.
    ("16-bit-png", "gray", save(Image.fromarray(SIXTEEN_BIT), "PNG"), ".png", deep_expected),
    ("16-bit-png-as-image", "image", save(Image.fromarray(SIXTEEN_BIT), "PNG"), ".png", deep_expected),
    ("16-bit-tiff-little-endian", "gray", save(Image.fromarray(SIXTEEN_BIT), "TIFF"), ".tif", deep_expected),
    ("16-bit-tiff-big-endian", "gray", save(Image.fromarray(SIXTEEN_BIT.astype(">u2")), "TIFF"), ".tif",
     deep_expected),
    # Refused modes and files.
    ("32-bit-integer-tiff", "gray", save(Image.fromarray(SIXTEEN_BIT.astype(np.int32)), "TIFF"), ".tif",
     refused("32-bit or signed integer pixels are not read")),
    ("float-tiff", "image", save(Image.fromarray(PICTURE.astype(np.float32)), "TIFF"), ".tif",
     refused("floating-point pixels are not read")),
    ("cmyk-jpeg", "gray", save(Image.fromarray(grey_rgb).convert("CMYK"), "JPEG"), ".jpg",
     refused("CMYK colour is not read")),
    ("cmyk-tiff", "image", save(Image.fromarray(grey_rgb).convert("CMYK"), "TIFF"), ".tif",
     refused("CMYK colour is not read")),
    ("ycbcr-tiff", "gray", save(Image.fromarray(grey_rgb).convert("YCbCr"), "TIFF"), ".tif",
     refused("pixel mode YCbCr is not read")),
    ("lab-tiff", "gray", save(Image.fromarray(grey_rgb).convert("LAB"), "TIFF"), ".tif",
     refused("pixel mode LAB is not read")),
    ("two-page-tiff", "gray", several("TIFF"), ".tif", refused("holds 2 pictures")),
    ("animated-png", "gray", several("PNG"), ".png", refused("holds 2 pictures")),
    ("truncated-png", "gray", truncated, ".png", refused("unreadable or truncated image")),
    # Masks: 0 is good, 255 defect, as before; other grey levels are refused.
    ("mask-grey-png", "mask", save(Image.fromarray(MASK), "PNG"), ".png", binary),
    ("mask-bilevel-png", "mask", save(Image.fromarray(MASK).convert("1"), "PNG"), ".png", binary),
    ("mask-bilevel-bmp", "mask", save(Image.fromarray(MASK).convert("1"), "BMP"), ".bmp", binary),
    ("mask-grey-levels", "mask", save(Image.fromarray(MASK // 2), "PNG"), ".png",
     refused("mask is not binary: values [0, 127]")),
    ("mask-white-on-black-rgb", "mask", save(Image.fromarray(np.dstack([MASK] * 3)), "PNG"), ".png", binary),
    ("mask-red-on-black-rgb", "mask", save(Image.fromarray(np.dstack([MASK, 0 * MASK, 0 * MASK])), "PNG"), ".png",
     refused("mask is not binary: values [0, 76]")),
    ("mask-palette", "mask", save(palette(MASK), "PNG"), ".png", binary),
    ("mask-palette-transparency-unused", "mask", save(palette(MASK), "PNG", transparency=9), ".png", binary),
    ("mask-palette-transparent-background", "mask", save(palette(MASK), "PNG", transparency=0), ".png",
     refused("192 of 256 pixels are transparent")),
    ("mask-rgba-opaque", "mask", save(rgba(MASK, np.full(MASK.shape, 255, np.uint8)), "PNG"), ".png", binary),
    ("mask-rgba-alpha-only", "mask", save(rgba(np.full(MASK.shape, 255, np.uint8), MASK), "PNG"), ".png",
     refused("192 of 256 pixels are transparent")),
    ("mask-grey-alpha-opaque", "mask", save(Image.fromarray(np.dstack([MASK, 255 + 0 * MASK]), "LA"), "PNG"), ".png",
     binary),
    ("mask-16-bit-full-range-png", "mask", save(Image.fromarray(MASK.astype(np.uint16) * 257), "PNG"), ".png", binary),
    ("mask-16-bit-0-255-png", "mask", save(Image.fromarray(MASK.astype(np.uint16)), "PNG"), ".png", binary),
    ("mask-16-bit-full-range-tiff", "mask", save(Image.fromarray(MASK.astype(np.uint16) * 257), "TIFF"), ".tif",
     binary),
    ("mask-16-bit-low-level", "mask", save(Image.fromarray((MASK // 255).astype(np.uint16) * 100), "PNG"), ".png",
     refused("mask is not binary: values [0, 100]")),
    ("mask-jpeg-exact", "mask", save(Image.fromarray(MASK), "JPEG", quality=95), ".jpg", binary),
    ("mask-jpeg-lossy-edges", "mask", save(Image.fromarray(np.roll(MASK, 3, axis=1)), "JPEG", quality=90), ".jpg",
     refused("mask is not binary", "(JPEG is lossy: save masks as PNG)")),
    ("mask-cmyk-jpeg", "mask", save(Image.fromarray(np.dstack([MASK] * 3)).convert("CMYK"), "JPEG"), ".jpg",
     refused("CMYK colour is not read")),
]
READERS = {"gray": read_gray, "image": read_image, "mask": read_mask}


@pytest.mark.parametrize("name,role,write,suffix,expected", ENCODINGS, ids=[row[0] for row in ENCODINGS])
def test_encoding_is_read_as_shown_or_refused_in_one_line(tmp_path, name, role, write, suffix, expected):
    path = tmp_path / f"{name}{suffix}"
    write(path)
    read = READERS[role]
    if isinstance(expected, Refused):
        with pytest.raises(ImpellerBenchError) as info:
            read(path)
        message = str(info.value)
        assert message.startswith(f"{path}: ") and "\n" not in message, message
        for words in expected:
            assert words in message, message
        return
    array, tolerance = expected if isinstance(expected, Near) else (expected, 0)
    got = read(path)
    assert got.dtype == array.dtype and got.shape == array.shape, (got.dtype, got.shape)
    if tolerance:
        assert np.abs(got.astype(int) - array.astype(int)).max() <= tolerance
    else:
        np.testing.assert_array_equal(got, array)


def test_refused_source_image_is_a_scan_finding(tmp_path):
    """A refused encoding in a source is a finding of the build report, naming the file and the problem."""
    root = tmp_path / "src"
    write_synthetic(root, train_good=2, test_good=1, test_defect=0, size=32, seed=0)
    rgba(np.full((32, 32), 90, np.uint8), np.full((32, 32), 0, np.uint8)).save(root / "train" / "good" / "clear.png")
    records, findings = build.read_sources(mvtec=[root])
    _, scan_findings = scanning.scan(records)
    (finding,) = [f for f in scan_findings if f.path.endswith("clear.png")]
    assert finding.code == "unreadable-image" and "1024 of 1024 pixels are transparent" in finding.message


# The reported case: a 64 x 64 defect JPEG stored turned, with EXIF orientation 6, and its mask drawn upright.
PAINTED, BACKGROUND = 255, 60
TOP, BOTTOM, LEFT, RIGHT = 8, 24, 36, 56  # the painted defect, upright; even edges, so halving keeps it whole


@pytest.fixture(scope="module")
def turned_jpeg_source(tmp_path_factory):
    """An MVTec-layout source: synthetic goods, and one defect JPEG stored turned (orientation 6) with an upright mask."""
    root = tmp_path_factory.mktemp("turned") / "source"
    write_synthetic(root, train_good=6, test_good=3, test_defect=0, size=64, seed=5)
    upright = np.full((64, 64), BACKGROUND, np.uint8)
    upright[TOP:BOTTOM, LEFT:RIGHT] = PAINTED
    mask = np.zeros((64, 64), bool)
    mask[TOP:BOTTOM, LEFT:RIGHT] = True
    (root / "test" / "scratch").mkdir(parents=True)
    (root / "ground_truth" / "scratch").mkdir(parents=True)
    stored = np.rot90(upright, 1)  # a camera held on its side: the viewer turns it back clockwise
    assert stored[mask].mean() == BACKGROUND  # unturned, the mask would lie on the background
    with_orientation(stored.copy(), 6, "JPEG", quality=95)(root / "test" / "scratch" / "turned.jpg")
    (root / "ground_truth" / "scratch" / "turned_mask.png").write_bytes(encode_png(mask))
    return root


@pytest.mark.parametrize("size", ["native", 32])
def test_exif_turned_defect_jpeg_is_built_upright(turned_jpeg_source, tmp_path, size):
    build.build_split(tmp_path / "built", mvtec=[turned_jpeg_source], counts=scanning.Counts(4, 2, 1), size=size, seed=0,
                      register=False, audit=False, balance=False)
    (defect,) = [s for s in load_dataset(tmp_path / "built").test if s.is_defect]
    image, mask = defect.load_image(), defect.load_mask()
    side = 64 if size == "native" else 32
    assert image.shape == mask.shape == (side, side)
    assert mask.sum() == (BOTTOM - TOP) * (RIGHT - LEFT) * (side / 64) ** 2
    assert abs(image[mask].mean() - PAINTED) <= 2  # within JPEG error; unturned it would be the background, 60
    assert abs(image[~mask].mean() - BACKGROUND) <= 2
    # what tools that ignore EXIF see: the written file itself is upright, not only our reading of it
    with Image.open(defect.image_path) as written:
        assert "exif" not in written.info or written.getexif().get(0x0112, 1) == 1
        plain = np.asarray(written.convert("L"))
    assert abs(plain[mask].mean() - PAINTED) <= 2
