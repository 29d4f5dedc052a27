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

How it is fast and small: every metric changes only at the positives' scores
(F1 can only rise between them, the ROC and PRO curves are straight segments
there), so the (few) positive pixels are sorted and the (many) negatives are
only counted below and at each distinct positive score, per image, without
sorting them (``Thresholds.rank``). Those counts are kept sparse, one entry at
most per negative pixel, so memory grows with the pixels, and any bootstrap
resample is one weighted count. ``pixel_metrics`` gives all three pixel
metrics from one such pass.

Scores are compared at their own precision: float16 and float32 as float32,
float64 and integers as float64; nothing is rounded to a coarser type.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy import sparse
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


# --------------------------------------------------------------------------- exact counting


def working_dtype(arrays) -> np.dtype:
    """The float type every array converts to exactly: float32 for float16/float32 alone, float64 otherwise.

    Integers must fit float64's 53-bit mantissa; anything else (complex, bool,
    object) is refused, so no conversion here can change a ranking.
    """
    dtypes = {np.asarray(a).dtype for a in arrays}
    for dtype in dtypes:
        if dtype.kind not in "fiu" or dtype.itemsize > 8:
            raise MetricInputError(f"scores of type {dtype} are not supported (float or integer needed)")
    if all(d.kind == "f" and d.itemsize <= 4 for d in dtypes):
        return np.dtype(np.float32)
    for a in arrays:
        a = np.asarray(a)
        if a.dtype.kind in "iu" and a.dtype.itemsize == 8 and a.size and np.abs(a).max() > 2 ** 53:
            raise MetricInputError("integer scores beyond 2**53 cannot be compared exactly as floats")
    return np.dtype(np.float64)


