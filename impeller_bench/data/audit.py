"""Shortcut audit: can a split be passed by recognising how images were made instead of finding defects?

A benchmark measures defect detection only if its good and defective test
images differ by the defects alone. The audit measures three ways they can
differ otherwise:

(a) **Source mix.** The share of each public source among test good and test
    defect images, and whether every test source is also a training source.
    Differing mixes are a shortcut by construction: the sources differ in
    acquisition (resolution, re-encoding, augmentation) and pretrained
    features tell them apart perfectly.
(b) **Separability, defect-blind.** How well a cross-validated classifier
    separates train good from test good images, and test good from test
    defect images, given (1) acquisition statistics (noise, sharpness,
    fine-detail energy, contrast, grey-level gaps) or (2) pretrained
    features (EfficientNet-Lite0, pooled per stage). Every measure is taken
    outside the defect regions (dilated); each good image is measured
    outside a defect image's region too (a seeded pairing), so both classes
    are measured over alike areas and a defect itself cannot be what
    separates them.
(c) **Single statistics against the label:** brightness and sharpness alone,
    test good against test defect, over the same defect-blind regions.

(d) **An image-level cue, on a track without good test images** (a
    localization track: every test image is defective and the pixel metrics
    count false positives over their normal pixels). There, (b) and (c)
    between test good and test defect do not apply, and how a photo was
    taken can help a detector only through a score that raises a whole image
    alike and happens to be higher where more of the image is defective. So
    the audit scores exactly that detector: a map constant over each test
    image, equal to the image's out-of-fold defect-blind propensity (train
    good against test defect, from the acquisition statistics with
    brightness, and from the pretrained features), and reports its pixel
    AUROC. It fails at ``OFFSET_AUROC`` or more, or when the interval's lower
    end exceeds ``OFFSET_INTERVAL_LOW``. Train good against test defect is
    still reported, for information: there it is expected to be separable
    (the defect photos were taken apart), and it does not by itself help
    localisation.

When the images name their capture session (Magnetic Tile Defects:
``exp1``..``exp6``, its lightings), the session joins (b) as a measure of
its own.

Each separability is an AUROC from out-of-fold scores (logistic regression on
standardised measures; folds keep photo groups whole, so variants of one
photo never sit on both sides of a fold) with a 95% interval from a
bootstrap over photo groups. A comparison *fails* when even the interval's
lower end exceeds ``SEPARABLE_AUROC`` (the two sets are shown to be told
apart by something other than defects), or when the AUROC itself reaches
``SEPARATED_AUROC`` (with few photo groups the interval is wide, but a split
must show it has no shortcut, not merely escape proof of one); a comparison
that cannot be measured (fewer than two photo groups on a side) fails too.
The audit passes when (a) holds and no comparison of (b), (c) or (d) fails.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np

from ..common.progress import no_progress
from .audit_measures import (
    ACQUISITION_STATISTICS,
    BOOTSTRAP_RESAMPLES,
    FEATURE_SIZE,
    FEATURE_STAGES,
    FOLDS,
    REGION_DILATION,
    AuditImage,
    defect_blind_measures,
    grouped_auroc,
    one_hot,
    out_of_fold_scores,
)

SEPARABLE_AUROC = 0.7


SEPARATED_AUROC = 0.8


OFFSET_AUROC = 0.6  # (d): the pixel AUROC a map constant per image may not reach


OFFSET_INTERVAL_LOW = 0.55  # (d): nor the lower end of its interval exceed


MAX_SOURCE_SHARE_DIFFERENCE = 0.05  # total variation distance between the test good and test defect source mixes


SINGLE_STATISTICS = ("brightness", "sharpness")


TRAIN_GOOD, TEST_GOOD, TEST_DEFECT = "train good", "test good", "test defect"


MULTI_MEASURES = ("acquisition statistics", "pretrained features", "capture session",
                  "acquisition statistics and brightness")  # (b): measures of several values


@dataclass
class SourceMix:
    shares: dict[str, dict[str, int]]  # role -> source -> images
    difference: float | None  # total variation distance between the test good and test defect mixes (None: no good)
    untrained_sources: list[str]  # test sources with no training image
    passed: bool

    def line(self) -> str:
        return source_mix_line(asdict(self))


def source_mix_line(mix: dict) -> str:
    parts = [f"{role}: " + ", ".join(f"{n} {src}" for src, n in sorted(counts.items()))
             for role, counts in mix["shares"].items() if counts]
    extra = f"; test sources never trained on: {', '.join(mix['untrained_sources'])}" if mix["untrained_sources"] else ""
    difference = ("no good test images: only whether every test source is trained on applies"
                  if mix["difference"] is None else f"difference {mix['difference']:.2f}")
    return f"(a) source mix: {'pass' if mix['passed'] else 'FAIL'} ({difference}{extra}) - " + "; ".join(parts)


@dataclass
class Separability:
    measure: str  # "acquisition statistics", "pretrained features", or a single statistic's name
    compare: str  # "train good vs test good" or "test good vs test defect"
    auroc: float | None  # None when the groups are too few to cross-validate
    interval: tuple[float, float] | None
    images: tuple[int, int]
    groups: tuple[int, int]
    passed: bool
    note: str = ""
    check: str = ""  # "(b)", "(c)" or "(d)"; "" in audits written before (d): told by the measure
    informational: bool = False  # reported, not judged (its verdict does not count)

    def to_dict(self) -> dict:
        out = asdict(self) | {"interval": list(self.interval) if self.interval else None,
                              "images": list(self.images), "groups": list(self.groups)}
        # Keys absent at their defaults, so that audits of splits with good test images read as they always did.
        return {k: v for k, v in out.items() if not ((k == "check" and not v) or (k == "informational" and not v))}


def separability_line(s: dict) -> str:
    kind = s.get("check") or ("(b)" if s["measure"] in MULTI_MEASURES else "(c)")
    what = "pixel AUROC of a map constant per image" if kind == "(d)" else "AUROC"
    if s["auroc"] is None:
        return f"{kind} {s['measure']}, {s['compare']}: FAIL, not measurable ({s['note']})"
    low, high = s["interval"]
    verdict = "for information" if s.get("informational") else ("pass" if s["passed"] else "FAIL")
    if kind == "(d)":
        verdict += f" (fails at {OFFSET_AUROC:.2f} or more, or with the interval above {OFFSET_INTERVAL_LOW:.2f})"
    sizes = (f"{s['images'][1]} images, {s['groups'][1]} photo groups" if kind == "(d)" else
             f"{s['images'][0]} vs {s['images'][1]} images, {s['groups'][0]} vs {s['groups'][1]} photo groups")
    return (f"{kind} {s['measure']}, {s['compare']}: {what} {s['auroc']:.3f} [{low:.3f}, {high:.3f}] ({sizes}) "
            f"{verdict}" + (f" - {s['note']}" if s["note"] else ""))


def audit_lines(result: dict) -> list[str]:
    """The audit as text: a verdict, then one line per check, then the checks that do not apply and why."""
    body = [source_mix_line(result["source_mix"])] + [separability_line(s) for s in result["separability"]]
    body += [f"not applicable: {why}" for why in result.get("not_applicable", [])]
    return [f"shortcut audit: {'PASS' if result['passed'] else 'FAIL'}"] + ["  " + line for line in body]


@dataclass
class AuditResult:
    source_mix: SourceMix
    separability: list[Separability] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    not_applicable: list[str] = field(default_factory=list)  # checks that do not apply to this split, and why

    @property
    def passed(self) -> bool:
        return self.source_mix.passed and all(s.passed or s.informational for s in self.separability)

    def to_dict(self) -> dict:
        return {"passed": self.passed, "source_mix": asdict(self.source_mix),
                "separability": [s.to_dict() for s in self.separability], "settings": self.settings} | (
            {"not_applicable": self.not_applicable} if self.not_applicable else {})

    def lines(self) -> list[str]:
        return audit_lines(self.to_dict())


def source_mix(roles: Sequence[str], sources: Sequence[str]) -> SourceMix:
    """Check (a) from each image's role and source; cheap, so the builder runs it before writing anything."""
    shares: dict[str, dict[str, int]] = {}
    for role in (TRAIN_GOOD, TEST_GOOD, TEST_DEFECT):
        shares[role] = dict(sorted(Counter(s for r, s in zip(roles, sources) if r == role).items()))
    good, defect = shares[TEST_GOOD], shares[TEST_DEFECT]
    untrained = sorted((set(good) | set(defect)) - set(shares[TRAIN_GOOD]))
    if not good:  # a localization track: no good/defect mix to compare
        return SourceMix(shares, None, untrained, not untrained)
    n_good, n_defect = max(sum(good.values()), 1), max(sum(defect.values()), 1)
    difference = 0.5 * sum(abs(good.get(s, 0) / n_good - defect.get(s, 0) / n_defect) for s in set(good) | set(defect))
    passed = difference <= MAX_SOURCE_SHARE_DIFFERENCE + 1e-12 and not untrained
    return SourceMix(shares, float(difference), untrained, passed)


