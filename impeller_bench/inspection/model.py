"""Train once, judge new parts: model files with calibrated thresholds (:mod:`.calibration`), and judgements
on new images (files: :mod:`.predict`).

A *model file* is a detector checkpoint (:meth:`impeller_bench.detectors.base.Detector.save`:
tensors only, a version and a digest checked on loading) whose header also
holds, under "model", what an inspection needs: the calibrated thresholds,
the training manifest's sha256, the input size and the teacher / backbone
provenance (the detector's ``describe()``).

Thresholds are calibrated on normal images the detector did not learn from:
the detector's own validation images where it holds some out (EfficientAD's;
whole photo groups where the dataset's manifest gives groups), else whole
photo groups held out, else a seeded held-out fraction of the training
images. Images held out here are scored by a second detector fitted on the
rest; the model itself is fitted on all of them, so that it is the detector
``run`` trains. The image threshold lets at most the target
false-alarm rate of those images' scores lie above it; the pixel threshold
does the same for their pixels. A part is judged defective when its score is
above the image threshold; its defect mask is the pixels above the pixel
threshold.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..common.errors import ImpellerBenchError
from ..common.imageio import read_image
from ..common.version import __version__
from .calibration import Calibration, score_by_size


@dataclass
class Judgement:
    """One image's verdict: its score, OK / defect, the defect area (pixels above the pixel threshold) and map."""

    path: str | None
    score: float
    decision: str  # "defect" or "ok"
    defect_area: int
    seconds: float  # scoring time per image (its batch's time shared out)
    map: np.ndarray = field(repr=False)  # float32 at the image's own size
    mask: np.ndarray = field(repr=False)  # bool, the pixels above the pixel threshold


class InspectionModel:
    """A fitted detector with its calibrated thresholds: ``predict`` judges images."""

    def __init__(self, detector, calibration: Calibration, info: dict, check_images: list[np.ndarray] | None = None):
        self.detector = detector
        self.calibration = calibration
        self.info = info
        # A few of the held-out normal images at the model's input size (RGB uint8): what export checks an
        # exported graph on, rather than noise.
        self.check_images = check_images or []

    @property
    def method(self) -> str:
        return self.detector.name

    def save(self, path: str | Path) -> None:
        """One file (written atomically): the detector's checkpoint with the calibration and provenance."""
        extras = {"check_images": torch.from_numpy(np.stack(self.check_images))} if self.check_images else None
        self.detector.save(path, extra={"calibration": asdict(self.calibration)} | self.info, extra_tensors=extras)

    def thresholds(self, image_threshold: float | None = None,
                   pixel_threshold: float | None = None) -> tuple[float, float]:
        """(image, pixel) thresholds: the ones given (checked finite), else the calibrated ones."""
        for name, value in (("image threshold", image_threshold), ("pixel threshold", pixel_threshold)):
            if value is not None and not math.isfinite(value):
                raise ImpellerBenchError(f"{name} {value} is not a finite number")
        return (self.calibration.image_threshold if image_threshold is None else image_threshold,
                self.calibration.pixel_threshold if pixel_threshold is None else pixel_threshold)

    def predict(self, images: Sequence, image_threshold: float | None = None,
                pixel_threshold: float | None = None) -> list[Judgement]:
        """Judge ``images`` (uint8 arrays of any sizes, or image file paths); thresholds default to the
        calibrated ones."""
        image_threshold, pixel_threshold = self.thresholds(image_threshold, pixel_threshold)
        if isinstance(images, (str, Path)):
            images = [images]
        for image in images:
            if isinstance(image, (str, Path)) and Path(image).is_dir():
                raise ImpellerBenchError("is a folder; give image files (predict_files walks folders)", image)
        paths = [str(image) if isinstance(image, (str, Path)) else None for image in images]
        arrays = [read_image(image) if path else checked_pixels(image, k) for k, (image, path) in
                  enumerate(zip(images, paths))]
        started = time.perf_counter()
        scores, maps = score_by_size(self.detector, arrays)
        seconds = (time.perf_counter() - started) / max(len(arrays), 1)
        judgements = []
        for path, score, anomaly_map in zip(paths, scores, maps):
            mask = anomaly_map > pixel_threshold
            judgements.append(Judgement(path, float(score), "defect" if score > image_threshold else "ok",
                                        int(mask.sum()), seconds, anomaly_map, mask))
        return judgements


def checked_pixels(image, index: int) -> np.ndarray:
    """An in-memory image as the detectors take it (uint8, H x W or H x W x 3), or one error saying why not:
    other types would be scaled wrongly without a word (a float image in [0, 1] is not a uint8 one)."""
    array = np.asarray(image)
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise ImpellerBenchError(f"image {index} is a {array.dtype} array of shape {array.shape}; expected uint8, "
                                 "H x W (grey) or H x W x 3 (RGB), as impeller_bench.imageio.read_image gives")
    return array


def load_model(path: str | Path, device: str | None = None) -> InspectionModel:
    """A model file written by ``impeller-bench train`` (or ``run --model``), checked (version, digest)."""
    from ..detectors.base import detector_from_checkpoint, read_checkpoint

    header, state, extras = read_checkpoint(path)
    if "model" not in header:
        raise ImpellerBenchError("a detector checkpoint without calibrated thresholds, not a model file: make "
                                 "one with 'impeller-bench train'", path)
    info = dict(header["model"])
    calibration = Calibration(**info.pop("calibration"))
    check = extras.get("check_images")
    if check is not None and (check.dtype != torch.uint8 or check.ndim != 4 or check.shape[-1] != 3):
        raise ImpellerBenchError(f"its check images are {tuple(check.shape)} {check.dtype}, not N x S x S x 3 uint8",
                                 path)
    return InspectionModel(detector_from_checkpoint(header, state, device, path), calibration, info,
                           None if check is None else list(check.numpy()))


def model_info(detector, dataset, profile: str) -> dict:
    """Provenance a model file keeps: what was trained, on what, by which version."""
    return {"profile": profile, "input_size": detector.config.image_size,
            "dataset_name": dataset.name, "manifest_sha256": dataset.manifest_sha256,
            "train_images": len(dataset.train), "description": detector.describe(),
            "package_version": __version__, "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def refuse_existing_model(path: str | Path, overwrite: bool) -> None:
    path = Path(path)
    if path.is_dir():
        raise ImpellerBenchError("model path is a folder; give a file name", path)
    if path.exists() and not overwrite:
        raise ImpellerBenchError("model file exists (use --overwrite to replace it)", path)
