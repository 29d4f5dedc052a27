"""Every metric against its brute-force definition on small random inputs with many ties."""
import numpy as np
import pytest
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
)

from impeller_bench.common import metrics
from impeller_bench.common.metrics import MetricInputError

# --------------------------------------------------------------------------- brute force, by definition


def brute_auroc(labels, scores):
    pos, neg = scores[labels], scores[~labels]
    return np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])


def brute_f1_max(labels, scores):
    best = (-1, 0, 0, 0)
    for t in sorted(set(scores), reverse=True):  # every distinct score as a threshold, highest first
        pred = scores >= t
        tp = np.sum(pred & labels)
        fp = np.sum(pred & ~labels)
        p, r = tp / (tp + fp), tp / labels.sum()
        f1 = 0.0 if tp == 0 else 2 * p * r / (p + r)
        if f1 > best[0] + 1e-15:
            best = (f1, p, r, t)
    return best


def components_by_hand(mask):
    """8-connected components by flood fill: a list of lists of (y, x)."""
    seen = np.zeros_like(mask, bool)
    regions = []
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        stack, region = [(y, x)], []
        seen[y, x] = True
        while stack:
            cy, cx = stack.pop()
            region.append((cy, cx))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = cy + dy, cx + dx
                    if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        stack.append((ny, nx))
        regions.append(region)
    return regions


def brute_pro(masks, maps, limit):
    regions = [(k, r) for k, m in enumerate(masks) for r in components_by_hand(m)]
    negatives = np.concatenate([a[~m] for m, a in zip(masks, maps)])
    thresholds = sorted(set(np.concatenate([a.ravel() for a in maps])), reverse=True)
    fpr, pro = [0.0], [0.0]
    for t in thresholds:
        fpr.append(np.mean(negatives >= t))
        pro.append(np.mean([np.mean([maps[k][y, x] >= t for y, x in r]) for k, r in regions]))
    fpr, pro = np.array(fpr), np.array(pro)
    area, k = 0.0, 1
    while k < len(fpr) and fpr[k] <= limit:
        area += (fpr[k] - fpr[k - 1]) * (pro[k] + pro[k - 1]) / 2
        k += 1
    if fpr[k - 1] < limit:
        y = pro[k - 1] + (pro[k] - pro[k - 1]) * (limit - fpr[k - 1]) / (fpr[k] - fpr[k - 1])
        area += (limit - fpr[k - 1]) * (y + pro[k - 1]) / 2
    return area / limit


def random_case(seed, n_images=4, shape=(7, 6), levels=5):
    rng = np.random.default_rng(seed)
    masks = [rng.random(shape) < rng.uniform(0.05, 0.4) for _ in range(n_images)]
    masks[0][0, 0] = True
    masks[1][:] = False  # a good image
    maps = [np.round(rng.random(shape) * levels + 1.5 * m) / levels for m in masks]  # few levels: many ties
    return masks, maps


# --------------------------------------------------------------------------- image level


@pytest.mark.parametrize("seed", range(12))
def test_image_metrics_match_definitions_and_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(30) < 0.4
    labels[:2] = [True, False]
    scores = np.round(rng.random(30) * 4 + labels) / 4
    assert metrics.image_auroc(labels, scores) == pytest.approx(brute_auroc(labels, scores), abs=1e-9)
    assert metrics.image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
    assert metrics.image_auprc(labels, scores) == pytest.approx(average_precision_score(labels, scores), abs=1e-9)
    got = metrics.f1_max(labels, scores)
    f1, p, r, t = brute_f1_max(labels, scores)
    assert (got.f1, got.precision, got.recall, got.threshold) == pytest.approx((f1, p, r, t), abs=1e-9)
    precision, recall, _ = precision_recall_curve(labels, scores)
    sk_f1 = np.max(np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-300), 0))
    assert got.f1 == pytest.approx(sk_f1, abs=1e-9)


def test_all_scores_equal():
    labels = np.array([1, 0, 1, 0, 0], bool)
    scores = np.full(5, 0.3)
    assert metrics.image_auroc(labels, scores) == 0.5
    f1 = metrics.f1_max(labels, scores)
    assert (f1.f1, f1.precision, f1.recall, f1.threshold) == pytest.approx((2 * 0.4 / 1.4, 0.4, 1.0, 0.3))
    masks = [np.array([[1, 0], [0, 0]], bool), np.zeros((2, 2), bool)]
    maps = [np.full((2, 2), 2.0), np.full((2, 2), 2.0)]
    assert metrics.pixel_auroc(masks, maps) == 0.5
    # One threshold: the curve jumps from (0, 0) straight to (1, 1); up to 0.3 PRO rises on the diagonal.
    assert metrics.pro_auc(masks, maps) == pytest.approx(0.15)


