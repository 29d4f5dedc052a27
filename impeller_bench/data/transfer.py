"""Carry pixel masks from annotated originals onto their re-processed variants in another source.

The Kaggle 300x300 set holds rotated, flipped, scaled, shifted, re-lit and
re-encoded variants of photos, some of which are annotated at 512x512 in the
Supervisely source. For each annotated defect photo, the variants are found
by registration (:mod:`.registration`): its best candidates by fingerprint
match score are registered pixel to pixel, and each one that is the same
photo (:func:`.registration.is_same_photo`) gets the original's masks,
carried through the fitted map (:func:`.registration.transfer_mask`).

A carried mask is kept only when it is trustworthy:

- the defect lies wholly inside the variant's frame: the carried area,
  scaled back to the original's pixels, is AREA_RATIO_RANGE of the
  original's (a zoomed variant can crop a defect away);
- the map is exact where it matters: around each carried defect region the
  leftover misalignment (:func:`.registration.residual_shift`) is at most
  MAX_RESIDUAL_SHIFT pixels.

Everything a rebuild needs (the original's path and checksum, the fitted
map) goes into the split file, so a published split rebuilds its masks
byte for byte without searching again.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

from ..common.imageio import read_gray
from ..common.progress import no_progress
from . import grouping
from .registration import (
    SAME_PHOTO_MIN_CORRELATION,
    SAME_PHOTO_MIN_DETAIL,
    Registration,
    is_same_photo,
    prepared_loader,
    register,
    residual_shift,
    transfer_mask,
)
from .sources.records import DEFECT, SourceRecord

CANDIDATES_PER_ORIGINAL = 12
AREA_RATIO_RANGE = (0.8, 1.25)
MAX_RESIDUAL_SHIFT = 0.5
ACCEPTANCE_RULE = (
    f"masks carried from registered annotated originals; kept when the registration's correlation is at least "
    f"{SAME_PHOTO_MIN_CORRELATION} and its fine-detail correlation at least {SAME_PHOTO_MIN_DETAIL}, the carried "
    f"defect area is {AREA_RATIO_RANGE[0]}-{AREA_RATIO_RANGE[1]} of the original's and the residual misalignment "
    f"around every defect region at most {MAX_RESIDUAL_SHIFT} px"
)


@dataclass(frozen=True)
class MaskTransfer:
    """One annotated original registered onto one candidate variant, and what its masks became there."""

    original: int  # index of the annotated record
    variant: int  # index of the variant's record
    registration: Registration
    area_ratio: float | None = None  # carried defect area / the original's, in the original's pixels
    residual_shift: float | None = None  # worst leftover misalignment around the carried regions, variant pixels

    @property
    def same_photo(self) -> bool:
        return is_same_photo(self.registration)

    @property
    def accepted(self) -> bool:
        return (self.same_photo and self.area_ratio is not None
                and AREA_RATIO_RANGE[0] <= self.area_ratio <= AREA_RATIO_RANGE[1]
                and self.residual_shift is not None and self.residual_shift <= MAX_RESIDUAL_SHIFT)

    @property
    def reason(self) -> str:
        """Why a transfer was not kept (empty when it was): one of a few fixed phrases, for counting."""
        if not self.same_photo:
            return "not the same photo"
        if self.area_ratio is None or not AREA_RATIO_RANGE[0] <= self.area_ratio <= AREA_RATIO_RANGE[1]:
            return f"defect area outside {AREA_RATIO_RANGE[0]}-{AREA_RATIO_RANGE[1]} of the original's (cropped by the frame)"
        if self.residual_shift is None or self.residual_shift > MAX_RESIDUAL_SHIFT:
            return f"residual misalignment over {MAX_RESIDUAL_SHIFT} px"
        return ""

    def origin(self, records: Sequence[SourceRecord]) -> dict:
        """The manifest's record of where a variant's masks came from."""
        original = records[self.original]
        r = self.registration
        return {
            "source": original.source,
            "source_path": original.relpath,
            "source_sha256": original.sha256,
            "matrix": list(r.matrix),
            "correlation": round(r.correlation, 6),
            "detail_correlation": round(r.detail_correlation, 6),
            "area_ratio": round(self.area_ratio, 6),
            "residual_shift": round(self.residual_shift, 6),
        }


def carried_record(original: SourceRecord, variant: SourceRecord, matrix: Sequence[float], origin: dict | None = None,
                   shape: tuple[int, int] | None = None) -> SourceRecord:
    """The variant's record with the original's masks and classes carried through ``matrix``."""
    if original.defect_mask is None:
        raise ValueError(f"{original.source}/{original.relpath} has no defect mask to carry")
    shape = shape or read_gray(variant.path).shape
    fit = Registration(tuple(float(v) for v in matrix), 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0)
    classes = None if original.class_masks is None else {
        name: transfer_mask(mask, fit, shape) for name, mask in original.class_masks.items()}
    return dataclasses.replace(
        variant, label=DEFECT, defect_mask=transfer_mask(original.defect_mask, fit, shape), foreground_mask=None,
        defect_classes=original.defect_classes, class_masks=classes, mask_origin=origin,
    )


def find_transfers(
    records: Sequence[SourceRecord],
    fingerprints: Sequence[grouping.Fingerprint | None],
    originals: Sequence[int],
    candidates: Sequence[int],
    *,
    per_original: int = CANDIDATES_PER_ORIGINAL,
    progress: Callable[[Iterable, str], Iterable] = no_progress,
) -> list[MaskTransfer]:
    """Register each original (index into ``records``, with a defect mask) onto its best candidates.

    Candidates are ranked by fingerprint match score; the best ``per_original``
    are registered. Returns every registration tried, kept or not (see
    :attr:`MaskTransfer.accepted` and :attr:`MaskTransfer.reason`).
    """
    usable = [j for j in candidates if fingerprints[j] is not None]
    tried: list[MaskTransfer] = []
    # Variants of one photo are the best candidates of each of its annotated copies: keep recent ones prepared.
    prepared = prepared_loader([r.path for r in records], fingerprints, cache=512)
    for i in progress(list(originals), "registering originals"):
        original = records[i]
        scores = np.array([grouping.match_score(fingerprints[i], fingerprints[j]) for j in usable])
        best = [usable[k] for k in np.argsort(-scores, kind="stable")[:per_original]]
        source = prepared(i)
        for j in best:
            target = prepared(j)
            fit = register(source, target)
            transfer = MaskTransfer(i, j, fit)
            if transfer.same_photo:
                carried = transfer_mask(original.defect_mask, fit, target.shape)
                expected = original.defect_mask.sum() / fit.scale ** 2
                shift = residual_shift(source.image, target.image, fit, carried) if carried.any() else None
                transfer = MaskTransfer(i, j, fit, float(carried.sum() / expected), shift)
            tried.append(transfer)
    return tried


def best_transfer_per_variant(transfers: Sequence[MaskTransfer]) -> dict[int, MaskTransfer]:
    """Among accepted transfers, the best-registered original of each variant (a variant of a photo annotated twice)."""
    best: dict[int, MaskTransfer] = {}
    for t in transfers:
        if t.accepted and (t.variant not in best or t.registration.correlation > best[t.variant].registration.correlation):
            best[t.variant] = t
    return best
