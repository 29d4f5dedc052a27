"""Reading images and masks (checked, upright, deterministic) and resampling them by area."""
from __future__ import annotations

import io
import math
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImpellerBenchError

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".tif", ".tiff")


# Pixel modes that are read, grouped by how. "I" counts as 16-bit grey only in a PNG (older Pillows
# decode 16-bit grey PNGs so); elsewhere it is 32-bit or signed integer, whose brightness viewers disagree on.
GREY_MODES = ("1", "L")


COLOUR_MODES = ("P", "RGB")


DEEP_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


# Modes with an alpha band -> the mode they read as once the (fully opaque) alpha is dropped.
ALPHA_MODES = {"LA": "L", "PA": "RGB", "RGBA": "RGB"}


READ_MODES = GREY_MODES + COLOUR_MODES + DEEP_GREY_MODES + tuple(ALPHA_MODES)


REFUSED_MODES = {
    "CMYK": "CMYK colour is not read: how it looks depends on a colour profile (save it as RGB or grey)",
    "I": "32-bit or signed integer pixels are not read: viewers disagree on their brightness "
         "(save it as 8- or 16-bit grey)",
    "F": "floating-point pixels are not read: viewers disagree on their brightness (save it as 8- or 16-bit grey)",
}


def decode_upright(data: bytes, path: str | Path | None) -> Image.Image:
    """The one picture of a file, fully decoded and turned upright, its pixels in the file's own mode.

    A truncated or unidentifiable file fails here, not later. The EXIF
    orientation (tags 1-8, in JPEG, PNG, WebP and TIFF files) is applied, as
    viewers do, so a photo and a mask drawn on it as shown line up; other
    values mean no turn. A file of several pictures (pages, animation frames)
    is refused, as which one a viewer shows varies; only a JPEG's MPO extras
    (previews, depth maps) are left aside, its first picture being the photo.
    """
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        reason = re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(exc))  # the path is named already
        raise ImpellerBenchError(f"unreadable or truncated image ({reason})", path) from exc
    frames = getattr(image, "n_frames", 1)
    if frames > 1 and image.format != "MPO":
        raise ImpellerBenchError(f"holds {frames} pictures (pages or animation frames); expected one", path)
    return image


def decode_image(data: bytes, path: str | Path) -> Image.Image:
    """An image or mask file as a viewer shows it, or one error naming the file.

    Upright (:func:`decode_upright`) and opaque (:func:`_drop_opaque_alpha`),
    in mode "1", "L", "P", "RGB", or 16-bit grey (:data:`DEEP_GREY_MODES`,
    or "I" from a PNG). CMYK, 32-bit integer, floating-point and other pixel
    modes are refused (:data:`REFUSED_MODES`). Colour profiles are ignored:
    pixels are read as sRGB.
    """
    image = decode_upright(data, path)
    if image.mode not in READ_MODES and not _is_png_16bit_grey(image):
        reason = REFUSED_MODES.get(image.mode, f"pixel mode {image.mode} is not read "
                                               "(grey, 16-bit grey, palette and RGB are)")
        raise ImpellerBenchError(reason, path)
    return _drop_opaque_alpha(image, path)


def _is_png_16bit_grey(image: Image.Image) -> bool:
    return image.mode == "I" and image.format == "PNG"


def _drop_opaque_alpha(image: Image.Image, path: str | Path) -> Image.Image:
    """The image without its transparency, which must be fully opaque; any see-through pixel is refused.

    Transparency is an alpha band, a palette's transparent entries or a PNG
    colour key. A viewer shows a see-through pixel over a background of its
    own (white, black, a checkerboard), so neither its grey level nor, in a
    mask, its label is defined: refused rather than guessed.
    """
    if image.mode in ALPHA_MODES:
        alpha, opaque_mode = image.getchannel("A"), ALPHA_MODES[image.mode]
    elif "transparency" in image.info:
        alpha, opaque_mode = image.convert("RGBA").getchannel("A"), image.mode
    else:
        return image
    see_through = int(np.count_nonzero(np.asarray(alpha) < 255))
    if see_through:
        raise ImpellerBenchError(
            f"{see_through} of {alpha.width * alpha.height} pixels are transparent or translucent: what a viewer "
            "shows there depends on its background (save it without transparency)", path)
    if opaque_mode != image.mode:
        return image.convert(opaque_mode)
    del image.info["transparency"]  # declared but used by no pixel
    return image


def image_pixels(image: Image.Image) -> np.ndarray:
    """A decoded image's pixels (:func:`decode_image`): 2-D uint8 for grey, H x W x 3 uint8 RGB for colour.

    Bilevel images read as 0/255 grey and palette images as RGB. 16-bit grey
    is scaled by its full range (value >> 8: 65535 -> 255), as a viewer maps
    it to the screen, not clipped at 255.
    """
    if image.mode in DEEP_GREY_MODES or _is_png_16bit_grey(image):
        return (np.asarray(image).astype(np.uint32) >> 8).astype(np.uint8)
    return np.asarray(image.convert("L" if image.mode in GREY_MODES else "RGB"))


def decode_gray(data: bytes, path: str | Path) -> np.ndarray:
    """A photo's bytes as a 2-D uint8 array (colour to grey by ITU-R 601 luma; the casting photos are grey)."""
    pixels = image_pixels(decode_image(data, path))
    return pixels if pixels.ndim == 2 else np.asarray(Image.fromarray(pixels).convert("L"))


ORIENTATION_TAG = 0x0112


