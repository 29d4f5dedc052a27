"""Writing a planned split: each selected image and mask rendered at the split's size, the manifest,
and the dataset folder written atomically (a rebuild checked against the published split file)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from scipy import ndimage as ndi

from ..common.errors import ImpellerBenchError
from ..common.files import sha256_bytes, staged_directory
from ..common.imageio import (
    area_average,
    decode_gray,
    encode_png,
    resize_area,
    resize_mask_area,
    upright_file_bytes,
)
from ..common.progress import no_progress
from . import grouping
from .dataset import FORMAT_VERSION, MANIFEST_NAME, manifest_bytes
from .scanning import Progress
from .selection import NATIVE, Selected, SplitPlan
from .sources.records import DEFECT, SourceRecord
from .sources.references import reference_for


def _entry_id(split: str, label: str, stem: str, taken: set[str], sha256: str) -> str:
    entry_id = f"{split}/{label}/{stem}"
    if entry_id in taken:  # the same file name from two sources or folders
        entry_id = f"{split}/{label}/{stem}-{sha256[:8]}"
    taken.add(entry_id)
    return entry_id


EIGHT_CONNECTED = np.ones((3, 3), bool)


def region_stats(mask: np.ndarray) -> tuple[int, int]:
    """(number of 8-connected regions, defect area in pixels)."""
    _, count = ndi.label(mask, structure=EIGHT_CONNECTED)
    return int(count), int(mask.sum())


def region_classes(mask: np.ndarray, class_touch: dict | None, image_classes) -> list[list[str]]:
    """Defect classes of each 8-connected region, in ``scipy.ndimage.label`` order (raster scan).

    A region has every class that covers any of its pixels; without per-class
    masks, every region has all of the image's classes.
    """
    labels, count = ndi.label(mask, structure=EIGHT_CONNECTED)
    if not class_touch:
        return [sorted(image_classes) for _ in range(count)]
    touched = {c: np.unique(labels[m & (labels > 0)]) for c, m in class_touch.items()}
    return [sorted(c for c, regions in touched.items() if k in regions) for k in range(1, count + 1)]


@dataclass
class RenderedImage:
    """One dataset image ready to write: its bytes, masks and manifest facts."""

    split: str
    label: str
    stem: str
    source: str
    source_path: str
    source_sha256: str
    image_bytes: bytes
    suffix: str
    defect_mask: np.ndarray | None = None
    foreground_mask: np.ndarray | None = None
    defect_classes: tuple[str, ...] = ()
    group: int = 0
    group_shared_with_train: bool = False
    class_touch: dict[str, np.ndarray] | None = None  # pixels each class covers at all, for region classes
    mask_origin: dict | None = None  # where carried masks came from (transfer.py)
    session: str | None = None  # the source's capture session (MTD: the lighting), where it names one


def render(record: SourceRecord, sel: Selected, size: int | str) -> RenderedImage:
    """The image (and masks) of a selected record at the dataset's size."""
    data = record.path.read_bytes()
    mask, foreground, touch = record.defect_mask, record.foreground_mask, record.class_masks
    if size == NATIVE:
        image_bytes, png = upright_file_bytes(data, record.path)
        suffix = png or record.path.suffix.lower()
    else:
        gray = decode_gray(data, record.path)
        image_bytes, suffix = encode_png(resize_area(gray, size)), ".png"
        mask = None if mask is None else resize_mask_area(mask, size)
        foreground = None if foreground is None else resize_mask_area(foreground, size)
        touch = None if touch is None else {c: area_average(m, size) > 0 for c, m in touch.items()}
    is_defect = sel.label == DEFECT
    return RenderedImage(
        sel.split, sel.label, record.stem, record.source, record.relpath, record.sha256, image_bytes, suffix,
        mask if is_defect else None, foreground, record.defect_classes if is_defect else (),
        sel.group, sel.group_shared_with_train, touch if is_defect else None,
        record.mask_origin if is_defect else None, record.session,
    )


