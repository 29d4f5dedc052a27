"""What every importer returns: one record per image, with what it shows and where it lies."""
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
