"""Every metric against its brute-force definition on small random inputs with many ties."""
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from impeller_bench import metrics
from impeller_bench.metrics import MetricInputError


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
    counts = metrics.NegativeCounts.for_pixels(pixels)
    weights = np.array([2, 0, 1, 3, 1])
    repeated = [k for k, w in enumerate(weights) for _ in range(w)]
    direct = metrics.PixelSet.from_maps([masks[k] for k in repeated], [maps[k] for k in repeated]).curve()
    weighted = pixels.weighted_curve(weights, counts)
    assert weighted.auroc() == pytest.approx(direct.auroc(), abs=1e-12)
    assert weighted.f1_max().f1 == pytest.approx(direct.f1_max().f1, abs=1e-12)
    assert weighted.pro_auc() == pytest.approx(direct.pro_auc(), abs=1e-12)