def audit_images(images: Sequence[AuditImage], *, seed: int = 0, features: bool = True, backbone=None,
                 progress: Callable[[Iterable, str], Iterable] = no_progress) -> AuditResult:
    """Run (a), (b) and (c) on a split's images; on a split without good test images, (a), (b) for information
    and (d)."""
    roles = np.array([im.role for im in images])
    mix = source_mix(list(roles), [im.source for im in images])
    result = AuditResult(mix, settings={
        "seed": seed, "folds": FOLDS, "bootstrap_resamples": BOOTSTRAP_RESAMPLES, "separable_auroc": SEPARABLE_AUROC,
        "separated_auroc": SEPARATED_AUROC,
        "max_source_share_difference": MAX_SOURCE_SHARE_DIFFERENCE, "region_dilation": REGION_DILATION,
        "acquisition_statistics": list(ACQUISITION_STATISTICS), "single_statistics": list(SINGLE_STATISTICS),
        "features": f"efficientnet_lite0 {'+'.join(FEATURE_STAGES)}, mean over defect-blind cells" if features else None,
    })
    if features and any(max(im.image.shape) > FEATURE_SIZE for im in images):
        result.settings["features_at_most"] = FEATURE_SIZE
    table, pooled = defect_blind_measures(images, seed, features, backbone, progress)
    measures = [("acquisition statistics", np.stack([table[n] for n in ACQUISITION_STATISTICS], 1), True)]
    if pooled is not None:
        measures.append(("pretrained features", pooled, True))
    sessions = [im.session for im in images]
    if images and None not in sessions:
        measures.append(("capture session", one_hot(sessions), True))
    groups = np.array([im.group for im in images])
    if not (roles == TEST_GOOD).any():
        # Brightness joins the statistics here: (c) does not apply, and darker defect photos are a known cue.
        measures[0] = ("acquisition statistics and brightness",
                       np.stack([table[n] for n in ACQUISITION_STATISTICS + ("brightness",)], 1), True)
        return _audit_without_good(result, images, measures, roles, groups, seed)
    comparisons = [(TRAIN_GOOD, TEST_GOOD), (TEST_GOOD, TEST_DEFECT)]
    for name, x, fit in measures:
        for first, second in comparisons:
            result.separability.append(_compare(name, x, roles, groups, first, second, seed, fit))
    for name in SINGLE_STATISTICS:
        result.separability.append(_compare(name, table[name][:, None], roles, groups, TEST_GOOD, TEST_DEFECT, seed, False))
    return result