# --------------------------------------------------------------------------- pixel level


@pytest.mark.parametrize("seed", range(15))
def test_pixel_metrics_match_definitions(seed):
    masks, maps = random_case(seed)
    labels = np.concatenate([m.ravel() for m in masks])
    scores = np.concatenate([a.ravel() for a in maps])
    assert metrics.pixel_auroc(masks, maps) == pytest.approx(brute_auroc(labels, scores), abs=1e-9)
    assert metrics.pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
    got = metrics.pixel_f1_max(masks, maps)
    assert (got.f1, got.precision, got.recall, got.threshold) == pytest.approx(brute_f1_max(labels, scores), abs=1e-9)
    for limit in (0.3, 0.05, 1.0):
        assert metrics.pro_auc(masks, maps, limit) == pytest.approx(brute_pro(masks, maps, limit), abs=1e-9)


def test_single_one_pixel_region():
    mask = np.zeros((5, 5), bool)
    mask[2, 3] = True
    scores = np.arange(25, dtype=float).reshape(5, 5)  # the defect pixel, 13, is beaten by 11 negatives
    assert metrics.pixel_auroc([mask], [scores]) == pytest.approx(13 / 24)
    assert metrics.pro_auc([mask], [scores], 0.3) == pytest.approx(brute_pro([mask], [scores], 0.3), abs=1e-12)
    assert metrics.pro_auc([mask], [scores], 1.0) == pytest.approx(13 / 24)


def test_diagonal_touch_is_one_region():
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = mask[1, 1] = True  # touch at a corner only: one 8-connected region
    mask[3, 3] = True  # a second region
    scores = np.zeros((4, 4))
    scores[0, 0] = 1.0  # half of region one, none of region two
    pixels = metrics.PixelSet.from_maps([mask], [scores])
    assert pixels.n_regions == 2 and sorted(pixels.region_area) == [1, 2]
    assert metrics.pro_auc([mask], [scores], 1.0) == pytest.approx(brute_pro([mask], [scores], 1.0), abs=1e-12)


def test_pro_weighs_regions_equally():
    mask = np.zeros((10, 10), bool)
    mask[0:6, 0:6] = True  # a large region, fully found
    mask[9, 9] = True  # a one-pixel region, missed
    scores = np.where(mask, 1.0, 0.0)
    scores[9, 9] = 0.0
    curve = metrics.PixelSet.from_maps([mask], [scores]).curve()
    assert curve.pro[0] == pytest.approx(0.5)  # at t = 1: one region of two, whatever their sizes


@pytest.mark.parametrize("bad", ["nan", "one-class", "shape"])
def test_bad_inputs_are_refused(bad):
    labels, scores = np.array([1, 0, 1], bool), np.array([0.2, 0.1, 0.3])
    if bad == "nan":
        with pytest.raises(MetricInputError, match="NaN"):
            metrics.image_auroc(labels, np.array([0.2, np.nan, 0.3]))
    elif bad == "one-class":
        with pytest.raises(MetricInputError, match="one class"):
            metrics.f1_max(np.ones(3, bool), scores)
        with pytest.raises(MetricInputError, match="no defect region"):
            metrics.pixel_auroc([np.zeros((2, 2), bool)], [np.zeros((2, 2))])
        with pytest.raises(MetricInputError, match="no normal pixel"):
            metrics.pixel_auroc([np.ones((2, 2), bool)], [np.zeros((2, 2))])
    else:
        with pytest.raises(MetricInputError, match="shape"):
            metrics.pixel_auroc([np.ones((2, 2), bool)], [np.zeros((3, 2))])


def test_bootstrap_reweighting_equals_repeating_images():
    masks, maps = random_case(3, n_images=5)
    pixels = metrics.PixelSet.from_maps(masks, maps)
    weights = np.array([2, 0, 1, 3, 1])
    repeated = [k for k, w in enumerate(weights) for _ in range(w)]
    direct = metrics.PixelSet.from_maps([masks[k] for k in repeated], [maps[k] for k in repeated]).curve()
    weighted = pixels.weighted_curve(weights)
    as_floats = pixels.weighted_curve(weights.astype(float))  # the general path, beside the integer one
    assert as_floats.auroc() == weighted.auroc() and as_floats.pro_auc() == weighted.pro_auc()
    assert weighted.auroc() == pytest.approx(direct.auroc(), abs=1e-12)
    assert weighted.f1_max().f1 == pytest.approx(direct.f1_max().f1, abs=1e-12)
    assert weighted.pro_auc() == pytest.approx(direct.pro_auc(), abs=1e-12)


# --------------------------------------------------------------------------- exact counting, precision, memory