def upright_file_bytes(data: bytes, path: str | Path) -> tuple[bytes, str | None]:
    """A photo file's bytes to copy as they are, unless an EXIF orientation turns it: then its upright
    pixels as PNG (and the suffix ".png"), so that tools that ignore EXIF see what a viewer shows."""
    try:
        with Image.open(io.BytesIO(data)) as stored:  # the header only: most files are copied undecoded
            turned = stored.getexif().get(ORIENTATION_TAG, 1) in range(2, 9)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImpellerBenchError(f"unreadable or truncated image ({exc})", path) from exc
    return (encode_png(image_pixels(decode_image(data, path))), ".png") if turned else (data, None)


def read_file(path: str | Path) -> bytes:
    """A file's bytes, or one ImpellerBenchError saying why not (permissions, gone since it was listed, a link
    to nothing, a folder)."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        gone = "a link to a file that does not exist" if Path(path).is_symlink() else "no such file (removed?)"
        raise ImpellerBenchError(gone, path) from None
    except PermissionError:
        raise ImpellerBenchError("permission denied", path) from None
    except OSError as exc:
        raise ImpellerBenchError(f"cannot be read ({exc.strerror or exc})", path) from None


def read_gray(path: str | Path) -> np.ndarray:
    """A photo as a 2-D uint8 array, as a viewer shows it (:func:`decode_gray`)."""
    return decode_gray(read_file(path), path)


def read_image(path: str | Path) -> np.ndarray:
    """An image as a viewer shows it (:func:`image_pixels`): 2-D uint8 for grey, H x W x 3 uint8 otherwise."""
    return image_pixels(decode_image(read_file(path), path))


def read_mask(path: str | Path) -> np.ndarray:
    """A binary mask as a boolean array (True: defect); anything else is one error naming the file.

    Read as a viewer shows it (:func:`decode_image`: upright, opaque). A
    bilevel ("1") mask's set pixels are defect. Any other mask is read as
    8-bit grey and must hold only 0 (good) and 255 (defect): colour and
    palette masks by their grey level; 16-bit masks clipped at 255, as they
    always were (0 good, 255 and above defect, so 0/65535 and 0/255 both
    read). A JPEG mask is lossy: it reads only where it decodes to exactly
    0 and 255.
    """
    return mask_pixels(decode_image(read_file(path), path), path)


def mask_pixels(image: Image.Image, path: str | Path) -> np.ndarray:
    """The rule of :func:`read_mask` on a decoded mask."""
    if image.mode == "1":
        return np.asarray(image)
    values = np.asarray(image if image.mode == "L" else image.convert("L"))
    if not np.isin(values, (0, 255)).all():
        found = np.unique(values)
        hint = " (JPEG is lossy: save masks as PNG)" if image.format in ("JPEG", "MPO") else ""
        raise ImpellerBenchError(f"mask is not binary: values {found[:8].tolist()} (expected 0 and 255){hint}", path)
    return values == 255


def read_npy(path: str | Path, max_bytes: int = 1 << 30) -> np.ndarray:
    """One plain array from a ``.npy`` file, judged by its content, not its name: an ``.npz`` archive (a zip, a
    zip bomb) or any other file is refused before anything is unpacked, as are object arrays (pickles) and a
    header that claims more than ``max_bytes`` of data; one ImpellerBenchError naming the file either way."""
    try:
        with open(path, "rb") as f:
            try:
                version = np.lib.format.read_magic(f)
            except ValueError:
                raise ImpellerBenchError("not a .npy array file (an .npz archive, a zip or something else: "
                                         "one plain array saved with numpy.save is expected)", path) from None
            header = (np.lib.format.read_array_header_1_0 if version == (1, 0) else
                      np.lib.format.read_array_header_2_0)
            shape, _, dtype = header(f)
            if dtype.hasobject:
                raise ImpellerBenchError("an object array (pickled Python objects) is refused", path)
            claimed = math.prod(shape) * dtype.itemsize  # Python integers: no overflow, whatever it claims
            if claimed > max_bytes:
                raise ImpellerBenchError(f"its header claims {claimed:,} bytes of data, more than {max_bytes:,}", path)
            f.seek(0)
            array = np.lib.format.read_array(f, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ImpellerBenchError(f"cannot read the array ({exc})", path) from None
    return array


def encode_png(array: np.ndarray) -> bytes:
    """Deterministic PNG bytes (no timestamps or metadata) for a uint8 or bool array."""
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def area_weights(source: int, target: int) -> np.ndarray:
    """(target x source) matrix: the fraction of each target cell covered by each source pixel.

    Target cell t spans [t * source / target, (t + 1) * source / target) in
    source pixel units; each row sums to 1. Exact for any ratio (Pillow's box
    filter samples pixel centres instead, which is only exact for whole ratios).
    """
    edges = np.arange(target + 1) * (source / target)
    lo, hi = edges[:-1, None], edges[1:, None]
    pixels = np.arange(source)[None, :]
    overlap = np.clip(np.minimum(hi, pixels + 1) - np.maximum(lo, pixels), 0, None)
    return overlap / (source / target)


def area_average(array: np.ndarray, size: int) -> np.ndarray:
    """Float64 area average of a 2-D array over a size x size grid (for a mask: the covered fraction)."""
    h, w = array.shape
    return area_weights(h, size) @ array.astype(np.float64) @ area_weights(w, size).T


def resize_area(gray: np.ndarray, size: int) -> np.ndarray:
    """Area-averaging resample of a 2-D uint8 image to size x size (rounded to the nearest level)."""
    if gray.shape[:2] == (size, size):
        return gray
    return np.clip(np.rint(area_average(gray, size)), 0, 255).astype(np.uint8)


def resize_mask_area(mask: np.ndarray, size: int) -> np.ndarray:
    """A target pixel is defective when at least half of its area was defective."""
    if mask.shape == (size, size):
        return mask
    # Tolerance for an exact half computed in floating point.
    return area_average(mask, size) >= 0.5 - 1e-9


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
