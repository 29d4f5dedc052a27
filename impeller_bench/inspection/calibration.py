"""Thresholds for the line: image and pixel thresholds at a false-alarm rate on held-out normal images,
and what they give on a labelled test set."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from .. import detectors
from ..common.errors import ImpellerBenchError

DEFAULT_FALSE_ALARM_RATE = 0.01


# Per pixel, 1% of a normal 256 x 256 part would be 655 flagged pixels on every good part: masks want fewer.
DEFAULT_PIXEL_FALSE_ALARM_RATE = 0.001


HELD_OUT_FRACTION = 0.2  # of the training images, for detectors that hold out none themselves


PIXELS_FOR_CALIBRATION = 4_000_000  # more held-out pixels than this are subsampled evenly (memory, not accuracy)


PREDICT_BATCH = 16


def threshold_for_rate(values, rate: float) -> float:
    """The smallest of ``values`` with at most ``floor(rate * n)`` of the n values strictly above it.

    With the decision "anomalous when above the threshold", the values' own false-alarm rate is at most
    ``rate``; with fewer than ``1 / rate`` values that is their maximum (no false alarm among them)."""
    values = np.sort(np.asarray(values, dtype=np.float64).ravel())
    if not len(values) or not np.isfinite(values).all():
        raise ImpellerBenchError("calibration needs finite scores of at least one normal image")
    if not 0 <= rate < 1:
        raise ImpellerBenchError(f"false-alarm rate {rate} is not in [0, 1)")
    return float(values[len(values) - 1 - math.floor(rate * len(values))])


@dataclass
class Calibration:
    """Decision thresholds and how they were found."""

    image_threshold: float
    pixel_threshold: float
    pixel_reference: float  # the held-out normal pixels' median: an overlay's zero
    false_alarm_rate: float
    pixel_false_alarm_rate: float
    images: int  # held-out normal images behind the thresholds
    source: str
    # The held-out images' sizes ([height, width] each, distinct). Where one is not the model's S x S input,
    # an exported graph (which scores S x S inputs, its map at S x S) needs thresholds of its own: the same
    # held-out images resized to S and scored so ("graph_*"; None where the sizes are S x S already).
    image_sizes: list | None = None
    graph_image_threshold: float | None = None
    graph_pixel_threshold: float | None = None


def held_out_normals(detector, images: Sequence[np.ndarray], seed: int, groups: Sequence | None = None,
                     progress=None):
    """(scorer, images, source): normal images the fitted ``detector`` did not learn from, and the detector
    that scores them on its scale.

    A detector that kept validation images out of its fit (``validation_indices``: whole photo groups when
    it was given them) is scored on them: its scores are on its own scale (EfficientAD's maps are
    normalised by its own quantiles, so a second model's would not be). Otherwise, with photo ``groups`` (a
    dataset manifest's: variants of one photo share a group), whole groups holding about
    ``HELD_OUT_FRACTION`` of the images are held out, so that no photo is both learnt and judged (a part's
    own augmented copy scores lower than a new part does); without them, a seeded ``HELD_OUT_FRACTION`` of
    ``images``. Those are scored by a copy of the detector (same configuration) fitted on the rest."""
    rng = np.random.default_rng(seed)
    kept_out = getattr(detector, "validation_indices", None)
    wanted = max(1, round(HELD_OUT_FRACTION * len(images)))
    if kept_out:
        return detector, [images[i] for i in kept_out], f"the detector's {len(kept_out)} validation images " \
                                                        "(held out of its fit)"
    if groups is not None and len(set(groups)) >= 2:
        order = rng.permutation(sorted(set(groups))).tolist()
        held_groups, count = [], 0
        for group in order[:-1]:  # at least one group is left to fit on
            if count >= wanted:
                break
            held_groups.append(group)
            count += sum(1 for g in groups if g == group)
        held = [k for k, g in enumerate(groups) if g in held_groups]
        how = f"{len(held)} training images from {len(held_groups)} photo group(s) held out (seed {seed})"
    else:
        if len(images) < 3:
            raise ImpellerBenchError(f"calibration needs at least 3 normal training images, got {len(images)}")
        held = sorted(rng.permutation(len(images))[:wanted].tolist())
        how = f"{len(held)} of the training images held out (seed {seed})"
    held_set = set(held)
    rest = [image for k, image in enumerate(images) if k not in held_set]
    probe = detectors.create(detector.name, device=str(detector.device), **asdict(detector.config))
    probe.fit(rest, progress, None if groups is None else [g for k, g in enumerate(groups) if k not in held_set])
    return probe, [images[k] for k in held], f"{how}, scored by a copy fitted on the other {len(rest)}"


def calibrate(detector, images: Sequence[np.ndarray], false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
              pixel_false_alarm_rate: float = DEFAULT_PIXEL_FALSE_ALARM_RATE, seed: int = 0,
              groups: Sequence | None = None, progress=None) -> Calibration:
    """Thresholds for the fitted ``detector`` from normal ``images`` (its training images, with their photo
    ``groups`` where known: see :func:`held_out_normals`)."""
    return calibrate_with_check_images(detector, images, false_alarm_rate, pixel_false_alarm_rate, seed, groups,
                                       progress)[0]


def calibrate_with_check_images(detector, images: Sequence[np.ndarray],
                                false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
                                pixel_false_alarm_rate: float = DEFAULT_PIXEL_FALSE_ALARM_RATE, seed: int = 0,
                                groups: Sequence | None = None, progress=None) -> tuple[Calibration, list]:
    """:func:`calibrate`'s thresholds, and up to ``CHECK_IMAGES`` of the held-out images at the model's input
    size (RGB uint8), for a model file to check its exports on."""
    for name, rate in (("false-alarm rate", false_alarm_rate), ("pixel false-alarm rate", pixel_false_alarm_rate)):
        if not 0 <= rate < 1:
            raise ImpellerBenchError(f"{name} {rate} is not in [0, 1)")
    scorer, held, source = held_out_normals(detector, images, seed, groups, progress)
    scores, pixels = _scores_and_pixels(scorer, held)
    sizes = sorted({tuple(np.asarray(image).shape[:2]) for image in held})
    side = detector.model_input_size
    graph = {}
    if sizes != [(side, side)]:  # what an exported graph, scoring S x S inputs, must be judged by
        graph_scores, graph_pixels = _scores_and_pixels(scorer, [resize_image(image, side) for image in held])
        graph = {"graph_image_threshold": threshold_for_rate(graph_scores, false_alarm_rate),
                 "graph_pixel_threshold": threshold_for_rate(graph_pixels, pixel_false_alarm_rate)}
    calibration = Calibration(
        image_threshold=threshold_for_rate(scores, false_alarm_rate),
        pixel_threshold=threshold_for_rate(pixels, pixel_false_alarm_rate),
        pixel_reference=float(np.median(pixels)),
        false_alarm_rate=false_alarm_rate, pixel_false_alarm_rate=pixel_false_alarm_rate,
        images=len(scores), source=source, image_sizes=[list(size) for size in sizes], **graph)
    check = [resize_image(np.asarray(image), side) for image in held[:CHECK_IMAGES]]
    return calibration, [image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2) for image in check]


CHECK_IMAGES = 4


def _scores_and_pixels(scorer, images) -> tuple[np.ndarray, np.ndarray]:
    """Image scores, and a sample of at most about ``PIXELS_FOR_CALIBRATION`` of the maps' pixels."""
    scores, maps = score_by_size(scorer, images)
    step = max(1, math.ceil(sum(m.size for m in maps) / PIXELS_FOR_CALIBRATION))
    return scores, np.concatenate([np.asarray(m, np.float64).ravel()[::step] for m in maps])


def resize_image(image: np.ndarray, side: int) -> np.ndarray:
    """A uint8 image resized to side x side as the scoring path resizes it (bilinear, antialiased), uint8."""
    from ..common.backbones import images01

    x = images01([image], side)[0]  # 3 x S x S in [0, 1]
    rgb = (x.permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)
    return rgb[..., 0] if np.asarray(image).ndim == 2 else rgb


def score_by_size(detector, images: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """``detector.score_images`` on images of any sizes (it takes one size per call): maps at each one's size."""
    scores, maps = np.zeros(len(images)), [None] * len(images)
    by_shape: dict[tuple, list[int]] = {}
    for k, image in enumerate(images):
        by_shape.setdefault(np.asarray(image).shape[:2], []).append(k)
    for indices in by_shape.values():
        for start in range(0, len(indices), PREDICT_BATCH):
            chunk = indices[start:start + PREDICT_BATCH]
            chunk_scores, chunk_maps = detector.score_images([images[k] for k in chunk])
            for k, score, anomaly_map in zip(chunk, chunk_scores, chunk_maps):
                scores[k], maps[k] = float(score), np.asarray(anomaly_map, np.float32)
    return scores, maps


def decision_report(calibration: Calibration, labels, scores, masks=None, maps=None) -> dict:
    """What the calibrated thresholds and the F1-max threshold give on a labelled test set.

    Image level: false-alarm rate on the good images, recall (and precision) on the defect images. Pixel
    level (when masks are given): the share of normal pixels above the pixel threshold and of defect pixels
    above it."""
    from ..common import metrics

    labels, scores = np.asarray(labels, bool), np.asarray(scores, np.float64)
    flagged = scores > calibration.image_threshold
    report = {
        "test_good": int((~labels).sum()), "test_defect": int(labels.sum()),
        "calibrated": {"threshold": calibration.image_threshold,
                       "false_alarm_rate": _share(flagged[~labels]), "recall": _share(flagged[labels]),
                       "precision": _share(labels[flagged])},
    }
    if metrics.image_metrics_defined(labels):  # F1-max needs both kinds of image (a localization track has no good)
        best = metrics.f1_max(labels, scores)
        report["f1_max"] = {"threshold": best.threshold, "f1": best.f1, "precision": best.precision,
                            "recall": best.recall}
    if masks is not None:
        above = [np.asarray(m) > calibration.pixel_threshold for m in maps]
        normal = sum(int((a & ~m).sum()) for a, m in zip(above, masks)), sum(int((~m).sum()) for m in masks)
        defect = sum(int((a & m).sum()) for a, m in zip(above, masks)), sum(int(m.sum()) for m in masks)
        report["pixel_calibrated"] = {"threshold": calibration.pixel_threshold,
                                      "false_alarm_rate": normal[0] / max(normal[1], 1),
                                      "recall": defect[0] / defect[1] if defect[1] else None}
    return report


def _share(flags: np.ndarray) -> float | None:
    return float(flags.mean()) if len(flags) else None
