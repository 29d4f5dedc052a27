"""Run a detector on a dataset: fit on train/good, score the test set, write predictions, evaluate.

Without a dataset the built-in synthetic impellers are used (made once in the
cache folder, ``$IMPELLER_BENCH_CACHE`` or ``~/.cache/impeller-bench``).
"""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .. import detectors
from ..common.errors import ImpellerBenchError
from ..common.files import cache_folder, staged_directory
from ..common.progress import no_progress
from ..data.dataset import load_dataset
from ..data.validate import require_valid
from ..evaluation.evaluate import evaluate
from ..evaluation.predictions import load_predictions, write_predictions
from .calibration import (
    DEFAULT_FALSE_ALARM_RATE,
    DEFAULT_PIXEL_FALSE_ALARM_RATE,
    calibrate_with_check_images,
    decision_report,
    score_by_size,
)
from .model import InspectionModel, model_info, refuse_existing_model

SYNTHETIC_DEFAULT = {"train_good": 40, "test_good": 20, "test_defect": 20, "size": 256, "seed": 0}


def default_dataset() -> Path:
    """The built-in synthetic dataset, generated on first use."""
    from ..data.synth import GENERATOR_VERSION, write_synthetic

    target = cache_folder() / f"synthetic-v{GENERATOR_VERSION}"
    if not (target / "manifest.json").is_file():
        write_synthetic(target, overwrite=True, **SYNTHETIC_DEFAULT)
    return target


SCORING_CHUNK = 16  # images per score_images call: progress between calls; a multiple of the detectors' own batches


def score_in_chunks(detector, images: list, progress=None) -> tuple[np.ndarray, list[np.ndarray]]:
    """``detector.score_images`` over ``images`` a chunk at a time, so that long scoring reports progress;
    images of several sizes (Magnetic Tile Defects) get maps at each one's own size (:func:`score_by_size`)."""
    progress = progress or no_progress
    scores, maps = [], []
    for start in progress(range(0, len(images), SCORING_CHUNK), "scoring"):
        chunk_scores, chunk_maps = score_by_size(detector, images[start:start + SCORING_CHUNK])
        scores.append(np.asarray(chunk_scores))
        maps.extend(chunk_maps)
    return np.concatenate(scores), maps


# The detector settings ``run``, ``train`` and ``latency`` take as options (``--map-padding`` also sets
# cover_border); any other setting is reached only through a sweep's grid.
COMMAND_LINE_OPTIONS = ("teacher", "precision", "map_padding", "anomaly_map", "scoring_precision", "decoder",
                        "dropout", "backbone", "backbone_weights", "layers")


def detector_config(method: str, profile: str, steps: int | None, seed: int, options: dict) -> dict:
    """The configuration ``run`` and ``train`` give ``method``: its profile, the seed, the steps, the options."""
    profiles = detectors.detector_class(method).profiles
    if profile not in profiles:
        raise ImpellerBenchError(f"unknown profile {profile!r}; known: {', '.join(profiles)}")
    return profiles[profile] | {"seed": seed} | ({"steps": steps} if steps is not None else {}) | options


def training_groups(dataset) -> list | None:
    """The photo group of each training image, when the manifest gives every one."""
    groups = [s.group for s in dataset.train]
    return None if None in groups else groups


def fit_on(dataset, method: str, config: dict, device: str | None, progress=None):
    """(fitted detector, its training images, fit seconds): the dataset checked first (``validate``'s checks),
    then ``method`` with ``config`` fitted on train/good (given the photo groups, where known)."""
    require_valid(dataset, progress)
    detector = detectors.create(method, device=device, **config)
    if getattr(detector, "teacher_kind", None) == "distilled":  # made once per machine: with progress, before the fit
        from ..detectors.efficientad.distill import (
            SHARED_TEACHER_SEED,
            cached_teacher,
            distilled_backbone,
        )

        cached_teacher(distilled_backbone(detector.config.teacher), SHARED_TEACHER_SEED, progress=progress,
                       pdn_size=detector.config.pdn)
    train = [s.load_image() for s in dataset.train]
    started = time.perf_counter()
    detector.fit(train, progress, training_groups(dataset))
    return detector, train, time.perf_counter() - started


def write_run(out, detector, dataset, profile: str, fit_seconds: float, score_seconds: float, scores, maps,
              synthetic: bool = False, overwrite: bool = False) -> Path:
    """The predictions folder of a fitted detector's scores and maps on ``dataset``'s test set, with the
    ``meta.json`` every run carries (the detector's description, the dataset's manifest hash, the times)."""
    ids = [s.id for s in dataset.test]
    meta = detector.describe() | {
        "profile": profile,
        "dataset": str(Path(dataset.root).resolve()),
        "dataset_name": dataset.name,
        "synthetic_default": synthetic,
        "manifest_sha256": dataset.manifest_sha256,
        "device": str(detector.device),
        "fit_seconds": round(fit_seconds, 2),
        "score_seconds_per_image": round(score_seconds / len(ids), 4),
    }
    return write_predictions(out, dict(zip(ids, np.asarray(scores).tolist())), dict(zip(ids, maps)), meta,
                             overwrite=overwrite)