class Thresholds:
    """Distinct scores u_0 < ... < u_{m-1} and an exact, sort-free rank of many values among them.

    ``rank(x)`` is the number of thresholds <= x. A grid of about 4m equal
    cells over [u_0, u_{m-1}] gives each value a cell by a monotone computation
    (rounding never reorders), so every threshold in a lower cell is below the
    value: counting those is one table look-up, and a short walk through the
    value's own cell finishes the count with exact comparisons. That reads each
    value a few times instead of sorting them all (the negatives are many, the
    thresholds few).
    """

    CELLS_PER_THRESHOLD = 4
    WALK_STEPS = 8  # beyond this, a crowded cell's values fall back to binary search

    def __init__(self, distinct_ascending: np.ndarray):
        self.values = distinct_ascending
        self.size = len(distinct_ascending)
        low, high = float(distinct_ascending[0]), float(distinct_ascending[-1])
        self.cells = self.CELLS_PER_THRESHOLD * self.size
        span = high - low
        self.low = distinct_ascending.dtype.type(low)
        scale = self.cells / span if 0 < span < np.inf else 0.0
        self.scale = distinct_ascending.dtype.type(scale if np.isfinite(scale) else 0.0)
        self.first_in_cell = np.searchsorted(self.cell(distinct_ascending), np.arange(self.cells), side="left")

    @classmethod
    def of(cls, scores: np.ndarray) -> "Thresholds":
        return cls(np.unique(scores))

    def cell(self, values: np.ndarray) -> np.ndarray:
        """A cell per value, non-decreasing in the value (each step is a rounded monotone operation)."""
        if self.scale == 0:  # one threshold, or a span past the float range: one cell, the walk decides
            return np.zeros(values.shape, np.int64)
        with np.errstate(over="ignore", invalid="ignore"):
            position = (values - self.low) * self.scale
        return np.clip(position, 0, self.cells - 1).astype(np.int64)

    def rank(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each value: how many thresholds are <= it, and whether it equals one of them."""
        values = np.ascontiguousarray(values, dtype=self.values.dtype).ravel()
        rank = self.first_in_cell[self.cell(values)]  # thresholds in lower cells: all below the value
        tie = np.zeros(values.shape, bool)
        walking = np.flatnonzero(rank < self.size)
        for _ in range(self.WALK_STEPS):
            if walking.size == 0:
                break
            nearest, own = self.values[rank[walking]], values[walking]
            passed = nearest <= own
            walking = walking[passed]
            tie[walking] = nearest[passed] == own[passed]
            rank[walking] += 1
            walking = walking[rank[walking] < self.size]
        if walking.size:
            rank[walking] = np.searchsorted(self.values, values[walking], side="right")
            tie[walking] = self.values[rank[walking] - 1] == values[walking]
        return rank, tie

    def index_of(self, members: np.ndarray) -> np.ndarray:
        """Positions of values known to be thresholds."""
        return np.searchsorted(self.values, members)


class RankCounts:
    """Values counted against thresholds, per row (an image): how many rank r (0..m), how many equal u_j.

    Each row is kept sparse (a column of a sparse matrix: at most one entry
    per value), so memory grows with the values, never rows x thresholds; any
    weighting of the rows (a bootstrap resample) is one sparse product.
    """

    def __init__(self, n_thresholds: int):
        self.n_thresholds = n_thresholds
        self._columns: dict[str, list] = {"rank": [], "tie": []}
        self.row_total: list[int] | np.ndarray = []

    def add_values(self, thresholds: Thresholds, values: np.ndarray) -> None:
        """One row: ``values`` ranked among ``thresholds``, kept as (position, count) pairs.

        Counting the row's distinct ranks costs O(values log values) where the thresholds outnumber them (one
        test image's pixels against all images' distinct defect scores), never O(thresholds) per row.
        """
        rank, tie = thresholds.rank(values)
        self.row_total.append(int(rank.size))
        rows = (("rank", rank, self.n_thresholds + 1), ("tie", rank[tie] - 1, self.n_thresholds))
        for name, positions, length in rows:
            if length <= 4 * positions.size:  # a dense histogram is cheaper than sorting
                histogram = np.bincount(positions, minlength=length)
                where = np.flatnonzero(histogram)
                count = histogram[where]
            else:
                where, count = np.unique(positions, return_counts=True)
            self._columns[name].append((where.astype(np.int32), count.astype(np.int32)))

    def finish(self) -> None:
        self.row_total = np.array(self.row_total, np.int64)
        lengths = {"rank": self.n_thresholds + 1, "tie": self.n_thresholds}
        self._matrices = {name: _sparse_columns(columns, lengths[name]) for name, columns in self._columns.items()}
        # summed in int64: one threshold's count over all images can exceed int32
        self.rank_total, self.tie_total = (np.asarray(self._matrices[name].sum(axis=1, dtype=np.int64)).ravel()
                                           for name in ("rank", "tie"))
        self._columns = None

    def below_and_equal(self, row_weight: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, float]:
        """Per threshold (ascending): weighted count of values below it and equal to it, and the weighted total."""
        if row_weight is None:
            rank_histogram, ties, total = self.rank_total, self.tie_total, float(self.row_total.sum())
        else:
            w = np.asarray(row_weight)
            # integer weights whose largest possible count fits int32 run in int32, exactly and fastest
            small = (np.issubdtype(w.dtype, np.integer) and w.min(initial=0) >= 0
                     and int(w.sum()) * int(self.row_total.max(initial=0)) < 2 ** 31)
            w = w.astype(np.int32) if small else w.astype(np.float64)
            rank_histogram, ties = (self._matrices[name].astype(w.dtype, copy=False) @ w for name in ("rank", "tie"))
            total = float(self.row_total @ w)
        # a value ranks r when exactly r thresholds are <= it, so it lies below u_j for every j >= r
        below = np.cumsum(rank_histogram, dtype=np.float64)[:-1]
        return below, ties.astype(np.float64), total


def _sparse_columns(columns, length):
    """A (length x rows) sparse matrix of int32 counts, one column per row's (positions, counts)."""
    indptr = np.r_[0, np.cumsum([len(c) for c, _ in columns])].astype(np.int64)
    positions = np.concatenate([c for c, _ in columns]) if columns else np.zeros(0, np.int32)
    counts = np.concatenate([n for _, n in columns]) if columns else np.zeros(0, np.int32)
    return sparse.csc_matrix((counts, positions, indptr), shape=(length, len(columns)))


