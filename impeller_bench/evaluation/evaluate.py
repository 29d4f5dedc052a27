"""The reference evaluator: a dataset and a predictions folder in, every benchmark metric out.

A test set needs defect images. Without good test images (a localization
track) the image metrics are not defined and are left out; the pixel metrics
count false positives over the normal pixels of the defect images.

Also: per defect class and per region-size bucket pixel metrics, 95%
bootstrap intervals (test images resampled with replacement, seeded; whole
photo groups instead where the dataset's manifest asks for it, because its
test set holds several variants of one photo), and a paired bootstrap
comparison of two predictions folders.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..common import metrics
from ..common.errors import ImpellerBenchError
from ..common.progress import no_progress
from ..data.dataset import Dataset, load_dataset
from ..data.validate import require_valid
from .predictions import Predictions, check_against, load_predictions
from .significance import (
    detectable_difference,
    difference_interval,
    percentile_interval,
    verdict,
)

FPR_LIMIT = 0.3
IMAGE_METRICS_UNDEFINED = "image metrics: not defined (no good test images)"
# Region-size buckets as a fraction of the image area: [lower, upper).
SIZE_BUCKETS = {"small (<0.1%)": (0.0, 0.001), "medium (0.1-1%)": (0.001, 0.01), "large (>=1%)": (0.01, np.inf)}


def resize_map(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize with half-pixel centres (``align_corners=False``), as the format specifies,
    computed at the map's own precision (float64 maps stay float64)."""
    if array.shape == tuple(shape):
        return array
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=metrics.working_dtype([array])))[None, None]
    return torch.nn.functional.interpolate(tensor, size=tuple(shape), mode="bilinear", align_corners=False)[0, 0].numpy()


@dataclass
class EvaluationInputs:
    """Everything the metrics need, loaded and checked once."""

    ids: list[str]
    labels: np.ndarray
    scores: np.ndarray
    pixels: metrics.PixelSet | None
    region_classes: list[list[str]] = field(default_factory=list)
    region_fraction: np.ndarray | None = None
    sources: list[str | None] = field(default_factory=list)
    groups: np.ndarray | None = None  # photo group per test image: the bootstrap's unit, where the dataset says so

    @property
    def image_level(self) -> bool:
        """Whether the image metrics are defined: the test set holds good and defect images."""
        return metrics.image_metrics_defined(self.labels)


def bootstrap_groups(dataset: Dataset) -> np.ndarray | None:
    """Photo group per test image when the manifest makes groups the bootstrap unit (build.bootstrap_unit)."""
    manifest = dataset.manifest or {}
    if (manifest.get("build") or {}).get("bootstrap_unit") != "group":
        return None
    group_of = {e["id"]: e["group"] for e in manifest["entries"]}
    return np.array([group_of[s.id] for s in dataset.test], dtype=np.int64)


def load_inputs(dataset: Dataset, predictions: Predictions, progress=None) -> EvaluationInputs:
    if not dataset.validated:  # one the stage before checked (``run``'s, before training) is not read again
        require_valid(dataset, progress)
    progress = progress or no_progress
    test = dataset.test
    ids = [s.id for s in test]
    pixel_level = dataset.has_pixel_masks
    check_against(predictions, ids, dataset.manifest_sha256, need_maps=pixel_level)
    labels = np.array([s.is_defect for s in test])
    scores = np.array([predictions.scores[i] for i in ids], np.float64)

    def check_labels():
        if not labels.any():
            raise ImpellerBenchError("the test set has no defect image: no metric is defined", dataset.root)
        if labels.all() and not pixel_level:
            raise ImpellerBenchError("the test set has no good image and no pixel masks: no metric is defined "
                                     "(image metrics need good images, pixel metrics masks)", dataset.root)

    if not pixel_level:
        check_labels()
        return EvaluationInputs(ids, labels, scores, None, sources=[s.source for s in test],
                                groups=bootstrap_groups(dataset))
    masks, maps = [], []
    for sample in progress(test, "reading masks and maps"):
        mask = sample.load_mask()
        masks.append(mask)
        maps.append(resize_map(predictions.load_map(sample.id), mask.shape))
    try:
        pixels = metrics.PixelSet.from_maps(masks, maps)
    except metrics.MetricInputError as exc:
        raise ImpellerBenchError(f"the test set cannot be scored per pixel: {exc}", dataset.root) from exc
    check_labels()
    entries = {e["id"]: e for e in (dataset.manifest or {}).get("entries", [])}
    region_classes = []
    regions_per_image = np.bincount(pixels.region_image, minlength=len(test))
    for sample, count in zip(test, regions_per_image):
        listed = entries.get(sample.id, {}).get("region_classes")
        region_classes += listed if listed is not None and len(listed) == count else [list(sample.defect_classes)] * count
    image_area = np.array([m.size for m in masks], np.float64)
    fraction = pixels.region_area / image_area[pixels.region_image]
    return EvaluationInputs(ids, labels, scores, pixels, region_classes, fraction, [s.source for s in test],
                            bootstrap_groups(dataset))


