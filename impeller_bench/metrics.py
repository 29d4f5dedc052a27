"""Image- and pixel-level anomaly detection metrics: exact, with ties switching together.

Conventions, shared by every function here:

- Labels and masks: True (or 1) is anomalous. Scores: higher is more anomalous.
- A sample is predicted anomalous at threshold t when its score is >= t, so
  all samples with equal scores switch together: ties are never broken by order.
- Inputs are validated once, at the edge (finite scores, both classes present,
  masks and maps of equal shape).

Image level: ``image_auroc`` and ``image_auprc`` (average precision, the
step-wise sum of scikit-learn's ``average_precision_score``) come from
scikit-learn; ``f1_max`` is the largest F1 over all thresholds, with the
precision, recall and threshold that reach it (the highest such threshold).

Pixel level, pooled over all pixels of all images (good images included):
``pixel_auroc``, ``pixel_f1_max`` and ``pro_auc``. PRO follows MVTec AD: the
regions are the 8-connected components of each ground-truth mask; PRO(t) is
the mean over all regions of all images of the fraction of the region scoring
>= t; FPR(t) is the fraction of all ground-truth-negative pixels scoring >= t;
``pro_auc`` is the area under PRO(FPR) from 0 to ``fpr_limit`` (PRO linearly
interpolated at the limit), divided by ``fpr_limit``.

How it is fast: the three pixel metrics share one ascending sort of the
negative pixels' scores and one of the (few) positive pixels'. Every metric
changes only at positive scores (F1 can only rise between them, and the ROC
and PRO curves are straight segments there), so the negatives are only
counted below and at each distinct positive score with ``searchsorted``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from sklearn.metrics import average_precision_score, roc_auc_score

EIGHT_CONNECTED = np.ones((3, 3), bool)


class MetricInputError(ValueError):
    """Inputs a metric is not defined for (one class only, NaN scores, shapes that differ)."""


@dataclass(frozen=True)
class F1Max:
    f1: float
    precision: float
    recall: float
    threshold: float


# --------------------------------------------------------------------------- input checks


def _check_scores(scores, name="scores") -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if not np.isfinite(scores).all():
        raise MetricInputError(f"{name} hold {int((~np.isfinite(scores)).sum())} NaN or infinite value(s)")
    return scores


def _check_labels(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).ravel().astype(bool)
    scores = _check_scores(scores)
    if labels.shape != scores.shape:
        raise MetricInputError(f"{labels.size} labels but {scores.size} scores")
    if labels.all() or not labels.any():
        raise MetricInputError("labels hold one class only: both normal and anomalous samples are needed")
    return labels, scores


def _as_stack(masks, maps):
    """Lists (or stacks) of 2-D masks and maps, pairwise of equal shape."""
    masks = [np.asarray(m).astype(bool) for m in masks]
    maps = [np.asarray(a) for a in maps]
    if len(masks) != len(maps):
        raise MetricInputError(f"{len(masks)} masks but {len(maps)} maps")
    for k, (m, a) in enumerate(zip(masks, maps)):
        if m.ndim != 2 or a.shape != m.shape:
            raise MetricInputError(f"image {k}: map of shape {a.shape} for a mask of shape {m.shape}")
        if not np.isfinite(a).all():
            raise MetricInputError(f"image {k}: map holds NaN or infinite values")
    return masks, maps


# --------------------------------------------------------------------------- the shared curve


@dataclass(frozen=True)
class DescendingRuns:
    """Positive scores sorted high to low, and where each run of equal scores ends."""

    order: np.ndarray
    last_of_run: np.ndarray
    thresholds: np.ndarray  # the distinct scores, descending

    @classmethod
    def of(cls, scores) -> "DescendingRuns":
        scores = np.asarray(scores, dtype=np.float64)
        order = np.argsort(-scores, kind="stable")
        s = scores[order]
        last_of_run = np.r_[s[1:] != s[:-1], True]
        return cls(order, last_of_run, s[last_of_run])

    def sums(self, values) -> np.ndarray:
        """Cumulative sum of per-score ``values`` at each distinct score: the total of all scoring >= it."""
        return np.cumsum(np.asarray(values, np.float64)[self.order])[self.last_of_run]


@dataclass(frozen=True)
class Curve:
    """Counts at each distinct positive score u (descending), from which every metric follows.

    ``tp[j]``: positives scoring >= u_j; ``fp_at[j]``: negatives >= u_j;
    ``fp_above[j]``: negatives > u_j; ``pro[j]``: mean region overlap at u_j.
    Weights (image multiplicities, in the bootstrap) make every count a sum.
    """

    thresholds: np.ndarray
    tp: np.ndarray
    fp_at: np.ndarray
    fp_above: np.ndarray
    n_pos: float
    n_neg: float
    pro: np.ndarray | None = None

    @classmethod
    def from_sorted(cls, negatives_sorted, pos_scores, pos_weight=None, pro_share=None):
        """Build from ascending negative scores and (unsorted) positive scores.

        ``pos_weight`` weighs each positive (default 1); ``pro_share`` is each
        positive's share of the mean region overlap (1 / (region area x regions)).
        """
        runs = DescendingRuns.of(pos_scores)
        weight = np.ones(len(runs.order)) if pos_weight is None else np.asarray(pos_weight, np.float64)
        n_neg = float(len(negatives_sorted))
        below = np.searchsorted(negatives_sorted, runs.thresholds, side="left")
        at_or_below = np.searchsorted(negatives_sorted, runs.thresholds, side="right")
        pro = None if pro_share is None else runs.sums(pro_share)
        return cls(runs.thresholds, runs.sums(weight), n_neg - below, n_neg - at_or_below, float(weight.sum()), n_neg, pro)

    def auroc(self) -> float:
        """Mann-Whitney: P(score_pos > score_neg) + 0.5 P(equal), over all pairs."""
        pos_at = np.diff(np.r_[0.0, self.tp])
        neg_equal = self.fp_at - self.fp_above
        neg_below = self.n_neg - self.fp_at
        return float((pos_at * (neg_below + 0.5 * neg_equal)).sum() / (self.n_pos * self.n_neg))

    def f1_max(self) -> F1Max:
        f1 = 2 * self.tp / (self.tp + self.fp_at + self.n_pos)
        j = int(np.argmax(f1))  # the first maximum is the highest threshold
        precision = self.tp[j] / (self.tp[j] + self.fp_at[j])
        return F1Max(float(f1[j]), float(precision), float(self.tp[j] / self.n_pos), float(self.thresholds[j]))

    def pro_points(self) -> tuple[np.ndarray, np.ndarray]:
        """The PRO-vs-FPR polyline: from (0, 0), at each u_j first the negatives above u_j
        (PRO unchanged), then the pixels at u_j (both change), ending at FPR 1."""
        fpr_above, fpr_at = self.fp_above / self.n_neg, self.fp_at / self.n_neg
        pro_before = np.r_[0.0, self.pro[:-1]]
        fpr = np.r_[0.0, np.column_stack([fpr_above, fpr_at]).ravel(), 1.0]
        pro = np.r_[0.0, np.column_stack([pro_before, self.pro]).ravel(), self.pro[-1]]
        return fpr, pro

    def pro_auc(self, fpr_limit: float = 0.3) -> float:
        fpr, pro = self.pro_points()
        return area_up_to(fpr, pro, fpr_limit) / fpr_limit


def area_up_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under the polyline (x ascending) from x[0] to ``limit``, y interpolated at the limit."""
    inside = x <= limit
    xs, ys = x[inside], y[inside]
    if xs[-1] < limit:
        k = int(np.searchsorted(x, limit, side="right"))  # first point past the limit
        x0, x1, y0, y1 = x[k - 1], x[k], y[k - 1], y[k]
        y_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        xs, ys = np.r_[xs, limit], np.r_[ys, y_limit]
    return float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2))


