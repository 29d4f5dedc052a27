"""The Magnetic Tile Defects set (Huang, Qiu and Yuan): ``MT_<Class>/Imgs/<name>.jpg`` beside ``<name>.png``.

``MT_Free`` holds the defect-free tiles (their masks empty); every other
``MT_<Class>`` folder holds defect images of class ``<class>`` (lower case:
blowhole, break, crack, fray, uneven), each with a pixel mask of its own size.
Names are ``exp<k>_num_<n>``: ``exp<k>`` is kept as the capture session (the
audit checks it as a candidate shortcut).

Each tile was photographed under six lightings in a row: ``exp1`` to ``exp6``
are lightings, not sessions of different tiles, and the six images of one
tile carry consecutive capture numbers ``n`` (gaps of about 10-40 between
them, hundreds to the next tile). :func:`capture_series` groups them so that
no tile lies on both sides of a split; the impeller fingerprint of
:mod:`..grouping` finds only some of them (lighting changes defeat it).

Known quirks, each reported, none hidden:

- Masks are not binary: grey levels 0-255 from anti-aliased or lossy drawing.
  A mask pixel is a defect pixel when its grey level is at least
  ``MASK_THRESHOLD`` (128, the middle of the range); one note per source says
  how many masks and pixels held grey levels between 1 and 254.
- A defect image whose mask keeps no pixel at that threshold (4 of
  ``MT_Uneven`` in the published set) is a defect without a region: an error
  finding, so every split leaves it out and the build report says why.
- Image sizes vary and are not square: one note per source gives the range.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np

from ...common.errors import ImpellerBenchError
from ...common.files import sha256_bytes
from ...common.imageio import decode_image, image_pixels, is_image_file
from ..report import ERROR, INFO, Finding
from .records import DEFECT, GOOD, SourceRecord

GOOD_FOLDER = "MT_Free"
FOLDER_PREFIX = "MT_"
MASK_THRESHOLD = 128  # grey level at and above which a mask pixel is a defect pixel
MASK_RULE = f"grey mask thresholded: a pixel is defective when its grey level is at least {MASK_THRESHOLD} of 255"
SESSION = re.compile(r"^(exp\d+)_num_(\d+)$")
# Capture numbers of one tile's six lightings lie 10-40 apart; a gap above this starts the next tile. Chosen
# wide (a tile split in two would put it on both sides of a split; two tiles joined only coarsen the groups):
# gaps above 100 were different tiles in every pair looked at, and 200 joins a few neighbouring tiles more.
CAPTURE_GAP = 200


def is_mtd_layout(root: Path) -> bool:
    return (root / GOOD_FOLDER).is_dir() or any((p / "Imgs").is_dir() for p in root.glob(f"{FOLDER_PREFIX}*"))


def class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.glob(f"{FOLDER_PREFIX}*") if p.is_dir())


def session_of(stem: str) -> str | None:
    """The capture session in an MTD file name (``exp3`` of ``exp3_num_1234``), None for other names."""
    found = SESSION.match(stem)
    return found.group(1) if found else None


def capture_number(stem: str) -> int | None:
    found = SESSION.match(stem)
    return int(found.group(2)) if found else None


def capture_series(stems, source: str) -> list[str | None]:
    """A capture series per file name (stem) of one source: names sorted by capture number, a new series wherever
    the next number is more than CAPTURE_GAP above the last; None for names without a capture number."""
    numbered = sorted((capture_number(stem), k) for k, stem in enumerate(stems) if capture_number(stem) is not None)
    series: list[str | None] = [None] * len(stems)
    previous = first = None
    for number, k in numbered:
        if previous is None or number - previous > CAPTURE_GAP:
            first = number
        previous = number
        series[k] = f"{source}:capture-{first}"
    return series


def threshold_mask(grey: np.ndarray) -> np.ndarray:
    """A grey mask as defect pixels: grey level >= MASK_THRESHOLD."""
    return grey >= MASK_THRESHOLD


def read(root: Path, source: str | None = None):
    """Read a Magnetic Tile Defects folder; returns (records, findings)."""
    root = Path(root)
    source = source or root.name
    if not is_mtd_layout(root):
        raise ImpellerBenchError("not a Magnetic Tile Defects layout (expected MT_Free/Imgs/ and MT_<Class>/Imgs/)",
                                 root)
    records, findings, stems = [], [], []
    grey = {"masks": 0, "masks_with_grey": 0, "grey_pixels": 0, "nonzero_pixels": 0}
    sizes: Counter = Counter()
    for folder in class_folders(root):
        images = folder / "Imgs" if (folder / "Imgs").is_dir() else folder
        defect_class = None if folder.name == GOOD_FOLDER else folder.name[len(FOLDER_PREFIX):].lower()
        for path in sorted(p for p in images.iterdir() if is_image_file(p) and p.suffix.lower() != ".png"):
            stems.append(path.stem)
            record, found, mask_grey = _read_one(root, path, source, defect_class)
            findings += found
            if mask_grey is not None:
                grey["masks"] += 1
                between = int(((mask_grey > 0) & (mask_grey < 255)).sum())
                grey["masks_with_grey"] += between > 0
                grey["grey_pixels"] += between
                grey["nonzero_pixels"] += int((mask_grey > 0).sum())
            if record is not None:
                records.append(record)
                sizes[mask_grey.shape] += 1  # a record's mask was read, at its image's size (scan checks)
    findings += _source_notes(source, grey, list(sizes.elements()))
    # Series over every file name, those refused included, so that a refused image cannot split a tile's series.
    series_of = dict(zip(stems, capture_series(stems, source)))
    for record in records:
        record.capture = series_of[record.stem]
    return records, findings


def _read_one(root: Path, path: Path, source: str, defect_class: str | None):
    """(record or None, findings, the mask's grey levels or None) of one image and its mask."""
    relpath = path.relative_to(root).as_posix()
    where = f"{source}/{relpath}"
    findings: list[Finding] = []
    data = path.read_bytes()
    mask_path = path.with_suffix(".png")
    if not mask_path.is_file():
        return None, [Finding(ERROR, "missing-mask", where, f"no mask {mask_path.relative_to(root).as_posix()}")], None
    try:
        mask_grey = image_pixels(decode_image(mask_path.read_bytes(), mask_path))
    except ImpellerBenchError as exc:
        return None, [Finding(ERROR, "bad-mask", where, str(exc).split(": ", 1)[-1])], None
    if mask_grey.ndim == 3:
        return None, [Finding(ERROR, "bad-mask", where, "mask is a colour image; a grey mask is expected")], None
    mask = threshold_mask(mask_grey)
    if defect_class is None and mask.any():
        findings.append(Finding(ERROR, "mask-on-good-image", where,
                                f"a defect-free ({GOOD_FOLDER}) image's mask has {int(mask.sum())} pixel(s) at or "
                                f"above the threshold {MASK_THRESHOLD}"))
    if defect_class is not None and not mask.any():
        findings.append(Finding(ERROR, "empty-mask", where,
                                f"defect image whose mask keeps no pixel at threshold {MASK_THRESHOLD} (highest grey "
                                f"level {int(mask_grey.max())}): a defect without a region"))
    if any(f.severity == ERROR for f in findings):
        return None, findings, mask_grey
    record = SourceRecord(
        source=source, kind="mtd", relpath=relpath, path=path, label=GOOD if defect_class is None else DEFECT,
        sha256=sha256_bytes(data),
        defect_mask=None if defect_class is None else mask,
        defect_classes=() if defect_class is None else (defect_class,),
        class_masks=None if defect_class is None else {defect_class: mask},  # one class per MTD folder
        session=session_of(path.stem),
    )
    return record, findings, mask_grey


def _source_notes(source: str, grey: dict, shapes: list[tuple[int, int]]) -> list[Finding]:
    notes = []
    if grey["masks_with_grey"]:
        share = grey["grey_pixels"] / max(grey["nonzero_pixels"], 1)
        notes.append(Finding(INFO, "mask-grey-levels", source,
                             f"{grey['masks_with_grey']} of {grey['masks']} masks hold grey levels between 1 and 254: "
                             f"{grey['grey_pixels']:,} pixels, {100 * share:.1f}% of the non-zero mask pixels; "
                             f"thresholded at {MASK_THRESHOLD} ({MASK_RULE})"))
    if len(set(shapes)) > 1:
        heights, widths = zip(*shapes)
        square = sum(h == w for h, w in shapes)
        notes.append(Finding(INFO, "image-sizes", source,
                             f"image sizes vary: {min(widths)}-{max(widths)} px wide, {min(heights)}-{max(heights)} px "
                             f"tall, {len(shapes) - square} of the {len(shapes)} images read not square (kept on disk "
                             "at their own size; detectors see them resized, maps are scored at each mask's size)"))
    return notes
