"""What an entry's web page shows beyond its submission, computed once from the built split and its committed
predictions: the ROC and PRO curves, the per-class and per-region-size breakdowns, and the test images where its
map does best and worst.

They need the split's masks, which the repository never holds, so ``leaderboard build`` computes them (it has
the built splits) and the site keeps them beside each entry page (``figures.json``): ``build --check`` then
renders the site from the submissions and these files without the data, and a figures file made from other
maps or another split than its entry's is out of date (each records the sha256 of both).
"""
from __future__ import annotations

import numpy as np

from ..common import metrics
from ..evaluation.evaluate import FPR_LIMIT, breakdown, load_inputs, resize_map
from ..evaluation.predictions import load_predictions
from .review import maps_digest
from .submission import PREDICTIONS_DIR

FIGURES_FORMAT = 1  # bump when what figures.json holds changes, so that --check asks for a rebuild


EXAMPLES_EACH = 3  # the best and the worst test images shown, each


CURVE_POINTS = 101


def entry_key(entry: dict) -> dict:
    """What an entry's figures were computed from: they are current while this is unchanged."""
    return {"format": FIGURES_FORMAT, "maps_sha256": maps_digest(entry["_folder"]),
            "manifest_sha256": entry["dataset"]["manifest_sha256"]}


def entry_figures(entry: dict, dataset) -> dict:
    """The figures of one entry on its built split ``dataset`` (already checked to be the published one)."""
    predictions = load_predictions(entry["_folder"] / PREDICTIONS_DIR)
    inputs = load_inputs(dataset, predictions)
    figures = entry_key(entry) | {"curves": {}, "breakdown": _rounded(breakdown(inputs)), "examples": []}
    if inputs.image_level:
        figures["curves"]["image_roc"] = _roc_points(metrics.Curve.from_scores(inputs.scores[~inputs.labels],
                                                                               inputs.scores[inputs.labels]))
    if inputs.pixels is not None:
        curve = inputs.pixels.curve()
        figures["curves"]["pixel_roc"] = _roc_points(curve)
        fpr, pro = curve.pro_points()
        grid = np.linspace(0, FPR_LIMIT, CURVE_POINTS)
        figures["curves"]["pro"] = {"fpr": _list(grid), "pro": _list(np.interp(grid, fpr, pro))}
        figures["examples"] = _examples(dataset, predictions)
    return figures


def _examples(dataset, predictions) -> list[dict]:
    """The defective test images where the map separates the defect from the rest of its image best and worst:
    ranked by the image's own pixel AUROC (defect pixels against the image's normal pixels), ties by id."""
    rated = []
    for sample in dataset.test:
        if sample.label == "good" or sample.mask_path is None:
            continue
        mask = sample.load_mask() > 0
        if mask.all() or not mask.any():
            continue
        heat = resize_map(predictions.load_map(sample.id), mask.shape)
        rated.append((metrics.image_auroc(mask.ravel(), heat.ravel()), sample.id))
    rated.sort(key=lambda pair: (-pair[0], pair[1]))
    best = rated[:EXAMPLES_EACH]
    worst = [pair for pair in rated[-EXAMPLES_EACH:] if pair not in best]  # best to worst, as shown
    return ([{"id": i, "pixel_auroc": round(a, 6), "kind": "best"} for a, i in best]
            + [{"id": i, "pixel_auroc": round(a, 6), "kind": "worst"} for a, i in worst])


def _roc_points(curve: metrics.Curve) -> dict:
    """True positive rate on an even grid of false positive rates (the curve's steps, linearly between)."""
    fpr = np.r_[0.0, curve.fp_at / curve.n_neg, 1.0]
    tpr = np.r_[0.0, curve.tp / curve.n_pos, 1.0]
    grid = np.linspace(0, 1, CURVE_POINTS)
    return {"fpr": _list(grid), "tpr": _list(np.interp(grid, fpr, tpr)), "auroc": round(curve.auroc(), 6)}


def _list(values) -> list[float]:
    return [round(float(v), 6) for v in values]


def _rounded(value):
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return round(value, 6) if isinstance(value, float) else value
