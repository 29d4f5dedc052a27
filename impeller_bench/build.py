"""Build a benchmark dataset from source records: scan, group, select, write.

The pipeline is four pure-ish steps that tests call one by one:

- :func:`scan` decodes every image once: checks it, fingerprints it for photo
  grouping and measures the simple statistics the selection stratifies on.
- :func:`group_photos` joins variants of one photo (see :mod:`.grouping`).
- :func:`plan_split` picks the train and test images for a seed.
- :func:`write_dataset` writes the MVTec AD layout and ``manifest.json``
  atomically, from a plan or from a published split file
  (:func:`plan_from_split_file`).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from scipy import ndimage as ndi

from . import grouping
from .data import FORMAT_VERSION, MANIFEST_NAME, manifest_bytes
from .errors import ImpellerBenchError
from .imageio import (
    area_average,
    decode_gray,
    encode_png,
    read_gray,
    resize_area,
    resize_mask_area,
    sha256_bytes,
    staged_directory,
    upright_file_bytes,
)
from .report import ERROR, Finding
from .sources import DEFECT, FINGERPRINT_JOINS, GOOD, SourceRecord
from .sources.references import reference_for
from .progress import no_progress

TRAIN, TEST = "train", "test"
MIN_TEST_GOOD_GROUP_SHARE = 1 / 3
NATIVE = "native"

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
            findings.append(Finding(ERROR, "unreadable-image", _where(record), str(exc).split(": ", 1)[-1]))
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
                Finding(ERROR, "mask-size-mismatch", _where(record),
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


def _where(record: SourceRecord) -> str:
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


@dataclass(frozen=True)
class Selected:
    record: int  # index into the records
    split: str  # TRAIN or TEST
    label: str
    group: int
    group_shared_with_train: bool = False


@dataclass
class SplitPlan:
    selected: list[Selected]
    counts: Counts
    seed: int | None
    notes: dict = field(default_factory=dict)


def eligible(records, scans, findings) -> np.ndarray:
    """Records that scanned and have no error finding: the ones a split may use."""
    bad = {f.path for f in findings if f.severity == ERROR}
    return np.array([s is not None and _where(r) not in bad for r, s in zip(records, scans)], bool)


def plan_split(
    records: Sequence[SourceRecord],
    scans: Sequence[ScannedImage | None],
    groups: grouping.PhotoGroups,
    usable: np.ndarray,
    counts: Counts = Counts(),
    seed: int = 0,
    defect_candidates: bool = False,
) -> SplitPlan:
    """Choose train and test images; no photo group has members on both sides.

    1. Test defects: defect images with a non-empty mask, spread over defect
       class combinations and defect sizes, one per photo group while groups last.
       With ``defect_candidates``, every usable one is taken (once the sources
       are checked to hold ``counts.test_defect``), for :func:`balance_test_defects`
       to choose from.
    2. Their groups are test-side. Good images' groups are added to the test
       side, those holding good photos from mask-bearing sources (the source of
       the test defects: same camera and resolution, so that the test classes
       do not differ by source) and small groups first, until the test side
       holds enough good images and at least MIN_TEST_GOOD_GROUP_SHARE of the
       good photo groups (a test set of many variants of a few photos
       measures little); every other group is train-side.
    3. Test good and train good are spread over lighting and pose
       (systematic sampling over images sorted by brightness band, then
       off-centre distance), test good preferring mask-bearing sources.
    All random choices (order among ties, sampling offsets) come from ``seed``.
    """
    rng = np.random.default_rng(seed)
    group_of = groups.group_of
    defects = [i for i in np.nonzero(usable)[0] if records[i].label == DEFECT and records[i].has_mask and records[i].defect_mask.any()]
    goods = [i for i in np.nonzero(usable)[0] if records[i].label == GOOD]
    mask_sources = {records[i].source for i in defects}

    asked = counts
    if counts.test_defect is None:
        counts = dataclasses.replace(counts, test_defect=len(defects))
    test_defect = None
    if len(defects) >= counts.test_defect:
        defect_key = lambda i: ("+".join(records[i].defect_classes), int(records[i].defect_mask.sum()))
        taken = len(defects) if defect_candidates else counts.test_defect
        test_defect = _pick_by_rounds(_rounds_over_groups(defects, group_of, rng), taken, defect_key, rng)
        counts = dataclasses.replace(counts, test_defect=taken)
    test_groups = set(group_of[test_defect]) if test_defect is not None else set()

    good_groups: dict[int, list[int]] = {}
    for i in goods:
        good_groups.setdefault(int(group_of[i]), []).append(i)
    order = list(good_groups)
    rng.shuffle(order)
    order.sort(key=lambda g: (not any(records[i].source in mask_sources for i in good_groups[g]), len(good_groups[g])))
    test_side_goods = [i for g in good_groups if g in test_groups for i in good_groups[g]]
    least_test_groups = int(np.ceil(MIN_TEST_GOOD_GROUP_SHARE * len(good_groups))) if counts.test_good else 0
    for g in order:
        test_good_groups = sum(1 for h in good_groups if h in test_groups)
        if len(test_side_goods) >= counts.test_good and test_good_groups >= least_test_groups:
            break
        if g not in test_groups:
            test_groups.add(g)
            test_side_goods += good_groups[g]
    train_side_goods = [i for i in goods if group_of[i] not in test_groups]
    if counts.train_good is None:
        counts = dataclasses.replace(counts, train_good=len(train_side_goods))

    available = {
        "test_defect": len(defects),
        "test_good": len(test_side_goods),
        "train_good": len(train_side_goods),
        "good_images": len(goods),
        "good_groups": len(good_groups),
        "defect_groups": len({int(group_of[i]) for i in defects}),
    }
    if (test_defect is None or len(test_side_goods) < counts.test_good or len(train_side_goods) < counts.train_good):
        raise ImpellerBenchError(
            "the sources hold too few usable images for the requested split: asked for "
            f"{_asked(asked.train_good)} train good, {asked.test_good} test good, {_asked(asked.test_defect)} test defect; "
            f"available: {available['good_images']} good images in {available['good_groups']} photo groups "
            f"({available['test_good']} on the test side, {available['train_good']} left for training once "
            f"groups are kept whole) and {available['test_defect']} defect images with masks "
            f"in {available['defect_groups']} groups. Nothing was written. (--train-good all and --test-defect all "
            "take what the photo groups allow.)"
        )

    def lighting_and_pose(candidates):
        brightness = np.array([scans[i].brightness for i in candidates])
        edges = np.quantile(brightness, [0.25, 0.5, 0.75]) if len(candidates) else []
        band = {i: int(np.searchsorted(edges, scans[i].brightness)) for i in candidates}
        # Serpentine order: alternate pose direction per band, so neighbours stay alike.
        return lambda i: (band[i], scans[i].off_centre * (1 if band[i] % 2 == 0 else -1))

    preferred = [i for i in test_side_goods if records[i].source in mask_sources]
    others = [i for i in test_side_goods if records[i].source not in mask_sources]
    test_good = _pick_preferring(preferred, others, counts.test_good, lighting_and_pose(test_side_goods), rng)
    train_good = _spread_pick(train_side_goods, counts.train_good, lighting_and_pose(train_side_goods), rng)

    selected = (
        [Selected(int(i), TRAIN, GOOD, int(group_of[i])) for i in train_good]
        + [Selected(int(i), TEST, GOOD, int(group_of[i])) for i in test_good]
        + [Selected(int(i), TEST, DEFECT, int(group_of[i])) for i in test_defect]
    )
    return SplitPlan(selected, counts, seed, {"available": available})


def _asked(count: int | None) -> str:
    return "all" if count is None else str(count)


def plan_image_level(records, groups: grouping.PhotoGroups, usable: np.ndarray, train_from: SplitPlan,
                     source: str, folder: str = "test/") -> SplitPlan:
    """An image-level split: ``train_from``'s training images, and every usable image of ``source``
    under ``folder`` (e.g. Kaggle's own test folder) as the test set, masks or not.

    Kaggle's folders share photo groups with each other, so such a test set
    cannot be kept apart from any training set; each test entry records
    whether its group also has a training image (``group_shared_with_train``).
    """
    train = [s for s in train_from.selected if s.split == TRAIN]
    train_groups = {s.group for s in train}
    test = [
        Selected(i, TEST, records[i].label, int(groups.group_of[i]), int(groups.group_of[i]) in train_groups)
        for i in np.nonzero(usable)[0]
        if records[i].source == source and records[i].relpath.startswith(folder)
    ]
    if not test:
        raise ImpellerBenchError(f"no usable image of source {source!r} under {folder!r}")
    counts = Counts(len(train), sum(s.label == GOOD for s in test), sum(s.label == DEFECT for s in test))
    shared = sum(s.group_shared_with_train for s in test)
    return SplitPlan(train + test, counts, train_from.seed, {"test_images_sharing_a_group_with_train": shared})


def plan_by_group_share(records, groups: grouping.PhotoGroups, usable: np.ndarray, test_good_share: float,
                        seed: int = 0) -> SplitPlan:
    """DifferNet's protocol (Rudolph, Wandt and Rosenhahn, WACV 2021: a random 80% of the defect-free images train,
    the other 20% and every defect image test), drawn by photo group instead of by image.

    A seeded random order of the good photo groups; groups join the test side whole until it holds at least
    ``test_good_share`` of the good images; every other good group trains. Every usable defect image with a
    non-empty mask tests. A good image whose photo group also holds a defect image (one tile, labelled
    defective under another lighting) is left out of both sides, and ``notes["left_out"]`` says so.
    """
    if not 0 < test_good_share < 1:
        raise ImpellerBenchError(f"the test share of the good images must lie between 0 and 1, not {test_good_share}")
    rng = np.random.default_rng(seed)
    group_of = groups.group_of
    candidates = np.nonzero(usable)[0]
    defects = [int(i) for i in candidates if records[i].label == DEFECT and records[i].has_mask
               and records[i].defect_mask.any()]
    defect_groups = {int(group_of[i]) for i in defects}
    goods = [int(i) for i in candidates if records[i].label == GOOD]
    left_out = {_where(records[i]): "good image in the photo group of a defect image (the same object, labelled "
                                    "defective in another image): on neither side" for i in goods
                if group_of[i] in defect_groups}
    good_groups: dict[int, list[int]] = {}
    for i in goods:
        if group_of[i] not in defect_groups:
            good_groups.setdefault(int(group_of[i]), []).append(i)
    if len(good_groups) < 2 or not defects:
        raise ImpellerBenchError(f"a split by group share needs at least two good photo groups and a defect image "
                                 f"with a mask; found {len(good_groups)} and {len(defects)}. Nothing was written.")
    wanted = test_good_share * sum(len(m) for m in good_groups.values())
    test_groups, taken = set(), 0
    for g in rng.permutation(sorted(good_groups)).tolist():
        if taken >= wanted:
            break
        test_groups.add(g)
        taken += len(good_groups[g])
    if len(test_groups) == len(good_groups):
        raise ImpellerBenchError(f"a test share of {test_good_share} of the good images takes every good photo group "
                                 f"({len(good_groups)}) to the test side, leaving none to train; ask for a smaller "
                                 "share. Nothing was written.")
    selected = (
        [Selected(i, TRAIN, GOOD, g) for g, members in sorted(good_groups.items()) if g not in test_groups
         for i in members]
        + [Selected(i, TEST, GOOD, g) for g, members in sorted(good_groups.items()) if g in test_groups
           for i in members]
        + [Selected(i, TEST, DEFECT, int(group_of[i])) for i in defects]
    )
    counts = Counts(sum(s.split == TRAIN for s in selected), taken, len(defects))
    available = {"good_images": len(goods), "good_groups": len(good_groups), "test_defect": len(defects),
                 "defect_groups": len(defect_groups), "goods_left_out": len(left_out)}
    return SplitPlan(selected, counts, seed, {"available": available, "left_out": left_out,
                                              "test_good_share": test_good_share})


def _rounds_over_groups(candidates, group_of, rng) -> list[list[int]]:
    """Candidates in rounds: a random member of each group, then a second member of each group, and so on."""
    taken: dict[int, int] = {}
    rounds: list[list[int]] = []
    for k in rng.permutation(len(candidates)):
        i = candidates[k]
        r = taken.get(group_of[i], 0)
        taken[group_of[i]] = r + 1
        if r == len(rounds):
            rounds.append([])
        rounds[r].append(i)
    return rounds


def _pick_by_rounds(rounds, n, key, rng) -> list[int]:
    """n candidates, whole rounds first: no group gives a k-th member before every group has given k - 1."""
    picked: list[int] = []
    for members in rounds:
        if len(picked) + len(members) >= n:
            return picked + _spread_pick(members, n - len(picked), key, rng)
        picked += members
    raise ValueError(f"cannot pick {n} of {len(picked)} candidates")


def _pick_preferring(preferred, others, n, key, rng) -> list[int]:
    """n candidates spread over ``key``: from ``preferred`` alone when it holds enough, else all of it plus the rest from ``others``."""
    if len(preferred) >= n:
        return _spread_pick(preferred, n, key, rng)
    return list(preferred) + _spread_pick(others, n - len(preferred), key, rng)


def _spread_pick(candidates, n, key, rng) -> list[int]:
    """Systematic sample of n candidates spread over the order of ``key``.

    Candidates are shuffled (ties fall randomly), sorted by key, and taken at
    evenly spaced positions from a random offset.
    """
    if n <= 0:
        return []
    if n > len(candidates):
        raise ValueError(f"cannot pick {n} of {len(candidates)} candidates")
    shuffled = [candidates[k] for k in rng.permutation(len(candidates))]
    ordered = sorted(shuffled, key=key)
    positions = np.floor((np.arange(n) + rng.uniform()) * len(ordered) / n).astype(int)
    return [ordered[p] for p in positions]


# --------------------------------------------------------------------------- writing


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


# --------------------------------------------------------------------------- published splits


def load_split_file(path: str | Path) -> dict:
    path = Path(path)
    try:
        split = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ImpellerBenchError(f"cannot read split file ({exc})", path) from exc
    if not isinstance(split, dict) or split.get("format_version") != FORMAT_VERSION or "entries" not in split:
        raise ImpellerBenchError(f"not a split file of format version {FORMAT_VERSION}", path)
    return split


def plan_from_split_file(split: dict, records: list[SourceRecord]) -> SplitPlan:
    """The plan a published split describes, checked against the given sources' checksums.

    Entries whose masks were carried from an annotated original
    (``mask_source``) get them again here, through the recorded map: their
    records in ``records`` are replaced by the carried ones.
    """
    index = {(r.source, r.relpath): k for k, r in enumerate(records)}
    by_kind: dict[str, list[str]] = {}
    for r in records:
        by_kind.setdefault(r.kind, [])
        if r.source not in by_kind[r.kind]:
            by_kind[r.kind].append(r.source)
    rename = {}
    for name, ref in split["sources"].items():
        given = by_kind.get(ref["kind"], [])
        if name in given:
            rename[name] = name
        elif len(given) == 1:
            rename[name] = given[0]  # the user's folder may carry another name
        else:
            flag = f"--{ref['kind']}" + (" (or --mask-source, where it only lends its masks)"
                                         if ref["kind"] == "supervisely" else "")
            raise ImpellerBenchError(
                f"split needs source {name!r} ({ref['kind']}); give its folder with {flag}"
                + (f" (given: {', '.join(given)})" if given else "")
            )

    def lookup(source, path, sha256):
        key = (rename[source], path)
        if key not in index:
            return None, f"{key[0]}/{key[1]}: missing"
        if records[index[key]].sha256 != sha256:
            return None, (f"{key[0]}/{key[1]}: sha256 {records[index[key]].sha256[:12]}... differs from the split's "
                          f"{sha256[:12]}...")
        return index[key], None

    problems, selected = [], []
    for e in split["entries"]:
        k, problem = lookup(e["source"], e["source_path"], e["source_sha256"])
        origin = e.get("mask_source")
        if problem is None and origin is not None:
            o, problem = lookup(origin["source"], origin["source_path"], origin["source_sha256"])
            if problem is None:
                from .transfer import carried_record

                records[k] = carried_record(records[o], records[k], origin["matrix"], origin)
        if problem is None and e["mask"] is not None and records[k].defect_mask is None:
            problem = f"{rename[e['source']]}/{e['source_path']}: the split needs its defect mask, the source has none"
        if problem is not None:
            problems.append(problem)
            continue
        selected.append(Selected(k, e["split"], e["label"], e["group"], e["group_shared_with_train"]))
    if problems:
        raise ImpellerBenchError(
            f"{len(problems)} source file(s) do not match the split (nothing was written):\n  " + "\n  ".join(problems)
        )
    b = split["build"]
    return SplitPlan(selected, Counts(b["train_good"], b["test_good"], b["test_defect"]), b["seed"])


# --------------------------------------------------------------------------- the whole job


def read_sources(supervisely=(), kaggle=(), mvtec=(), defect_classes=None, mtd=()):
    """Run the importers over the given folders; returns (records, findings)."""
    from .sources import read_source
    from .sources.supervisely import DEFAULT_DEFECT_CLASSES

    records, findings = [], []
    for kind, roots in (("supervisely", supervisely), ("kaggle", kaggle), ("mvtec", mvtec), ("mtd", mtd)):
        for root in roots:
            options = {"defect_classes": defect_classes or DEFAULT_DEFECT_CLASSES} if kind == "supervisely" else {}
            found_records, found = read_source(kind, root, **options)
            records += found_records
            findings += found
    names = [r.source for r in records]
    if len({(r.source, r.relpath) for r in records}) != len(records):
        raise ImpellerBenchError("two source folders share a name: " + ", ".join(sorted({n for n in names if names.count(n) > 1})))
    if not records:
        raise ImpellerBenchError("no source images: give at least one --supervisely, --kaggle, --mvtec or --mtd folder")
    return records, findings


def build_split(
    out: str | Path,
    *,
    supervisely=(),
    kaggle=(),
    mvtec=(),
    mtd=(),
    mask_sources=(),
    counts: Counts = Counts(),
    test_good_share: float | None = None,
    seed: int = 0,
    size: int | str = 256,
    split_file: str | Path | None = None,
    defect_classes=None,
    group_threshold: float = grouping.DEFAULT_MATCH_THRESHOLD,
    register: bool = True,
    allow_source_mix: bool = False,
    balance: bool = True,
    audit: bool = True,
    name: str = "custom",
    overwrite: bool = False,
    progress: Progress = no_progress,
) -> tuple[dict, dict]:
    """Build a dataset folder from source folders; returns (manifest, build report).

    With ``split_file`` the published split is rebuilt exactly (counts, seed,
    size and classes come from it); otherwise images are selected for ``seed``.
    ``mask_sources`` are annotated (Supervisely) folders whose images are not
    used: their masks are carried onto registered variants among the image
    sources' defect images (:mod:`.transfer`). A selection whose test good and
    test defect images come from different source mixes is refused unless
    ``allow_source_mix``. With ``balance``, the test defects are matched to
    the test goods on defect-blind measures (:func:`balance_test_defects`), so
    that lighting and photo sessions cannot tell them apart; at most
    ``counts.test_defect`` are kept. With ``test_good_share``, ``counts``
    give way to DifferNet's protocol by photo group (:func:`plan_by_group_share`),
    whose test defects ``balance`` matches too. The shortcut audit (:mod:`.audit`) runs
    on the written images and goes into the report (``audit=False`` skips it).
    """
    from .sources.mtd import MASK_RULE, MASK_THRESHOLD
    from .sources.supervisely import DEFAULT_DEFECT_CLASSES

    inspect = (lambda stage: {"shortcut_audit": run_audit(stage, progress)}) if audit else None
    if split_file is not None:
        split = load_split_file(split_file)
        b = split["build"]
        extra = _by_kind(mask_sources)
        records, findings = read_sources(tuple(supervisely) + tuple(extra["supervisely"]), tuple(kaggle) + tuple(extra["kaggle"]),
                                         tuple(mvtec) + tuple(extra["mvtec"]), b["defect_classes"],
                                         tuple(mtd) + tuple(extra["mtd"]))
        plan = plan_from_split_file(split, records)
        report = {"split_file": str(split_file), "entries_verified": len(plan.selected)}
        manifest = write_dataset(
            out, records, plan, name=split["name"], size=b["size"], defect_classes=b["defect_classes"],
            group_threshold=b["group_threshold"], report=report, expected=split, overwrite=overwrite, progress=progress,
            inspect=inspect,
        )
        return manifest, report

    given_classes = defect_classes
    defect_classes = tuple(defect_classes or DEFAULT_DEFECT_CLASSES)
    records, findings = read_sources(supervisely, kaggle, mvtec, defect_classes, mtd)
    if mtd and not (given_classes or supervisely or kaggle or mvtec or mask_sources):
        defect_classes = tuple(sorted({c for r in records for c in r.defect_classes}))  # the ones MTD's folders name
    scans, scan_findings = scan(records, progress)
    findings += scan_findings
    usable = eligible(records, scans, findings)
    transfer_report, mask_source_kinds = {}, {}
    if mask_sources:
        records, transfer_report = carry_masks(records, scans, usable, mask_sources, defect_classes, progress)
        mask_source_kinds = transfer_report.pop("mask_source_kinds")
    groups = group_photos(records, scans, register=register, threshold=group_threshold, progress=progress)
    if test_good_share is not None:
        plan = plan_by_group_share(records, groups, usable, test_good_share, seed)
    else:
        plan = plan_split(records, scans, groups, usable, counts, seed, defect_candidates=balance)
    if balance:
        limit = None if test_good_share is not None else counts.test_defect
        plan = balance_test_defects(records, plan, size, limit, progress)
    mix = check_source_mix(records, plan)
    if not mix.passed and not allow_source_mix:
        raise ImpellerBenchError(
            "the selection's test good and test defect images come from different source mixes, so a detector "
            f"could pass it by recognising the source ({mix.line().split(' - ', 1)[-1]}). Nothing was written. "
            "Choose sources so that both sides come from the same ones (e.g. one source alone, or --mask-source "
            "to carry the annotated masks onto another source's variants), or pass --allow-source-mix to build "
            "it anyway (recorded in the manifest)."
        )
    report = build_report(records, findings, groups, usable, plan) | transfer_report | {"source_mix": mix.line()}
    if "matching" in plan.notes:
        report["matching"] = plan.notes["matching"]
    options = {"registration": register, "allow_source_mix": allow_source_mix, "bootstrap_unit": "group",
               "matched_test_defects": balance}
    if test_good_share is not None:
        options["protocol"] = GROUP_SHARE_PROTOCOL | {"test_good_share": test_good_share}
    if mtd:
        options |= {"source_mask_rule": MASK_RULE, "source_mask_threshold": MASK_THRESHOLD}
    if mask_sources:
        from .transfer import ACCEPTANCE_RULE

        options["mask_transfer"] = ACCEPTANCE_RULE
    manifest = write_dataset(
        out, records, plan, name=name, size=size, defect_classes=defect_classes,
        group_threshold=group_threshold, report=report, overwrite=overwrite, progress=progress,
        options=options, mask_sources=mask_source_kinds, inspect=inspect,
    )
    return manifest, report


GROUP_SHARE_PROTOCOL = {
    "after": "DifferNet, Rudolph, Wandt and Rosenhahn, WACV 2021 (arXiv 2008.12577): a random 80% of the "
             "defect-free images train, the other 20% and every defect image test",
    "change": "drawn by photo group (a tile's lightings together), not by image, so that no tile is on both sides",
}


def carry_masks(records, scans, usable, mask_sources, defect_classes, progress=no_progress):
    """Records with masks carried from the annotated ``mask_sources`` onto registered variants among the
    defect images of ``records``; returns (new records, report)."""
    from .transfer import best_transfer_per_variant, carried_record, find_transfers

    mask_records, mask_findings = read_sources(**_by_kind(mask_sources), defect_classes=defect_classes)
    mask_scans, more = scan(mask_records, progress)
    mask_usable = eligible(mask_records, mask_scans, mask_findings + more)
    originals = [i for i, r in enumerate(mask_records)
                 if mask_usable[i] and r.label == DEFECT and r.defect_mask is not None and r.defect_mask.any()]
    candidates = [len(mask_records) + j for j, r in enumerate(records)
                  if usable[j] and r.label == DEFECT and r.defect_mask is None]
    pool = list(mask_records) + list(records)
    fingerprints = [s.fingerprint if s is not None else None for s in list(mask_scans) + list(scans)]
    tried = find_transfers(pool, fingerprints, originals, candidates, progress=progress)
    best = best_transfer_per_variant(tried)
    records = list(records)
    for variant, t in best.items():
        records[variant - len(mask_records)] = carried_record(pool[t.original], pool[variant], t.registration.matrix,
                                                              t.origin(pool))
    reasons: dict[str, int] = {}
    for t in tried:
        key = t.reason or "kept"
        reasons[key] = reasons.get(key, 0) + 1
    kept = [t for t in tried if t.accepted]
    shifts = [t.residual_shift for t in kept]
    ratios = [t.area_ratio for t in kept]
    return records, {
        "mask_sources": sorted({r.source for r in mask_records}),
        "mask_source_kinds": {r.source: r.kind for r in mask_records},
        "mask_transfer": {
            "annotated_defect_photos": len(originals),
            "photos_with_a_variant": len({t.original for t in kept}),
            "registrations": len(tried),
            "outcomes": reasons,
            "variants_with_masks": len(best),
            "residual_shift_px": _percentiles(shifts),
            "area_ratio": _percentiles(ratios),
        },
    }


def _by_kind(folders) -> dict[str, list]:
    """Source folders sorted by importer (read_sources' keyword arguments), each kind found from its layout."""
    from .sources import detect_kind

    out: dict[str, list] = {"supervisely": [], "kaggle": [], "mvtec": [], "mtd": []}
    for folder in folders:
        kind = detect_kind(folder)
        if kind is None:
            raise ImpellerBenchError("not a known source layout (Supervisely img/ + ann/, Kaggle *_front/, MVTec AD, "
                                     "Magnetic Tile Defects MT_*/)", folder)
        out[kind].append(folder)
    return out


def _percentiles(values) -> dict:
    if not values:
        return {}
    p = np.percentile(values, [0, 50, 99, 100])
    return {"min": round(float(p[0]), 4), "median": round(float(p[1]), 4), "p99": round(float(p[2]), 4),
            "max": round(float(p[3]), 4)}


MATCH_PER_GOOD = 2
MATCH_CALIPER = 0.2


def balance_test_defects(records, plan: SplitPlan, size, limit: int | None = None, progress=no_progress) -> SplitPlan:
    """The plan with its test defects narrowed to those a defect-blind look cannot tell from its test goods.

    ``plan`` holds every candidate test defect; :func:`.audit.matched_defects`
    keeps at most MATCH_PER_GOOD per test good (and at most ``limit``), each
    within MATCH_CALIPER standard deviations of a good image's propensity.
    Images are measured as they will be written (at ``size``).
    """
    from .audit import TEST_DEFECT, TEST_GOOD, AuditImage, matched_defects

    tests = [s for s in plan.selected if s.split == TEST]
    images = []
    for sel in progress(tests, "matching: reading images"):
        record = records[sel.record]
        gray = read_gray(record.path)
        mask = record.defect_mask if sel.label == DEFECT else None
        if size != NATIVE:
            gray = resize_area(gray, size)
            mask = None if mask is None else resize_mask_area(mask, size)
        images.append(AuditImage(gray, TEST_DEFECT if sel.label == DEFECT else TEST_GOOD, record.source, sel.group, mask))
    try:
        kept = set(matched_defects(images, per_good=MATCH_PER_GOOD, caliper=MATCH_CALIPER, limit=limit,
                                   seed=plan.seed or 0, progress=progress))
    except ValueError as exc:
        raise ImpellerBenchError(f"cannot match the test defects to the test goods: {exc} (--no-balance skips "
                                 "the matching)") from exc
    if not kept:
        raise ImpellerBenchError(f"the matching kept none of the {sum(s.label == DEFECT for s in tests)} candidate "
                                 "test defects: none lies within the caliper of a test good image's propensity. "
                                 "Nothing was written. (--no-balance keeps them all; the shortcut audit then says "
                                 "whether they can be told apart without their defects.)")
    chosen = {id(tests[k]) for k in kept}
    selected = [s for s in plan.selected if s.label != DEFECT or id(s) in chosen]
    counts = dataclasses.replace(plan.counts, test_defect=len(kept))
    notes = plan.notes | {"matching": {"candidate_test_defects": sum(s.label == DEFECT for s in tests),
                                       "kept": len(kept), "per_good": MATCH_PER_GOOD, "caliper": MATCH_CALIPER}}
    return SplitPlan(selected, counts, plan.seed, notes)


def check_source_mix(records, plan: SplitPlan):
    """Check (a) of the shortcut audit on a plan, before anything is written."""
    from .audit import TEST_DEFECT, TEST_GOOD, TRAIN_GOOD, source_mix

    role = {(TRAIN, GOOD): TRAIN_GOOD, (TEST, GOOD): TEST_GOOD, (TEST, DEFECT): TEST_DEFECT}
    chosen = [s for s in plan.selected if (s.split, s.label) in role]
    return source_mix([role[(s.split, s.label)] for s in chosen], [records[s.record].source for s in chosen])


def run_audit(folder: Path, progress=no_progress) -> dict:
    """The shortcut audit of a written dataset folder, as a report section."""
    from .audit import audit_dataset
    from .data import load_dataset

    return audit_dataset(load_dataset(folder), progress=progress).to_dict()


def build_report(records, findings, groups, usable, plan: SplitPlan) -> dict:
    """What the build left out and why, and what the photo grouping found."""
    group_of = groups.group_of
    labels_of_group: dict[int, set[str]] = {}
    for r, g in zip(records, group_of):
        labels_of_group.setdefault(int(g), set()).add(r.label)
    excluded = [_where(r) for r, ok in zip(records, usable) if not ok]
    errors_by_path: dict[str, list[str]] = {}
    for f in findings:
        if f.severity == ERROR:
            errors_by_path.setdefault(f.path, []).append(f.message)
    # Files an importer refused outright (no record: e.g. a defect image whose mask keeps no pixel) are left out too.
    read = {_where(r) for r in records}
    excluded += sorted(path for path in errors_by_path if path not in read)
    return {
        "records": len(records),
        "excluded": {path: errors_by_path.get(path, ["not usable"]) for path in excluded},
        "grouping": groups.summary() | {
            "groups_with_good_and_defect": sum(1 for labels in labels_of_group.values() if len(labels) > 1),
        },
        "available": plan.notes.get("available", {}),
        "selected": {
            f"{split}_{label}": sum(1 for s in plan.selected if s.split == split and s.label == label)
            for split, label in ((TRAIN, GOOD), (TEST, GOOD), (TEST, DEFECT))
        },
        "findings": {code: n for code, n in sorted(_count_codes(findings).items())},
    } | ({"left_out": plan.notes["left_out"]} if plan.notes.get("left_out") else {})


def _count_codes(findings) -> dict[str, int]:
    out: dict[str, int] = {}
    for f in findings:
        out[f.code] = out.get(f.code, 0) + 1
    return out