def point_metrics(inputs: EvaluationInputs, image_weight: np.ndarray | None = None) -> dict:
    """The headline metrics, with each test image counted ``image_weight`` times (default once); the image
    metrics only where they are defined (:attr:`EvaluationInputs.image_level`)."""
    out = {}
    if inputs.image_level:
        labels, scores = inputs.labels, inputs.scores
        if image_weight is not None:
            labels, scores = np.repeat(labels, image_weight), np.repeat(scores, image_weight)
        f1 = metrics.f1_max(labels, scores)
        out = {
            "image_auroc": metrics.image_auroc(labels, scores),
            "image_auprc": metrics.image_auprc(labels, scores),
            "image_f1_max": f1.f1,
            "image_precision": f1.precision,
            "image_recall": f1.recall,
        }
    if inputs.pixels is not None:
        curve = (inputs.pixels.curve() if image_weight is None
                 else inputs.pixels.weighted_curve(image_weight))
        out |= {"pixel_auroc": curve.auroc(), "pixel_pro_30": curve.pro_auc(FPR_LIMIT), "pixel_f1_max": curve.f1_max().f1}
    return out


def breakdown(inputs: EvaluationInputs) -> dict:
    """Sub-scores that locate a method's failures.

    - ``good from SOURCE`` (when the good test images come from several
      sources): image AUROC with every defect image but only that source's
      good images, which shows a shift between sources;
    - ``class C`` and ``size BUCKET``: pixel AUROC and PRO restricted to those
      regions (all normal pixels kept).
    """
    out = {}
    sources = np.array([s or "" for s in inputs.sources]) if inputs.sources else np.array([""] * len(inputs.ids))
    good_sources = sorted(set(sources[~inputs.labels]) - {""})
    if len(good_sources) > 1:
        for source in good_sources:
            chosen = inputs.labels | (sources == source)
            out[f"good from {source}"] = {"good_images": int((~inputs.labels & chosen).sum()),
                                         "image_auroc": metrics.image_auroc(inputs.labels[chosen], inputs.scores[chosen])}
    if inputs.pixels is None:
        return out
    groups = {}
    for cls in sorted({c for classes in inputs.region_classes for c in classes}):
        groups[f"class {cls}"] = np.array([cls in classes for classes in inputs.region_classes])
    for name, (lo, hi) in SIZE_BUCKETS.items():
        groups[f"size {name}"] = (inputs.region_fraction >= lo) & (inputs.region_fraction < hi)
    for name, chosen in groups.items():
        if chosen.any():
            curve = inputs.pixels.curve(chosen)
            out[name] = {"regions": int(chosen.sum()), "pixel_auroc": curve.auroc(), "pixel_pro_30": curve.pro_auc(FPR_LIMIT)}
    return out


def bootstrap(inputs_list: list[EvaluationInputs], n: int, seed: int = 0, progress=None) -> list[dict[str, np.ndarray]]:
    """Metric values over ``n`` resamples of the test images, the same resamples for every input (paired).

    Where the inputs carry photo groups, whole groups are resampled: every
    image counts as often as its group was drawn.
    """
    progress = progress or no_progress
    rng = np.random.default_rng(seed)
    count = len(inputs_list[0].ids)
    groups = inputs_list[0].groups
    if groups is not None:
        units, group_index = np.unique(groups, return_inverse=True)
    samples: list[dict[str, list]] = [{} for _ in inputs_list]
    for _ in progress(range(n), "bootstrap"):
        if groups is None:
            weight = np.bincount(rng.integers(0, count, count), minlength=count)
        else:
            weight = np.bincount(rng.integers(0, len(units), len(units)), minlength=len(units))[group_index]
        labels = np.repeat(inputs_list[0].labels, weight)
        if inputs_list[0].image_level and (labels.all() or not labels.any()):
            continue  # a resample with one class only says nothing about ranking images
        for k, x in enumerate(inputs_list):
            for name, value in point_metrics(x, weight).items():
                samples[k].setdefault(name, []).append(value)
    return [{name: np.array(values) for name, values in s.items()} for s in samples]


def bootstrap_unit(inputs: EvaluationInputs) -> str:
    return "image" if inputs.groups is None else "photo group"


