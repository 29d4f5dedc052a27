"""An MVTec-AD-layout folder: ``train/good``, ``test/<type>``, ``ground_truth/<type>/<stem>_mask.png``.

Read as is: ``test/good`` is good, every other ``test/<type>`` is a defect of
class ``<type>`` whose mask is required. Works for the paper's own release,
any MVTec AD category, and datasets built by this package.
"""
from __future__ import annotations

from pathlib import Path

from ...common.errors import ImpellerBenchError
from ...common.files import sha256_bytes
from ...common.imageio import is_image_file, read_mask
from ..report import ERROR, Finding
from .records import DEFECT, GOOD, SourceRecord


def read(root: Path, source: str | None = None):
    """Read an MVTec-layout folder; returns (records, findings)."""
    root = Path(root)
    source = source or root.name
    if not (root / "train" / "good").is_dir():
        raise ImpellerBenchError("not an MVTec AD layout (expected train/good/)", root)
    records, findings = [], []
    folders = [root / "train" / "good"] + sorted(p for p in (root / "test").glob("*") if p.is_dir())
    for folder in folders:
        defect_type = None if folder.name == "good" else folder.name
        for path in sorted(p for p in folder.iterdir() if is_image_file(p)):
            relpath = path.relative_to(root).as_posix()
            mask = None
            if defect_type is not None:
                mask_path = root / "ground_truth" / defect_type / f"{path.stem}_mask.png"
                if not mask_path.is_file():
                    findings.append(Finding(ERROR, "missing-mask", f"{source}/{relpath}", f"no mask {mask_path.relative_to(root).as_posix()}"))
                    continue
                try:
                    mask = read_mask(mask_path)
                except ImpellerBenchError as exc:
                    findings.append(Finding(ERROR, "bad-mask", f"{source}/{relpath}", str(exc)))
                    continue
            records.append(
                SourceRecord(
                    source=source,
                    kind="mvtec",
                    relpath=relpath,
                    path=path,
                    label=GOOD if defect_type is None else DEFECT,
                    sha256=sha256_bytes(path.read_bytes()),
                    defect_mask=mask,
                    defect_classes=() if defect_type is None else (defect_type,),
                    class_masks=None if defect_type is None else {defect_type: mask},
                )
            )
    return records, findings
