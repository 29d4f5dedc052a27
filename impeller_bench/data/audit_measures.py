"""What the shortcut audit measures of each image (acquisition statistics, pretrained features, the
defect-blind regions) and how it tells two sets of images apart (a grouped, cross-validated AUROC)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

from ..common.progress import no_progress

BOOTSTRAP_RESAMPLES = 1000


FOLDS = 5


REGION_DILATION = 1 / 16  # of the image side: how far around a defect nothing is measured


FEATURE_STAGES = ("stage3", "stage5", "stage7")


FEATURE_SIZE = 256  # larger images are measured at this side (the v2 splits' own; a 600-pixel tile costs 6x more)


ACQUISITION_STATISTICS = ("noise", "sharpness", "fine_energy", "contrast", "grey_level_gaps")


@dataclass
class AuditImage:
    """One image as the audit sees it."""

    image: np.ndarray  # 2-D uint8
    role: str  # TRAIN_GOOD, TEST_GOOD or TEST_DEFECT
    source: str
    group: int  # photo group: the unit of folds and of the bootstrap
    mask: np.ndarray | None = None  # defect mask of a test defect
    session: str | None = None  # capture session, where the source names one


def defect_blind_regions(images: Sequence[AuditImage], seed: int) -> list[np.ndarray]:
    """Where each image is measured: outside its dilated defect mask, or outside a borrowed one (good images)."""
    masks = [im.mask for im in images if im.mask is not None and im.mask.any()]
    rng = np.random.default_rng(seed)
    regions = []
    for im in images:
        mask = im.mask if im.mask is not None and im.mask.any() else (
            masks[int(rng.integers(len(masks)))] if masks else np.zeros(im.image.shape, bool))
        if mask.shape != im.image.shape:
            mask = _resize_mask(mask, im.image.shape)
        radius = max(1, int(round(REGION_DILATION * max(im.image.shape))))
        regions.append(~within_distance(mask, radius))
    return regions


def acquisition_statistics(image: np.ndarray, region: np.ndarray) -> dict[str, float]:
    """Defect-blind measures of how a photo was taken and processed, over ``region`` of a 2-D uint8 image.

    - noise: std of the residual after a 3 x 3 median filter;
    - sharpness: mean absolute Laplacian (3 x 3);
    - fine_energy: energy of the finest band (difference of Gaussians 0.5 / 1 px) over the next (1 / 2 px);
    - contrast: std of the grey levels;
    - grey_level_gaps: fraction of grey levels between the 1st and 99th percentile that no pixel takes;
    - brightness: mean grey level.
    """
    a = image.astype(np.float64)
    inner = ndi.binary_erosion(region, iterations=2) if region.sum() > 64 else region
    residual = a - ndi.median_filter(a, 3)
    laplacian = ndi.laplace(a)
    g05, g1, g2 = (ndi.gaussian_filter(a, s) for s in (0.5, 1.0, 2.0))
    fine, next_band = (g05 - g1)[inner], (g1 - g2)[inner]
    values = image[inner]
    lo, hi = np.percentile(values, [1, 99]) if values.size else (0, 0)
    used = np.unique(values[(values >= lo) & (values <= hi)])
    span = int(hi) - int(lo) + 1
    return {
        "noise": float(residual[inner].std()),
        "sharpness": float(np.abs(laplacian[inner]).mean()),
        "fine_energy": float((fine ** 2).mean() / ((next_band ** 2).mean() + 1e-12)),
        "contrast": float(values.std()),
        "grey_level_gaps": float(1 - len(used) / span) if span > 0 else 0.0,
        "brightness": float(values.mean()),
    }


def pretrained_features(images: Sequence[np.ndarray], regions: Sequence[np.ndarray], backbone=None,
                        progress=no_progress, batch_size: int = 16, stage: str = "audit") -> np.ndarray:
    """Per image: each stage of FEATURE_STAGES averaged over the grid cells wholly inside the region; concatenated.
    Each batch is seen square, at its first image's side, at most FEATURE_SIZE."""
    import torch
    import torch.nn.functional as F

    from ..common.backbones import imagenet_tensor, load_backbone

    backbone = backbone or load_backbone("efficientnet_lite0").eval()
    out = []
    starts = list(range(0, len(images), batch_size))
    for start in progress(starts, f"{stage}: pretrained features"):
        chunk = images[start : start + batch_size]
        size = min(max(chunk[0].shape), FEATURE_SIZE)
        with torch.no_grad():
            maps = backbone.features(imagenet_tensor(chunk, size), FEATURE_STAGES)
        region = torch.from_numpy(np.stack([_resize_mask(r, (size, size)) for r in regions[start : start + batch_size]]))
        region = region[:, None].float()
        pooled = []
        for name in FEATURE_STAGES:
            fmap = maps[name]
            inside = (F.adaptive_avg_pool2d(region, fmap.shape[-2:]) > 0.999).float()
            inside = torch.where(inside.sum(dim=(2, 3), keepdim=True) > 0, inside, torch.ones_like(inside))
            pooled.append((fmap * inside).sum(dim=(2, 3)) / inside.sum(dim=(2, 3)))
        out.append(torch.cat(pooled, 1).numpy())
    return np.concatenate(out).astype(np.float64)