# --------------------------------------------------------------------------- the shared curve


@dataclass(frozen=True)
class DescendingRuns:
    """Positive scores sorted high to low, and where each run of equal scores ends."""

    order: np.ndarray
    last_of_run: np.ndarray
    thresholds: np.ndarray  # the distinct scores, descending

    @classmethod
    def of(cls, scores) -> "DescendingRuns":
        scores = np.asarray(scores)
        order = np.argsort(scores, kind="stable")[::-1]
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
    def from_counts(cls, thresholds: Thresholds, negatives: tuple, pos_scores, pos_weight=None, pro_share=None,
                    runs: DescendingRuns | None = None):
        """Build from the negatives' counts against ``thresholds`` (``RankCounts.below_and_equal``) and
        positive scores, each of which is one of the thresholds.

        ``pos_weight`` weighs each positive (default 1); ``pro_share`` is each
        positive's share of the mean region overlap (1 / (region area x regions));
        ``runs``, the positives' order, where the caller keeps it (the bootstrap reuses it).
        """
        below, equal, n_neg = negatives
        runs = runs or DescendingRuns.of(pos_scores)
        weight = np.ones(len(runs.order)) if pos_weight is None else np.asarray(pos_weight, np.float64)
        every = len(runs.thresholds) == thresholds.size  # all thresholds, high to low: no look-up needed
        at = np.arange(thresholds.size - 1, -1, -1) if every else thresholds.index_of(runs.thresholds)
        fp_at = n_neg - below[at]
        pro = None if pro_share is None else runs.sums(pro_share)
        return cls(runs.thresholds, runs.sums(weight), fp_at, fp_at - equal[at], float(weight.sum()), n_neg, pro)

    @classmethod
    def from_scores(cls, negative_scores, pos_scores):
        """The curve of two plain score arrays (image level)."""
        dtype = working_dtype([negative_scores, pos_scores])
        negative_scores, pos_scores = np.asarray(negative_scores, dtype), np.asarray(pos_scores, dtype)
        thresholds = Thresholds.of(pos_scores)
        counts = RankCounts(thresholds.size)
        counts.add_values(thresholds, negative_scores)
        counts.finish()
        return cls.from_counts(thresholds, counts.below_and_equal(), pos_scores)

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


def image_metrics_defined(labels) -> bool:
    """Whether the image metrics are defined on these test labels: good and defect images both present (a
    localization track, all defect, defines the pixel metrics only)."""
    labels = np.asarray(labels, bool)
    return bool(labels.any() and not labels.all())


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
    return Curve.from_scores(scores[~labels], scores[labels]).f1_max()


# --------------------------------------------------------------------------- pixel level