def interval(values: np.ndarray) -> list[float]:
    """The 95% percentile interval of bootstrap replicates, as a JSON list."""
    return list(percentile_interval(values))


def evaluate(dataset: Dataset | str | Path, predictions: Predictions | str | Path, bootstrap_samples: int = 0,
             seed: int = 0, progress=None, plots_dir=None, replicates: bool = False) -> dict:
    """All metrics by name (fractions in [0, 1]), plus breakdowns and, with bootstrap, 95% intervals, of a
    dataset and a predictions folder (each a path or a loaded object).

    With ``plots_dir``, ROC, precision-recall and PRO curves are written there as PNG. With ``replicates``
    (and bootstrap), ``result["replicates"]`` holds each metric's values over the resamples (arrays, not
    JSON): the same resamples for every predictions folder on one split, so they pair (:mod:`.significance`).
    """
    dataset = dataset if isinstance(dataset, Dataset) else load_dataset(dataset)
    predictions = predictions if isinstance(predictions, Predictions) else load_predictions(predictions)
    inputs = load_inputs(dataset, predictions, progress)
    result = {
        "dataset": dataset.name,
        "manifest_sha256": dataset.manifest_sha256,
        "method": predictions.meta.get("method"),
        "test_images": len(inputs.ids),
        "pixel_level": inputs.pixels is not None,
        "image_level": inputs.image_level,
        "metrics": point_metrics(inputs),
        "breakdown": breakdown(inputs),
    }
    if bootstrap_samples:
        (samples,) = bootstrap([inputs], bootstrap_samples, seed, progress)
        result["ci95"] = {name: interval(v) for name, v in samples.items()}
        result["bootstrap"] = {"samples": bootstrap_samples, "seed": seed, "unit": bootstrap_unit(inputs)}
        if replicates:
            result["replicates"] = samples
    if plots_dir is not None:
        from .plots import evaluation_plots

        result["plots"] = [str(p) for p in evaluation_plots(inputs, plots_dir, result["method"] or "")]
    return result


def compare(dataset: Dataset, a: Predictions, b: Predictions, bootstrap_samples: int = 1000, seed: int = 0,
            progress=None) -> dict:
    """Paired bootstrap of B - A on the same test images: the difference per metric, its 95% interval, the
    verdict the board's ranks use and the difference this split would detect for this pair
    (:mod:`.significance`)."""
    inputs_a, inputs_b = load_inputs(dataset, a, progress), load_inputs(dataset, b, progress)
    point_a, point_b = point_metrics(inputs_a), point_metrics(inputs_b)
    samples_a, samples_b = bootstrap([inputs_a, inputs_b], bootstrap_samples, seed, progress)
    return {
        "a": a.meta.get("method") or str(a.root), "b": b.meta.get("method") or str(b.root),
        "image_level": inputs_a.image_level,
        "difference": {k: point_b[k] - point_a[k] for k in point_a},
        "ci95": {k: list(difference_interval(samples_a[k], samples_b[k])) for k in point_a},
        "verdict": {k: verdict(samples_a[k], samples_b[k]) for k in point_a},
        "detectable_difference": {k: detectable_difference(samples_a[k], samples_b[k]) for k in point_a},
        "bootstrap": {"samples": bootstrap_samples, "seed": seed, "unit": bootstrap_unit(inputs_a)},
    }


def format_table(result: dict) -> str:
    """The evaluation as a text table, in percent."""
    lines = [f"{result.get('method') or 'predictions'} on {result['dataset']} ({result['test_images']} test images)"]
    ci = result.get("ci95", {})
    for name, value in result["metrics"].items():
        bounds = f"  [{100 * ci[name][0]:6.2f}, {100 * ci[name][1]:6.2f}]" if name in ci else ""
        lines.append(f"  {name:<16} {100 * value:6.2f}{bounds}")
    if ci:
        b = result["bootstrap"]
        lines.append(f"  (95% intervals: {b['samples']} bootstrap resamples of {b.get('unit', 'image')}s, seed {b['seed']})")
    if not result["pixel_level"]:
        lines.append("  (no pixel masks in this test set: image-level metrics only)")
    if not result.get("image_level", True):
        lines.append(f"  {IMAGE_METRICS_UNDEFINED}")
    for name, row in result.get("breakdown", {}).items():
        if "image_auroc" in row:
            lines.append(f"  {name:<40} good images {row['good_images']:4d}  image AUROC {100 * row['image_auroc']:6.2f}")
            continue
        lines.append(f"  {name:<24} regions {row['regions']:4d}  pixel AUROC {100 * row['pixel_auroc']:6.2f}  "
                     f"PRO@30% {100 * row['pixel_pro_30']:6.2f}")
    return "\n".join(lines)
