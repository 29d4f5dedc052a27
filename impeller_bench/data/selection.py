"""Which images go where: the split plan (train good, test good, test defect), drawn by photo group with
a seed, and the matching of test defect photos to test good photos on acquisition cues."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..common.errors import ImpellerBenchError
from ..common.imageio import read_gray, resize_area, resize_mask_area
from ..common.progress import no_progress
from . import grouping
from .report import ERROR
from .scanning import Counts, ScannedImage, finding_path
from .sources.records import DEFECT, GOOD, SourceRecord

TRAIN, TEST = "train", "test"


MIN_TEST_GOOD_GROUP_SHARE = 1 / 3


NATIVE = "native"


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
    return np.array([s is not None and finding_path(r) not in bad for r, s in zip(records, scans)], bool)


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
    left_out = {finding_path(records[i]): "good image in the photo group of a defect image (the same object, labelled "
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


MATCH_PER_GOOD = 2


MATCH_CALIPER = 0.2


def balance_test_defects(records, plan: SplitPlan, size, limit: int | None = None, progress=no_progress) -> SplitPlan:
    """The plan with its test defects narrowed to those a defect-blind look cannot tell from its test goods.

    ``plan`` holds every candidate test defect; :func:`.audit.matched_defects`
    keeps at most MATCH_PER_GOOD per test good (and at most ``limit``), each
    within MATCH_CALIPER standard deviations of a good image's propensity.
    Images are measured as they will be written (at ``size``).
    """
    from .audit import TEST_DEFECT, TEST_GOOD, matched_defects
    from .audit_measures import AuditImage

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