def rank_cases():
    rng = np.random.default_rng(7)
    yield "ties", np.round(rng.normal(size=300), 1), np.round(rng.normal(size=2000), 1)
    crowded = np.r_[rng.normal(size=50), 1 + 1e-6 * rng.random(400)]  # 400 thresholds in one tiny cell
    yield "crowded", crowded, np.r_[rng.normal(size=1000), 1 + 1e-6 * rng.random(1000)]
    yield "signed zeros", np.array([-1.0, -0.0, 2.0]), np.array([0.0, -0.0, -1.0, 3.0, -5.0, 2.0])
    yield "one threshold", np.array([0.5]), np.array([0.4, 0.5, 0.6, -1e30, 1e30])
    yield "span past the float range", np.array([-3e38, 0.0, 3e38]), np.array([-3.4e38, -1.0, 0.0, 2e38, 3.4e38])
    yield "values beyond the range", np.linspace(0, 1, 50), np.r_[np.linspace(-2, 3, 500), [np.inf, -np.inf]]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,thresholds,values", list(rank_cases()), ids=[c[0] for c in rank_cases()])
def test_rank_among_thresholds_is_exact(name, thresholds, values, dtype):
    u = np.unique(thresholds.astype(dtype))
    values = values.astype(dtype)
    rank, tie = metrics.Thresholds(u).rank(values)
    np.testing.assert_array_equal(rank, np.searchsorted(u, values, side="right"))
    np.testing.assert_array_equal(tie, np.isin(values, u))


def offset_case(seed=0):
    """The field report: maps of 1e6 + small differences, which float32 turns into one constant."""
    rng = np.random.default_rng(seed)
    masks = [np.zeros((16, 16), bool) for _ in range(6)]
    for m in masks[3:]:
        y, x = rng.integers(0, 10, 2)
        m[y:y + 5, x:x + 5] = True
    maps = [1e6 + 0.02 * rng.random((16, 16)) + 0.01 * m for m in masks]
    return masks, maps


def test_float64_maps_are_scored_at_their_own_precision():
    masks, maps = offset_case()
    assert len(np.unique(np.concatenate([a.astype(np.float32).ravel() for a in maps]))) < 4  # what rounding did
    labels = np.concatenate([m.ravel() for m in masks])
    pooled = np.concatenate([a.ravel() for a in maps])
    expected = brute_auroc(labels, pooled)
    assert expected > 0.8
    assert metrics.pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-12)
    assert metrics.pro_auc(masks, maps) == pytest.approx(brute_pro(masks, maps, 0.3), abs=1e-12)


def test_integer_maps_are_exact_and_huge_ones_refused():
    masks, maps = random_case(2)
    as_integers = [np.round(a * 5).astype(np.int64) for a in maps]
    assert metrics.pixel_auroc(masks, as_integers) == pytest.approx(metrics.pixel_auroc(masks, maps), abs=1e-12)
    with pytest.raises(MetricInputError, match="2\\*\\*53"):
        metrics.pixel_auroc(masks, [a + 2 ** 60 for a in as_integers])
    with pytest.raises(MetricInputError, match="complex"):
        metrics.pixel_auroc(masks, [a.astype(np.complex64) for a in maps])


def test_pixel_metrics_in_one_call_equal_the_three_functions():
    masks, maps = random_case(5, n_images=6)
    together = metrics.pixel_metrics(masks, maps, 0.3)
    assert together["pixel_auroc"] == metrics.pixel_auroc(masks, maps)
    assert together["pixel_pro"] == metrics.pro_auc(masks, maps, 0.3)
    assert together["pixel_f1_max"] == metrics.pixel_f1_max(masks, maps)


def traced_peak(function) -> int:
    import tracemalloc

    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_bootstrap_memory_grows_linearly_in_the_pixels():
    """Every pixel score distinct, so the positives' distinct scores grow with the images: a table of
    images x thresholds (the former per-image counts) would grow 4x when the images double."""
    rng = np.random.default_rng(0)

    def case(n_images):
        masks = [np.zeros((96, 96), bool) for _ in range(n_images)]
        for m in masks[n_images // 4:]:
            y, x = rng.integers(0, 60, 2)
            m[y:y + 30, x:x + 30] = True
        return masks, [rng.random((96, 96)).astype(np.float32) + 0.3 * m for m in masks]

    def build_and_resample(masks, maps):
        pixels = metrics.PixelSet.from_maps(masks, maps)
        weights = np.random.default_rng(1).integers(0, 3, len(masks))
        pixels.weighted_curve(weights).pro_auc()

    small, large = case(16), case(32)
    peak_small, peak_large = traced_peak(lambda: build_and_resample(*small)), traced_peak(lambda: build_and_resample(*large))
    pixels_large = 32 * 96 * 96
    assert peak_large / peak_small < 2.6, (peak_small, peak_large)
    assert peak_large / pixels_large < 64, peak_large / pixels_large  # bytes per pixel, beside the maps themselves
