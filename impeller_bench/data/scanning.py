"""The first step of a build: read every source image once (size, checksum, masks) and group the
photos (the same physical photo, re-encoded or augmented, is one group)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

from ..common.errors import ImpellerBenchError
from ..common.imageio import read_gray
from ..common.progress import no_progress
from . import grouping
from .report import ERROR, Finding
from .sources.records import FINGERPRINT_JOINS, SourceRecord

Progress = Callable[[Iterable, str], Iterable]


@dataclass(frozen=True)
class Counts:
    """Images per part of the split; None takes every usable one (train good: every one on the training side)."""

    train_good: int | None = 400
    test_good: int = 100
    test_defect: int | None = 100


@dataclass(frozen=True)
class ScannedImage:
    """What one decoding pass learns about an image."""

    fingerprint: grouping.Fingerprint
    brightness: float  # mean grey level, 0..255: lighting
    off_centre: float  # distance of the part's centre from the image centre, as a fraction of the size: pose


def scan(records: Sequence[SourceRecord], progress: Progress = no_progress, measure: bool = True):
    """Decode every record once. Returns (scans, findings); a scan is None where the image failed.

    With ``measure=False`` images are only checked (scans hold True for those that passed).
    """
    scans: list[ScannedImage | None] = []
    findings: list[Finding] = []
    for record in progress(records, "reading images"):
        try:
            gray = read_gray(record.path)
        except ImpellerBenchError as exc:
            findings.append(Finding(ERROR, "unreadable-image", finding_path(record), str(exc).split(": ", 1)[-1]))
            scans.append(None)
            continue
        bad_mask = next(
            (name for name, m in (("defect", record.defect_mask), ("foreground", record.foreground_mask))
             if m is not None and m.shape != gray.shape),
            None,
        )
        if bad_mask:
            mask = record.defect_mask if bad_mask == "defect" else record.foreground_mask
            findings.append(
                Finding(ERROR, "mask-size-mismatch", finding_path(record),
                        f"{bad_mask} mask is {mask.shape[1]}x{mask.shape[0]}, image is {gray.shape[1]}x{gray.shape[0]}")
            )
            scans.append(None)
            continue
        if not measure:
            scans.append(True)
            continue
        fp = grouping.fingerprint(gray)
        off = float(np.hypot(fp.center[0] / grouping.WORK_SIZE - 0.5, fp.center[1] / grouping.WORK_SIZE - 0.5))
        scans.append(ScannedImage(fp, float(gray.mean()), off))
    return scans, findings


def finding_path(record: SourceRecord) -> str:
    """How findings name a record's file: source name, then its path inside the source."""
    return f"{record.source}/{record.relpath}"


def group_photos(records: Sequence[SourceRecord], scans: Sequence[ScannedImage | None], *, register: bool = True,
                 **options) -> grouping.PhotoGroups:
    """Photo groups over the records that scanned; unscanned records get groups of their own.

    With ``register`` (the default), candidate pairs the fingerprint leaves in
    doubt are registered pixel to pixel (:mod:`.registration`) and joined when
    they are one photo.
    """
    usable = [i for i, s in enumerate(scans) if s is not None]
    same_photo = _same_photo_test(records, scans, usable) if register else None
    found = grouping.find_photo_groups(
        [records[i].sha256 for i in usable], [scans[i].fingerprint for i in usable], register=same_photo,
        captures=[records[i].capture for i in usable],
        fingerprint_joins=[FINGERPRINT_JOINS.get(records[i].kind, True) for i in usable], **options
    )
    group_of = np.empty(len(records), dtype=np.int64)
    group_of[usable] = found.group_of
    rest = [i for i, s in enumerate(scans) if s is None]
    group_of[rest] = found.n_groups + np.arange(len(rest))
    matches = [(usable[a], usable[b], s) for a, b, s in found.content_matches]
    registered = [(usable[a], usable[b], c) for a, b, c in found.registration_matches]
    return grouping.PhotoGroups(group_of, found.exact_duplicate_pairs, matches, found.registered_pairs, registered,
                                found.capture_joins)


def _same_photo_test(records, scans, usable):
    """register(a, b) over positions in ``usable``: (one photo?, correlation), recent images kept prepared."""
    from .registration import is_same_photo, prepared_loader, register

    prepared = prepared_loader([records[i].path for i in usable], [scans[i].fingerprint for i in usable])

    def same_photo(a: int, b: int) -> tuple[bool, float]:
        found = register(prepared(a), prepared(b))
        return is_same_photo(found), found.correlation

    return same_photo