NO_GOOD_NOT_APPLICABLE = (
    "(a)'s comparison of the test good and test defect source mixes, (b) train good vs test good, (b) and (c) test "
    "good vs test defect: there are no good test images",
    "the image metrics, which a split without good test images does not define (so an image-level shortcut has "
    "nothing to pass); (d) measures what such a shortcut could still do to the pixel metrics",
)


def _audit_without_good(result: AuditResult, images, measures, roles, groups, seed) -> AuditResult:
    """(a) as it applies, train good vs test defect for information, and (d) per measure."""
    result.not_applicable = list(NO_GOOD_NOT_APPLICABLE)
    result.settings |= {"offset_auroc": OFFSET_AUROC, "offset_interval_low": OFFSET_INTERVAL_LOW}
    defects = np.nonzero(roles == TEST_DEFECT)[0]
    masks = [images[k].mask for k in defects]
    for name, x, fit in measures:
        informational = _compare(name, x, roles, groups, TRAIN_GOOD, TEST_DEFECT, seed, fit)
        informational.informational = True  # its own verdict is kept; the audit's does not count it
        informational.note = ("expected to separate where defect photos were taken apart; a cue that raises a whole "
                              "image alike is judged by (d)") + (f"; {informational.note}" if informational.note else "")
        result.separability.append(informational)
        result.separability.append(_image_level_cue(name, x, roles, groups, masks, defects, seed))
    return result


