"""Source importers: each reads one kind of public folder into the same records.

A record says where an image lies, what it shows (good or defect, with a
defect mask and a foreground mask where the source has them) and the sha256
of its bytes. Importers also return findings about the source (quirks,
unreadable files); records with an error finding are left out of any split.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

GOOD = "good"
DEFECT = "defect"


@dataclass
class SourceRecord:
    source: str  # source name, e.g. "casting-supervisely"
    kind: str  # importer: "supervisely", "kaggle", "mvtec" or "mtd"
    relpath: str  # posix path inside the source folder
    path: Path
    label: str  # GOOD or DEFECT
    sha256: str
    defect_mask: np.ndarray | None = None  # bool, image size
    foreground_mask: np.ndarray | None = None  # bool, image size
    defect_classes: tuple[str, ...] = field(default_factory=tuple)
    class_masks: dict[str, np.ndarray] | None = None  # per defect class, bool, image size
    mask_origin: dict | None = None  # masks carried from an annotated original (see transfer.py)
    session: str | None = None  # capture session, where the source's names give one (MTD's exp<k>: the lighting)
    capture: str | None = None  # capture series (one object under several lightings), where the source says

    @property
    def stem(self) -> str:
        return Path(self.relpath).stem

    @property
    def has_mask(self) -> bool:
        return self.defect_mask is not None


# Whether the fingerprint's score alone may join two images into one photo group (grouping.py): it was made for
# the impellers' concentric rings; other objects' candidate pairs are registered pixel to pixel first.
FINGERPRINT_JOINS = {"supervisely": True, "kaggle": True, "mvtec": True, "mtd": False}


def read_source(kind: str, root: str | Path, **options):
    """Dispatch to the importer of ``kind``; returns (records, findings)."""
    from . import kaggle, mtd, mvtec, supervisely

    readers = {"supervisely": supervisely.read, "kaggle": kaggle.read, "mvtec": mvtec.read, "mtd": mtd.read}
    return readers[kind](Path(root), **options)


def detect_kind(root: str | Path) -> str | None:
    """Which importer reads this folder, by its layout."""
    root = Path(root)
    if (root / "img").is_dir() and (root / "ann").is_dir():
        return "supervisely"
    if (root / "train" / "good").is_dir():
        return "mvtec"
    from .mtd import is_mtd_layout

    if is_mtd_layout(root):
        return "mtd"
    if any(p.is_dir() for p in root.glob("*_front")) or any(p.is_dir() for p in root.glob("*/*_front")):
        return "kaggle"
    return None
