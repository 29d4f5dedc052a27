"""Supervisely project folder: ``img/<image>`` with ``ann/<image>.json``.

Each annotation object with ``geometryType == "bitmap"`` holds ``bitmap.data``,
base64 of a zlib-compressed PNG whose alpha channel (or single channel) is the
object's mask, placed with its top-left corner at ``bitmap.origin`` = [x, y].
Defect classes are unioned into one mask; ``disk`` (the part's outline) is the
foreground. The file name (``cast_def_*``/``cast_ok_*``) and the tags
(``good``/``bad``) are checked against the objects, and every disagreement is
reported: the label of a record is what its objects show.
"""
from __future__ import annotations

import base64
import binascii
import json
import zlib
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from ...common.errors import ImpellerBenchError
from ...common.files import sha256_bytes
from ...common.imageio import decode_image, decode_upright, is_image_file
from ..report import ERROR, INFO, WARNING, Finding
from .records import DEFECT, GOOD, SourceRecord

DEFAULT_DEFECT_CLASSES = ("holes", "chipping", "deburring")
FOREGROUND_CLASS = "disk"
DEFAULT_MIN_REGION_AREA = 16
_LABEL_OF_TAG = {"good": GOOD, "bad": DEFECT}


def decode_bitmap(data: str) -> np.ndarray:
    """Boolean mask of one Supervisely bitmap (alpha channel, else the single channel).

    Decoded as every image is (:func:`impeller_bench.common.imageio.decode_upright`), but its
    transparency is kept: in this format the alpha is the mask.
    """
    try:
        image = decode_upright(zlib.decompress(base64.b64decode(data, validate=False)), None)
    except (binascii.Error, zlib.error, ValueError, ImpellerBenchError) as exc:
        raise ValueError(f"bitmap cannot be decoded ({exc})") from exc
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        return np.asarray(image.convert("RGBA"))[..., 3] > 0
    return np.asarray(image.convert("L")) > 0


def label_from_name(name: str) -> str | None:
    if name.startswith("cast_def"):
        return DEFECT
    if name.startswith("cast_ok"):
        return GOOD
    return None


def read(
    root: Path,
    defect_classes=DEFAULT_DEFECT_CLASSES,
    min_region_area: int = DEFAULT_MIN_REGION_AREA,
    source: str | None = None,
):
    """Read a Supervisely folder; returns (records, findings)."""
    root = Path(root)
    source = source or root.name
    if not (root / "img").is_dir() or not (root / "ann").is_dir():
        raise ImpellerBenchError("not a Supervisely project folder (expected img/ and ann/)", root)
    defect_classes = tuple(defect_classes)
    records: list[SourceRecord] = []
    findings: list[Finding] = []
    for image_path in sorted(p for p in (root / "img").iterdir() if is_image_file(p)):
        relpath = image_path.relative_to(root).as_posix()
        record, found = _read_one(root, image_path, relpath, source, defect_classes, min_region_area)
        findings += found
        if record is not None:
            records.append(record)
    annotated = {p.name[: -len(".json")] for p in (root / "ann").glob("*.json")}
    images = {p.name for p in (root / "img").iterdir()}
    for orphan in sorted(annotated - images):
        findings.append(Finding(WARNING, "annotation-without-image", f"{source}/ann/{orphan}.json", "no image for this annotation"))
    return records, findings