@dataclass
class PixelSet:
    """All test pixels, arranged for the shared curve: built once per evaluation.

    The positives (defect pixels) are kept with their image and 8-connected
    region (numbered over all images). The negatives are not kept: each image's
    are counted against the positives' distinct scores (``RankCounts``), which
    is all any curve, sub-curve or bootstrap resample needs of them.
    """

    thresholds: Thresholds
    negatives: RankCounts
    pos_scores: np.ndarray
    pos_image: np.ndarray
    pos_region: np.ndarray
    region_area: np.ndarray
    region_image: np.ndarray
    _positives_order: DescendingRuns | None = None  # kept for the bootstrap's many curves

    @classmethod
    def from_maps(cls, masks, maps) -> "PixelSet":
        masks, maps = _as_stack(masks, maps)
        dtype = working_dtype(maps)
        pos_scores, pos_image, pos_region, areas, region_image = [], [], [], [], []
        negatives_of_image = []
        offset = 0
        for k, (mask, scores) in enumerate(zip(masks, maps)):
            labels, count = ndi.label(mask, structure=EIGHT_CONNECTED)
            if count:
                inside = labels > 0
                pos_scores.append(scores[inside].astype(dtype, copy=False))
                negatives_of_image.append(scores[~inside].astype(dtype, copy=False))
                pos_image.append(np.full(int(inside.sum()), k, np.int32))
                pos_region.append((labels[inside] - 1 + offset).astype(np.int64))
                areas.append(np.bincount(labels[inside] - 1, minlength=count))
                region_image.append(np.full(count, k, np.int32))
                offset += count
            else:
                negatives_of_image.append(scores.ravel().astype(dtype, copy=False))
        if offset == 0:
            raise MetricInputError("the masks hold no defect region: pixel metrics are undefined")
        if sum(m.size for m in masks) == sum(len(p) for p in pos_scores):
            raise MetricInputError("the masks hold no normal pixel: pixel metrics are undefined")
        positives = np.concatenate(pos_scores)
        thresholds = Thresholds.of(positives)
        negatives = RankCounts(thresholds.size)
        for image_negatives in negatives_of_image:
            negatives.add_values(thresholds, image_negatives)
        negatives.finish()
        return cls(thresholds, negatives, positives, np.concatenate(pos_image), np.concatenate(pos_region),
                   np.concatenate(areas), np.concatenate(region_image))

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
        return Curve.from_counts(self.thresholds, self.negatives.below_and_equal(), self.pos_scores[chosen],
                                 pro_share=share)

    def weighted_curve(self, image_weight: np.ndarray) -> Curve:
        """The curve with each image counted ``image_weight[k]`` times (a bootstrap resample)."""
        w = np.asarray(image_weight, np.float64)
        pos_w = w[self.pos_image]
        share = pos_w / (self.region_area[self.pos_region] * w[self.region_image].sum())
        if self._positives_order is None:
            self._positives_order = DescendingRuns.of(self.pos_scores)
        return Curve.from_counts(self.thresholds, self.negatives.below_and_equal(np.asarray(image_weight)),
                                 self.pos_scores, pos_w, share, runs=self._positives_order)


def pixel_metrics(masks, maps, fpr_limit: float = 0.3) -> dict:
    """All pixel metrics from one pass over the pixels: ``pixel_auroc``, ``pixel_pro`` (up to ``fpr_limit``)
    and ``pixel_f1_max`` (an :class:`F1Max`). Cheaper than the three functions one by one, which each
    rebuild the :class:`PixelSet`."""
    _check_fpr_limit(fpr_limit)
    curve = PixelSet.from_maps(masks, maps).curve()
    return {"pixel_auroc": curve.auroc(), "pixel_pro": curve.pro_auc(fpr_limit), "pixel_f1_max": curve.f1_max()}


def _check_fpr_limit(fpr_limit: float) -> None:
    if not 0 < fpr_limit <= 1:
        raise MetricInputError("fpr_limit must lie in (0, 1]")


def pixel_auroc(masks, maps) -> float:
    """Area under the ROC curve of all pixels of all images pooled."""
    return PixelSet.from_maps(masks, maps).curve().auroc()


def pixel_f1_max(masks, maps) -> F1Max:
    """F1-max (as ``f1_max``) over all pixels of all images pooled."""
    return PixelSet.from_maps(masks, maps).curve().f1_max()


def pro_auc(masks, maps, fpr_limit: float = 0.3) -> float:
    """Normalised area under the per-region-overlap curve up to ``fpr_limit`` (MVTec AD's PRO)."""
    _check_fpr_limit(fpr_limit)
    return PixelSet.from_maps(masks, maps).curve().pro_auc(fpr_limit)
