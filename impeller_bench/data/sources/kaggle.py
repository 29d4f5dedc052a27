"""Kaggle casting folders: ``ok_front/`` and ``def_front/``, optionally under ``train/`` and ``test/``.

Images only (no masks), at either resolution. Identity is the content: the
published folders hold byte-identical copies and reuse file names for
different images, so both are reported, and nothing here keys on names.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from ...common.errors import ImpellerBenchError
from ...common.files import sha256_bytes
from ...common.imageio import is_image_file
from ..report import INFO, Finding
from .records import DEFECT, GOOD, SourceRecord

LABEL_OF_FOLDER = {"ok_front": GOOD, "def_front": DEFECT}


def read(root: Path, source: str | None = None):
    """Read a Kaggle casting folder; returns (records, findings). Images are decoded later, once."""
    root = Path(root)
    source = source or root.name
    folders = sorted(p for p in root.rglob("*_front") if p.is_dir() and p.name in LABEL_OF_FOLDER)
    folders = [f for f in folders if len(f.relative_to(root).parts) <= 2]
    if not folders:
        raise ImpellerBenchError("no ok_front/ or def_front/ folder found (Kaggle casting layout)", root)
    records = []
    for folder in folders:
        for path in sorted(p for p in folder.iterdir() if is_image_file(p)):
            records.append(
                SourceRecord(
                    source=source,
                    kind="kaggle",
                    relpath=path.relative_to(root).as_posix(),
                    path=path,
                    label=LABEL_OF_FOLDER[folder.name],
                    sha256=sha256_bytes(path.read_bytes()),
                )
            )
    return records, duplicate_findings(records)


def duplicate_findings(records) -> list[Finding]:
    """Notes on byte-identical files and on one name used for different contents."""
    findings = []
    by_hash = defaultdict(list)
    by_name = defaultdict(set)
    for r in records:
        by_hash[r.sha256].append(f"{r.source}/{r.relpath}")
        by_name[Path(r.relpath).name].add(r.sha256)
    for paths in by_hash.values():
        for copy in paths[1:]:
            findings.append(Finding(INFO, "exact-duplicate", copy, f"byte-identical to {paths[0]}"))
    for name, hashes in sorted(by_name.items()):
        if len(hashes) > 1:
            holders = sorted(p for h in hashes for p in by_hash[h] if Path(p).name == name)
            findings.append(
                Finding(INFO, "name-reused", holders[0], f"file name {name} holds {len(hashes)} different images: {', '.join(holders)}")
            )
    return findings