# --------------------------------------------------------------------------- image level


def image_auroc(labels, scores) -> float:
    """Area under the ROC curve of image scores (scikit-learn's roc_auc_score)."""
    labels, scores = _check_labels(labels, scores)
    return float(roc_auc_score(labels, scores))


def image_auprc(labels, scores) -> float:
    """Average precision: sum over thresholds of (R_n - R_{n-1}) P_n (scikit-learn's definition)."""
    labels, scores = _check_labels(labels, scores)
    return float(average_precision_score(labels, scores))


def f1_max(labels, scores) -> F1Max:
    """The largest F1 over all thresholds t (predicted anomalous: score >= t), with its precision,
    recall and threshold (the highest threshold that reaches it)."""
    labels, scores = _check_labels(labels, scores)
    return Curve.from_sorted(np.sort(scores[~labels]), scores[labels]).f1_max()


# --------------------------------------------------------------------------- pixel level


@dataclass
class PixelSet:
    """All test pixels, arranged for the shared curve: built once per evaluation.

    Negatives are kept per image (sorted), for the bootstrap's reweighting;
    ``negatives_sorted`` pools them. Each positive pixel knows its image and
    its 8-connected region (numbered over all images).
    """

    negatives_by_image: list[np.ndarray]
    negatives_sorted: np.ndarray
    pos_scores: np.ndarray
    pos_image: np.ndarray
    pos_region: np.ndarray
    region_area: np.ndarray
    region_image: np.ndarray

    @classmethod
    def from_maps(cls, masks, maps) -> "PixelSet":
        masks, maps = _as_stack(masks, maps)
        negatives, pos_scores, pos_image, pos_region, areas, region_image = [], [], [], [], [], []
        offset = 0
        for k, (mask, scores) in enumerate(zip(masks, maps)):
            scores = scores.astype(np.float64, copy=False)
            negatives.append(np.sort(scores[~mask], kind="quicksort"))
            labels, count = ndi.label(mask, structure=EIGHT_CONNECTED)
            if count:
                inside = labels > 0
                pos_scores.append(scores[inside])
                pos_image.append(np.full(int(inside.sum()), k, np.int32))
                pos_region.append((labels[inside] - 1 + offset).astype(np.int64))
                areas.append(np.bincount(labels[inside] - 1, minlength=count))
                region_image.append(np.full(count, k, np.int32))
                offset += count
        if offset == 0:
            raise MetricInputError("the masks hold no defect region: pixel metrics are undefined")
        pooled = np.sort(np.concatenate(negatives))
        if pooled.size == 0:
            raise MetricInputError("the masks hold no normal pixel: pixel metrics are undefined")
        return cls(negatives, pooled, np.concatenate(pos_scores), np.concatenate(pos_image),
                   np.concatenate(pos_region), np.concatenate(areas), np.concatenate(region_image))

    @property
    def n_regions(self) -> int:
        return len(self.region_area)

    def curve(self, regions: np.ndarray | None = None) -> Curve:
        """The curve over all negatives and the positives of ``regions`` (a boolean per region; default all)."""
        keep = np.ones(self.n_regions, bool) if regions is None else np.asarray(regions, bool)
        if not keep.any():
            raise MetricInputError("no defect region selected")
        chosen = keep[self.pos_region]
        share = 1.0 / (self.region_area[self.pos_region[chosen]] * keep.sum())
        return Curve.from_sorted(self.negatives_sorted, self.pos_scores[chosen], pro_share=share)

    def weighted_curve(self, image_weight: np.ndarray, negative_counts: "NegativeCounts") -> Curve:
        """The curve with each image counted ``image_weight[k]`` times (a bootstrap resample)."""
        w = np.asarray(image_weight, np.float64)
        pos_w = w[self.pos_image]
        share = pos_w / (self.region_area[self.pos_region] * w[self.region_image].sum())
        runs = negative_counts.runs
        below, at_or_below = w @ negative_counts.below, w @ negative_counts.at_or_below
        n_neg = float(negative_counts.per_image_total @ w)
        return Curve(runs.thresholds, runs.sums(pos_w), n_neg - below, n_neg - at_or_below, float(pos_w.sum()), n_neg,
                     runs.sums(share))