def write_rendered(items: Iterable[RenderedImage], out: Path | None) -> list[dict]:
    """Write rendered images under ``out`` (when given) in the MVTec layout; returns manifest entries."""
    taken: set[str] = set()
    entries = []
    for item in items:
        entry_id = _entry_id(item.split, item.label, item.stem, taken, item.source_sha256)
        entry = {
            "id": entry_id,
            "split": item.split,
            "label": item.label,
            "source": item.source,
            "source_path": item.source_path,
            "source_sha256": item.source_sha256,
            "file": f"{entry_id}{item.suffix}",
            "sha256": sha256_bytes(item.image_bytes),
            "mask": None,
            "mask_sha256": None,
            "foreground": None,
            "foreground_sha256": None,
            "defect_classes": list(item.defect_classes),
            "region_count": 0,
            "defect_area": 0,
            "region_classes": [],
            "group": item.group,
            "group_shared_with_train": item.group_shared_with_train,
        }
        if item.mask_origin is not None:
            entry["mask_source"] = item.mask_origin
        if item.session is not None:
            entry["session"] = item.session
        files = {entry["file"]: item.image_bytes}
        if item.defect_mask is not None:
            mask_png = encode_png(item.defect_mask)
            entry["mask"] = f"ground_truth/{item.label}/{entry_id.split('/', 2)[2]}_mask.png"
            entry["mask_sha256"] = sha256_bytes(mask_png)
            entry["region_count"], entry["defect_area"] = region_stats(item.defect_mask)
            entry["region_classes"] = region_classes(item.defect_mask, item.class_touch, item.defect_classes)
            files[entry["mask"]] = mask_png
        if item.foreground_mask is not None:
            fg_png = encode_png(item.foreground_mask)
            entry["foreground"] = f"foreground/{entry_id}_mask.png"
            entry["foreground_sha256"] = sha256_bytes(fg_png)
            files[entry["foreground"]] = fg_png
        if out is not None:
            for rel, data in files.items():
                target = out / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
        entries.append(entry)
    return entries


def make_manifest(name: str, records, plan: SplitPlan, size, defect_classes, group_threshold, entries,
                  options: dict | None = None, mask_sources: dict[str, str] | None = None) -> dict:
    """The manifest of a written selection; ``options`` join the build parameters, ``mask_sources``
    (name -> kind) the referenced sources."""
    sources = sorted({(records[s.record].source, records[s.record].kind) for s in plan.selected}
                     | set((mask_sources or {}).items()))
    return {
        "format_version": FORMAT_VERSION,
        "name": name,
        "build": {
            "size": size,
            "seed": plan.seed,
            "train_good": plan.counts.train_good,
            "test_good": plan.counts.test_good,
            "test_defect": plan.counts.test_defect,
            "defect_classes": list(defect_classes),
            "group_threshold": group_threshold,
            "pixel_masks": all(records[s.record].has_mask for s in plan.selected if s.label == DEFECT),
            "mask_rule": ("area-average resample; a pixel is defective when at least half its area was"
                          if size != NATIVE else "native size: each mask at its image's own size, not resampled"),
        } | (options or {}),
        "sources": {name_: reference_for(name_, kind) for name_, kind in sources},
        "entries": entries,
    }


def write_dataset(
    out: str | Path,
    records,
    plan: SplitPlan,
    *,
    name: str = "custom",
    size: int | str = 256,
    defect_classes=(),
    group_threshold: float = grouping.DEFAULT_MATCH_THRESHOLD,
    report: dict | None = None,
    expected: dict | None = None,
    overwrite: bool = False,
    progress: Progress = no_progress,
    options: dict | None = None,
    mask_sources: dict[str, str] | None = None,
    inspect: Callable[[Path], dict] | None = None,
) -> dict:
    """Write the dataset atomically; returns its manifest.

    With ``expected`` (a published split's manifest), every written file's
    sha256 must equal the published one, or nothing is written. ``inspect``
    runs on the complete staged folder before it is moved into place; what it
    returns joins the build report.
    """
    with staged_directory(out, overwrite=overwrite) as stage:
        rendered = (render(records[sel.record], sel, size) for sel in progress(plan.selected, "writing images"))
        entries = write_rendered(rendered, stage)
        manifest = make_manifest(name, records, plan, size, defect_classes, group_threshold, entries, options,
                                 mask_sources)
        if expected is not None:
            _check_reproduced(manifest, expected)
            manifest = expected
        (stage / MANIFEST_NAME).write_bytes(manifest_bytes(manifest))
        if inspect is not None:
            found = inspect(stage)
            if report is not None:
                report.update(found)
        if report is not None:
            (stage / "build_report.json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    return manifest


def _check_reproduced(manifest: dict, expected: dict) -> None:
    differing = []
    for got, want in zip(manifest["entries"], expected["entries"]):
        for key in ("sha256", "mask_sha256", "foreground_sha256"):
            if got[key] != want[key]:
                differing.append(f"{want['id']} ({key.replace('_sha256', '') if key != 'sha256' else 'image'})")
    if differing:
        raise ImpellerBenchError(
            f"{len(differing)} written file(s) differ from the published split (an image decoder or "
            f"encoder that differs from the one the split was made with): " + ", ".join(differing[:20])
            + (" ..." if len(differing) > 20 else "")
        )