def _image_level_cue(name, x, roles, groups, masks, defects, seed) -> Separability:
    """(d): the pixel AUROC of maps constant per test image, each the image's out-of-fold propensity (train good
    against test defect from ``x``), with a 95% interval over photo groups."""
    chosen = (roles == TRAIN_GOOD) | (roles == TEST_DEFECT)
    labels = roles[chosen] == TEST_DEFECT
    n = (int((~labels).sum()), int(labels.sum()))
    g = (len(np.unique(groups[chosen][~labels])), len(np.unique(groups[chosen][labels])))
    compare = "constant per test image, from its train good vs test defect propensity"
    if any(m is None for m in masks):
        return Separability(name, compare, None, None, n, g, False, "the defect images have no pixel masks", "(d)")
    propensity = (out_of_fold_scores(x[chosen], labels, groups[chosen], seed) if min(g) >= 2 else None)
    if propensity is None:
        return Separability(name, compare, None, None, n, g, False, "too few photo groups to cross-validate", "(d)")
    value_of = dict(zip(np.nonzero(chosen)[0][labels].tolist(), propensity[labels]))
    cue = [np.full(m.shape, value_of[k], np.float64) for k, m in zip(defects.tolist(), masks)]
    auroc, interval = constant_map_auroc(masks, cue, groups[defects], seed)
    ceiling, _ = constant_map_auroc(masks, [np.full(m.shape, m.mean(), np.float64) for m in masks],
                                    groups[defects], seed, resamples=0)
    passed = auroc < OFFSET_AUROC and interval[0] <= OFFSET_INTERVAL_LOW
    note = (f"the most any map constant per image can reach here, ranked by each image's true defect share: "
            f"{ceiling:.3f}")
    return Separability(name, compare, auroc, interval, n, g, passed, note, "(d)")


def constant_map_auroc(masks, maps, groups, seed: int, resamples: int = BOOTSTRAP_RESAMPLES):
    """Pooled pixel AUROC of ``maps`` against ``masks`` (:mod:`impeller_bench.common.metrics`) and its 95% interval from a bootstrap
    of photo groups (None without resamples)."""
    from ..common.metrics import PixelSet

    pixels = PixelSet.from_maps(masks, maps)
    auroc = pixels.curve().auroc()
    if not resamples:
        return auroc, None
    units, index = np.unique(groups, return_inverse=True)
    rng = np.random.default_rng(seed)
    values = [pixels.weighted_curve(np.bincount(rng.integers(0, len(units), len(units)),
                                                minlength=len(units))[index]).auroc() for _ in range(resamples)]
    low, high = np.percentile(values, [2.5, 97.5])
    return auroc, (float(low), float(high))


