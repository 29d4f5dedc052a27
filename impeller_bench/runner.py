"""Run a detector on a dataset: fit on train/good, score the test set, write predictions, evaluate.

Without a dataset the built-in synthetic impellers are used (made once in the
cache folder, ``$IMPELLER_BENCH_CACHE`` or ``~/.cache/impeller-bench``).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from . import detectors
from .data import load_dataset
from .errors import ImpellerBenchError
from .evaluate import evaluate
from .predictions import load_predictions, write_predictions

SYNTHETIC_DEFAULT = {"train_good": 40, "test_good": 20, "test_defect": 20, "size": 256, "seed": 0}


def default_dataset() -> Path:
    """The built-in synthetic dataset, generated on first use."""
    from .synth import GENERATOR_VERSION, write_synthetic

    cache = Path(os.environ.get("IMPELLER_BENCH_CACHE", Path.home() / ".cache" / "impeller-bench"))
    target = cache / f"synthetic-v{GENERATOR_VERSION}"
    if not (target / "manifest.json").is_file():
        write_synthetic(target, overwrite=True, **SYNTHETIC_DEFAULT)
    return target


def run_method(method: str, dataset_dir=None, out=None, profile: str = "quick", steps: int | None = None,
               seed: int = 0, device: str | None = None, overwrite: bool = False, progress=None, **options) -> dict:
    """Fit, score, write the predictions folder and evaluate it; returns the evaluation (and where things went)."""
    profiles = detectors.detector_class(method).profiles
    if profile not in profiles:
        raise ImpellerBenchError(f"unknown profile {profile!r}; known: {', '.join(profiles)}")
    synthetic = dataset_dir is None
    dataset_dir = Path(dataset_dir) if dataset_dir is not None else default_dataset()
    dataset = load_dataset(dataset_dir)
    out = Path(out) if out is not None else Path("predictions") / method
    config = profiles[profile] | {"seed": seed} | ({"steps": steps} if steps is not None else {}) | options
    detector = detectors.create(method, device=device, **config)

    train = [s.load_image() for s in dataset.train]
    started = time.perf_counter()
    detector.fit(train, progress)
    fit_seconds = time.perf_counter() - started
    started = time.perf_counter()
    scores, maps = detector.score_images([s.load_image() for s in dataset.test])
    score_seconds = time.perf_counter() - started

    ids = [s.id for s in dataset.test]
    meta = detector.describe() | {
        "profile": profile,
        "dataset": str(dataset_dir.resolve()),
        "dataset_name": dataset.name,
        "synthetic_default": synthetic,
        "manifest_sha256": dataset.manifest_sha256,
        "device": str(detector.device),
        "fit_seconds": round(fit_seconds, 2),
        "score_seconds_per_image": round(score_seconds / len(ids), 4),
    }
    write_predictions(out, dict(zip(ids, scores.tolist())), dict(zip(ids, maps)), meta, overwrite=overwrite)
    result = evaluate(dataset, load_predictions(out))
    return result | {"predictions": str(out), "synthetic_default": synthetic, "fit_seconds": fit_seconds}