@dataclass
class NegativeCounts:
    """Per image, how many negatives lie below and at-or-below each distinct positive score (descending).

    Built once for a bootstrap, with the positives' sort: any reweighting of
    images is then a product and a cumulative sum.
    """

    runs: DescendingRuns
    below: np.ndarray  # (images, thresholds), float64: each resample's product then runs in BLAS (8x faster than int32)
    at_or_below: np.ndarray
    per_image_total: np.ndarray

    @classmethod
    def for_pixels(cls, pixels: PixelSet) -> "NegativeCounts":
        runs = DescendingRuns.of(pixels.pos_scores)
        count = lambda side: np.stack([np.searchsorted(neg, runs.thresholds, side=side)
                                       for neg in pixels.negatives_by_image]).astype(np.float64)
        return cls(runs, count("left"), count("right"), np.array([len(n) for n in pixels.negatives_by_image], np.float64))


def pixel_auroc(masks, maps) -> float:
    """Area under the ROC curve of all pixels of all images pooled."""
    return PixelSet.from_maps(masks, maps).curve().auroc()


def pixel_f1_max(masks, maps) -> F1Max:
    """F1-max (as ``f1_max``) over all pixels of all images pooled."""
    return PixelSet.from_maps(masks, maps).curve().f1_max()


def pro_auc(masks, maps, fpr_limit: float = 0.3) -> float:
    """Normalised area under the per-region-overlap curve up to ``fpr_limit`` (MVTec AD's PRO)."""
    if not 0 < fpr_limit <= 1:
        raise MetricInputError("fpr_limit must lie in (0, 1]")
    return PixelSet.from_maps(masks, maps).curve().pro_auc(fpr_limit)


def evaluate(dataset, predictions, **options) -> dict:
    """All eight headline metrics by name for a dataset and a predictions folder (paths or loaded objects).

    A shortcut to :func:`impeller_bench.evaluate.evaluate`, which also gives
    breakdowns and bootstrap intervals.
    """
    from .data import Dataset, load_dataset
    from .evaluate import evaluate as run
    from .predictions import Predictions, load_predictions

    dataset = dataset if isinstance(dataset, Dataset) else load_dataset(dataset)
    predictions = predictions if isinstance(predictions, Predictions) else load_predictions(predictions)
    return run(dataset, predictions, **options)["metrics"]
