"""Source importers: each reads one kind of public folder into the same records.

A record says where an image lies, what it shows (good or defect, with a
defect mask and a foreground mask where the source has them) and the sha256
of its bytes. Importers also return findings about the source (quirks,
unreadable files); records with an error finding are left out of any split.
"""
from __future__ import annotations

from pathlib import Path

from . import kaggle, mtd, mvtec, supervisely


def read_source(kind: str, root: str | Path, **options):
    """Dispatch to the importer of ``kind``; returns (records, findings)."""
    readers = {"supervisely": supervisely.read, "kaggle": kaggle.read, "mvtec": mvtec.read, "mtd": mtd.read}
    return readers[kind](Path(root), **options)


def detect_kind(root: str | Path) -> str | None:
    """Which importer reads this folder, by its layout."""
    root = Path(root)
    if (root / "img").is_dir() and (root / "ann").is_dir():
        return "supervisely"
    if (root / "train" / "good").is_dir():
        return "mvtec"
    if mtd.is_mtd_layout(root):
        return "mtd"
    if any(p.is_dir() for p in root.glob("*_front")) or any(p.is_dir() for p in root.glob("*/*_front")):
        return "kaggle"
    return None