def _read_one(root, image_path, relpath, source, defect_classes, min_region_area):
    findings: list[Finding] = []

    def note(severity, code, message):
        findings.append(Finding(severity, code, f"{source}/{relpath}", message))

    ann_path = root / "ann" / f"{image_path.name}.json"
    data = image_path.read_bytes()
    try:
        image = decode_image(data, relpath)
    except ImpellerBenchError as exc:
        note(ERROR, "unreadable-image", str(exc).split(": ", 1)[-1])
        return None, findings
    width, height = image.size
    if not ann_path.is_file():
        note(ERROR, "missing-annotation", f"no annotation file ann/{ann_path.name}")
        return None, findings
    try:
        ann = json.loads(ann_path.read_text())
        ann_h, ann_w = int(ann["size"]["height"]), int(ann["size"]["width"])
    except (ValueError, KeyError, TypeError) as exc:
        note(ERROR, "bad-annotation", f"annotation ann/{ann_path.name} cannot be read ({exc})")
        return None, findings
    if (ann_h, ann_w) != (height, width):
        note(ERROR, "annotation-size-mismatch", f"annotation says {ann_w}x{ann_h}, image is {width}x{height}")
        return None, findings

    defect = np.zeros((height, width), bool)
    foreground = np.zeros((height, width), bool)
    class_masks: dict[str, np.ndarray] = {}
    broken = False
    for obj in ann.get("objects", []):
        title = obj.get("classTitle", "")
        if title != FOREGROUND_CLASS and title not in defect_classes:
            note(WARNING, "unknown-class", f"object of class {title!r} ignored")
            continue
        if obj.get("geometryType", "bitmap") != "bitmap" or "bitmap" not in obj:
            note(WARNING, "unsupported-geometry", f"{title} object with geometry {obj.get('geometryType')!r} ignored")
            continue
        try:
            bitmap = decode_bitmap(obj["bitmap"]["data"])
            x, y = (int(v) for v in obj["bitmap"]["origin"])
        except (ValueError, KeyError, TypeError) as exc:
            note(ERROR, "bad-bitmap", f"{title} bitmap: {exc}")
            broken = True
            continue
        h, w = bitmap.shape
        if x < 0 or y < 0 or x + w > width or y + h > height:
            note(ERROR, "bitmap-outside-image", f"{title} bitmap {w}x{h} at origin ({x}, {y}) extends past the {width}x{height} image")
            broken = True
            x0, y0 = max(x, 0), max(y, 0)
            x1, y1 = min(x + w, width), min(y + h, height)
            if x1 <= x0 or y1 <= y0:
                continue
            bitmap = bitmap[y0 - y : y1 - y, x0 - x : x1 - x]
            x, y, h, w = x0, y0, y1 - y0, x1 - x0
        if title == FOREGROUND_CLASS:
            foreground[y : y + h, x : x + w] |= bitmap
        elif bitmap.any():
            class_mask = class_masks.setdefault(title, np.zeros((height, width), bool))
            class_mask[y : y + h, x : x + w] |= bitmap
            defect[y : y + h, x : x + w] |= bitmap
    classes = sorted(class_masks)

    has_defect = bool(defect.any())
    label = DEFECT if has_defect else GOOD
    name_label = label_from_name(image_path.name)
    tag_names = sorted({t.get("name") for t in ann.get("tags", [])})
    tag_labels = {_LABEL_OF_TAG[t] for t in tag_names if t in _LABEL_OF_TAG}
    shown = "defect objects (" + ", ".join(sorted(classes)) + ")" if has_defect else "no defect object"
    if name_label is not None and name_label != label:
        note(ERROR, "name-contradicts-objects", f"file name says {name_label}, annotation has {shown}")
    if not tag_labels:
        note(WARNING, "missing-tag", "annotation has no good/bad tag")
    elif len(tag_labels) > 1:
        note(ERROR, "conflicting-tags", f"tags {tag_names} say both good and defect")
    else:
        (tag_label,) = tag_labels
        if tag_label != label:
            note(ERROR, "tag-contradicts-objects", f"tags {tag_names} say {tag_label}, annotation has {shown}")
        if name_label is not None and tag_label != name_label:
            note(WARNING, "tag-contradicts-name", f"tags {tag_names} say {tag_label}, file name says {name_label}")
    if has_defect:
        findings += tiny_region_findings(defect, f"{source}/{relpath}", min_region_area)
    if not foreground.any():
        note(INFO, "no-foreground", "no disk object: no foreground mask")
    if broken:
        return None, findings
    record = SourceRecord(
        source=source,
        kind="supervisely",
        relpath=relpath,
        path=image_path,
        label=label,
        sha256=sha256_bytes(data),
        defect_mask=defect,
        foreground_mask=foreground if foreground.any() else None,
        defect_classes=tuple(classes),
        class_masks=class_masks or None,
    )
    return record, findings


def tiny_region_findings(mask: np.ndarray, path: str, min_area: int) -> list[Finding]:
    """A warning per 8-connected defect region smaller than ``min_area`` pixels."""
    labels, count = ndi.label(mask, structure=np.ones((3, 3), bool))
    if not count:
        return []
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    small = np.nonzero(areas < min_area)[0]
    return [
        Finding(WARNING, "tiny-region", path, f"defect region of {int(areas[i])} pixel(s) (under {min_area})")
        for i in small
    ]