def matched_defects(images: Sequence[AuditImage], *, per_good: int = 2, caliper: float = 0.2, limit: int | None = None,
                    seed: int = 0, backbone=None, progress=no_progress) -> list[int]:
    """Which TEST_DEFECT images to keep so that defect-blind measures cannot tell them from the TEST_GOOD ones.

    Propensity matching: a defect-blind propensity (out-of-fold logistic
    regression on the acquisition statistics, brightness and pretrained
    features, groups kept whole) for every image; then, for each good image
    in a seeded order and for ``per_good`` rounds, the unused defect image of
    nearest propensity within ``caliper`` standard deviations of the
    propensities, one from a photo group not yet taken where there is one.
    Returns indices into ``images`` (at most ``limit``).
    """
    roles = np.array([im.role for im in images])
    labels = roles == TEST_DEFECT
    groups = np.array([im.group for im in images])
    table, pooled = defect_blind_measures(images, seed, True, backbone, progress, stage="matching")
    x = np.hstack([np.stack([table[n] for n in ACQUISITION_STATISTICS + ("brightness",)], 1), pooled])
    propensity = out_of_fold_scores(x, labels, groups, seed)
    if propensity is None:
        raise ValueError("too few photo groups to match the test set")
    width = caliper * propensity.std()
    goods = np.nonzero(roles == TEST_GOOD)[0]
    goods = goods[np.random.default_rng(seed).permutation(len(goods))]
    free = set(np.nonzero(labels)[0].tolist())
    taken_groups: set = set()
    kept: list[int] = []
    for _ in range(per_good):
        for g in goods:
            if limit is not None and len(kept) >= limit:
                return kept
            near = sorted((abs(propensity[j] - propensity[g]), j) for j in free if abs(propensity[j] - propensity[g]) <= width)
            if not near:
                continue
            fresh = [j for _, j in near if groups[j] not in taken_groups]
            choice = fresh[0] if fresh else near[0][1]
            kept.append(int(choice))
            free.discard(choice)
            taken_groups.add(groups[choice])
    return kept


def _compare(name, x, roles, groups, first, second, seed, fit) -> Separability:
    chosen = (roles == first) | (roles == second)
    labels = roles[chosen] == second
    n = (int((~labels).sum()), int(labels.sum()))
    g = (len(np.unique(groups[chosen][~labels])), len(np.unique(groups[chosen][labels])))
    if min(n) == 0:
        return Separability(name, f"{first} vs {second}", None, None, n, g, False, "no images on one side")
    auroc, interval, note = grouped_auroc(x[chosen], labels, groups[chosen], seed, fit=fit)
    # Not measurable (too few photo groups) fails too: a split must show it has no shortcut.
    passed = interval is not None and interval[0] <= SEPARABLE_AUROC and auroc < SEPARATED_AUROC
    return Separability(name, f"{first} vs {second}", auroc, interval, n, g, passed, note)


def audit_dataset(dataset, *, seed: int = 0, features: bool = True, backbone=None, progress=no_progress) -> AuditResult:
    """Audit a loaded dataset (:func:`impeller_bench.data.load_dataset`); groups come from its manifest."""
    from ..common.imageio import read_gray, read_mask

    entries = {e["id"]: e for e in (dataset.manifest or {}).get("entries", [])}
    images = []
    for k, sample in enumerate(progress(dataset.train + dataset.test, "audit: reading images")):
        entry = entries.get(sample.id, {})
        role = TRAIN_GOOD if sample.split == "train" else (TEST_DEFECT if sample.is_defect else TEST_GOOD)
        mask = read_mask(sample.mask_path) if sample.is_defect and sample.mask_path is not None else None
        group = entry.get("group")
        images.append(AuditImage(read_gray(sample.image_path), role, sample.source or "unknown",
                                 int(group) if group is not None else -1 - k, mask, entry.get("session")))
    return audit_images(images, seed=seed, features=features, backbone=backbone, progress=progress)