def grouped_auroc(x: np.ndarray, labels: np.ndarray, groups: np.ndarray, seed: int, *, fit: bool = True,
                  resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float | None, tuple[float, float] | None, str]:
    """(AUROC, 95% interval, note) of separating labels 1 from 0.

    With ``fit``, scores are out-of-fold logistic-regression scores (folds keep
    groups whole); without, ``x`` (one column) is the score itself and the
    AUROC is reported for whichever direction separates better. The interval
    resamples groups within each label (percentile bootstrap).
    """
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels, bool)
    groups = np.asarray(groups)
    groups_per_label = [len(np.unique(groups[labels == v])) for v in (False, True)]
    if min(groups_per_label) < 2:
        return None, None, f"{min(groups_per_label)} photo group(s) on one side"
    if fit:
        scores = out_of_fold_scores(x, labels, groups, seed)
        if scores is None:
            return None, None, "too few photo groups to cross-validate"
        flip = 1.0
    else:
        scores = np.asarray(x, np.float64).ravel()
        flip = 1.0 if roc_auc_score(labels, scores) >= 0.5 else -1.0
    scores = flip * scores
    auroc = float(roc_auc_score(labels, scores))
    rng = np.random.default_rng(seed)
    members = {v: [np.nonzero((groups == g) & (labels == v))[0] for g in np.unique(groups[labels == v])] for v in (False, True)}
    values = []
    for _ in range(resamples):
        pick = np.concatenate([members[v][k] for v in (False, True)
                               for k in rng.integers(len(members[v]), size=len(members[v]))])
        values.append(roc_auc_score(labels[pick], scores[pick]))
    low, high = np.percentile(values, [2.5, 97.5])
    note = "" if fit else ("higher in the second set" if flip > 0 else "lower in the second set")
    return auroc, (float(low), float(high)), note


def out_of_fold_scores(x, labels, groups, seed) -> np.ndarray | None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = min(FOLDS, *(len(np.unique(groups[labels == v])) for v in (False, True)))
    if folds < 2:
        return None
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = np.zeros(len(labels))
    for train, test in splitter.split(x, labels, groups):
        if len(np.unique(labels[train])) < 2:
            return None
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000))
        model.fit(x[train], labels[train])
        scores[test] = model.decision_function(x[test])
    return scores


def one_hot(values) -> np.ndarray:
    names = sorted(set(values))
    return np.array([[v == name for name in names] for v in values], np.float64)


def defect_blind_measures(images: Sequence[AuditImage], seed: int, features: bool = True, backbone=None,
                          progress=no_progress, stage: str = "audit") -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """({statistic: value per image}, pooled pretrained features per image or None), outside the defect regions.
    ``stage`` names the work in the progress lines (the audit, or the matching)."""
    regions = defect_blind_regions(images, seed)
    stats = [acquisition_statistics(im.image, r) for im, r in zip(progress(images, f"{stage}: statistics"), regions)]
    table = {name: np.array([s[name] for s in stats]) for name in stats[0]} if stats else {}
    pooled = pretrained_features([im.image for im in images], regions, backbone, progress, stage=stage) \
        if features else None
    return table, pooled


def within_distance(mask: np.ndarray, radius: int) -> np.ndarray:
    """Pixels within ``radius`` (Euclidean, inclusive) of a mask pixel: the mask dilated by a disc of that radius,
    from the exact distance transform (a dilation by a 81-pixel disc takes seconds on a 600-pixel image)."""
    if not mask.any():
        return np.zeros(mask.shape, bool)
    return ndi.distance_transform_edt(~mask) <= radius


def _resize_mask(mask: np.ndarray, shape) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((shape[1], shape[0]), Image.NEAREST)) > 0
