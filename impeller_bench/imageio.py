"""Reading and writing images, masks and files: checked, deterministic, atomic."""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import ImpellerBenchError

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".tif", ".tiff")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def decode_image(data: bytes, path: str | Path) -> Image.Image:
    """Decode fully (a truncated file fails here, not later), or raise naming the file."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImpellerBenchError(f"unreadable or truncated image ({exc})", path) from exc
    return image


def read_gray(path: str | Path) -> np.ndarray:
    """A photo as a 2-D uint8 array. The casting photos are grey (R = G = B)."""
    return np.asarray(decode_image(Path(path).read_bytes(), path).convert("L"))


def read_image(path: str | Path) -> np.ndarray:
    """An image as stored: 2-D uint8 for grey images, H x W x 3 uint8 otherwise."""
    image = decode_image(Path(path).read_bytes(), path)
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    return np.asarray(image)


def read_mask(path: str | Path) -> np.ndarray:
    """A 0/255 mask PNG as a boolean array; anything else is an error naming the file."""
    image = decode_image(Path(path).read_bytes(), path)
    values = np.asarray(image.convert("L") if image.mode not in ("L", "1") else image)
    if values.dtype == bool:
        return values
    if not np.isin(values, (0, 255)).all():
        found = np.unique(values)
        raise ImpellerBenchError(f"mask is not binary: values {found[:8].tolist()} (expected 0 and 255)", path)
    return values == 255


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


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write through a temporary file in the same folder, then rename over the target."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def staged_directory(out: str | Path, overwrite: bool = False):
    """Yield a fresh folder that becomes ``out`` only if the block completes.

    On any error or interrupt the staging folder is removed and ``out`` is left
    as it was. An existing non-empty ``out`` is replaced only with ``overwrite``.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ImpellerBenchError("output folder exists and is not empty (use --overwrite to replace it)", out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        yield stage
        if out.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, retired / "old")
            os.replace(stage, out)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