def run_method(method: str, dataset_dir=None, out=None, profile: str = "quick", steps: int | None = None,
               seed: int = 0, device: str | None = None, overwrite: bool = False, progress=None, say=None,
               model: str | Path | None = None, false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
               pixel_false_alarm_rate: float = DEFAULT_PIXEL_FALSE_ALARM_RATE, **options) -> dict:
    """Fit, score, write the predictions folder and evaluate it; returns the evaluation (and where things went).

    Whatever can be checked is checked before any training, cheapest first:
    the method and profile, the output folder (refused if it exists, unless
    ``overwrite``), the model file when one is asked for, the dataset
    (``validate``'s checks: :func:`impeller_bench.data.validate.require_valid`) and the detector's
    options. ``say`` hears what the caller should tell the user (that the
    synthetic default is used). With ``model``, the fitted detector is also
    kept as a model file with calibrated thresholds (:func:`keep_model`).
    """
    config = detector_config(method, profile, steps, seed, options)
    synthetic = dataset_dir is None
    out = Path(out) if out is not None else Path("predictions") / method
    if model is not None:
        refuse_existing_model(model, overwrite)
    # Claiming the output folder now refuses an existing one before training, not after it.
    with staged_directory(out, overwrite=overwrite) as stage:
        if synthetic and say is not None:
            say("no dataset given: running on the built-in synthetic impellers")
        dataset_dir = Path(dataset_dir) if dataset_dir is not None else default_dataset()
        dataset = load_dataset(dataset_dir)
        detector, train, fit_seconds = fit_on(dataset, method, config, device, progress)
        started = time.perf_counter()
        scores, maps = score_in_chunks(detector, [s.load_image() for s in dataset.test], progress)
        score_seconds = time.perf_counter() - started

        ids = [s.id for s in dataset.test]
        write_run(stage, detector, dataset, profile, fit_seconds, score_seconds, scores, maps, synthetic)
        result = evaluate(dataset, load_predictions(stage))
        if model is not None:
            result["model"] = keep_model(model, detector, dataset, train, profile, seed, false_alarm_rate,
                                         pixel_false_alarm_rate, (scores, maps), progress)
    return result | {"predictions": str(out), "synthetic_default": synthetic, "fit_seconds": fit_seconds,
                     "score_seconds_per_image": score_seconds / len(ids)}


def train_model(method: str, dataset_dir, model, profile: str = "quick", steps: int | None = None, seed: int = 0,
                device: str | None = None, false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
                pixel_false_alarm_rate: float = DEFAULT_PIXEL_FALSE_ALARM_RATE, overwrite: bool = False,
                progress=None, **options) -> dict:
    """Fit ``method`` on the dataset's train/good images and write a model file with calibrated thresholds.

    Checks come first, as in :func:`run_method`. When the dataset has a labelled test set, it is scored
    and the report says what the thresholds give on it. Returns :func:`keep_model`'s report."""
    config = detector_config(method, profile, steps, seed, options)
    refuse_existing_model(model, overwrite)
    dataset = load_dataset(dataset_dir)
    detector, train, fit_seconds = fit_on(dataset, method, config, device, progress)
    test = score_in_chunks(detector, [s.load_image() for s in dataset.test], progress) if dataset.test else None
    return keep_model(model, detector, dataset, train, profile, seed, false_alarm_rate, pixel_false_alarm_rate,
                      test, progress) | {"fit_seconds": fit_seconds}


def keep_model(path, detector, dataset, train, profile: str, seed: int, false_alarm_rate: float,
               pixel_false_alarm_rate: float, test_outputs=None, progress=None) -> dict:
    """Calibrate the fitted ``detector`` on its training images, judge the labelled test set with the
    thresholds (when ``test_outputs``, its scores and maps, are given) and write the model file."""
    calibration, check_images = calibrate_with_check_images(detector, train, false_alarm_rate,
                                                            pixel_false_alarm_rate, seed, training_groups(dataset),
                                                            progress)
    info = model_info(detector, dataset, profile)
    if test_outputs is not None:
        scores, maps = test_outputs
        labels = [s.is_defect for s in dataset.test]
        masks = [s.load_mask() for s in dataset.test] if dataset.has_pixel_masks else None
        info["test_report"] = decision_report(calibration, labels, scores, masks, maps)
    InspectionModel(detector, calibration, info, check_images).save(path)
    return {"model": str(path), "calibration": asdict(calibration), "test_report": info.get("test_report")}
