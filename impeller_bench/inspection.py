"""Train once, judge new parts: model files with calibrated thresholds, and judgements on new images.

A *model file* is a detector checkpoint (:meth:`.detectors.base.Detector.save`:
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

import csv
import io
import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from . import __version__, detectors
from .errors import ImpellerBenchError
from .imageio import IMAGE_SUFFIXES, atomic_write_bytes, encode_png, is_image_file, read_image, staged_directory

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
    from .backbones import images01

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
    from . import metrics

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


# --------------------------------------------------------------------------- the model


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
    from .detectors.base import detector_from_checkpoint, read_checkpoint

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


# --------------------------------------------------------------------------- judging files


def input_files(inputs: Iterable[str | Path]) -> list[tuple[Path, Path]]:
    """(file, output name) for every image: files as given, folders walked recursively (image suffixes only,
    sorted), each file once. Output names keep the folder structure under the folder's name, without the
    suffix; clashes get a numbered suffix (results.csv's ``name`` column says which). A missing input is an
    error before any work."""
    found, taken, seen = [], set(), set()
    for given in map(Path, inputs):
        if given.is_dir():
            # A link to nothing is listed too: it is skipped with its reason, not passed over in silence.
            files = [(p, Path(given.resolve().name) / p.relative_to(given)) for p in sorted(given.rglob("*"))
                     if is_image_file(p) or (p.is_symlink() and p.suffix.lower() in IMAGE_SUFFIXES)]
        elif given.is_file():
            files = [(given, Path(given.name))]
        else:
            raise ImpellerBenchError("no such file or folder", given)
        for path, relative in files:
            try:
                key = path.resolve()
            except (RuntimeError, OSError):  # a link loop: listed as it is, and skipped with its reason when read
                key = path.absolute()
            if key in seen:  # the same file reached twice (a folder given twice, a link): judged once
                continue
            seen.add(key)
            name, k = relative.with_suffix(""), 1
            while name in taken:
                k += 1
                name = relative.with_name(f"{relative.stem}-{k}")
            taken.add(name)
            found.append((path, name))
    return found


def overlay_png(image: np.ndarray, anomaly_map: np.ndarray, mask: np.ndarray, calibration: Calibration) -> bytes:
    """The image beside itself under a heat map (on one scale for every image: the normal pixels' median is
    cold, the pixel threshold mid-way, twice as far hot), with the defect mask's outline, as PNG bytes."""
    from matplotlib import colormaps
    from scipy.ndimage import binary_erosion

    rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image
    span = max(calibration.pixel_threshold - calibration.pixel_reference, 1e-12)
    heat = np.clip((anomaly_map - calibration.pixel_reference) / (2 * span), 0, 1)
    alpha = 0.65 * heat[..., None]
    blended = (1 - alpha) * rgb + alpha * 255 * colormaps["inferno"](heat)[..., :3]
    outline = mask & ~binary_erosion(mask, iterations=max(1, round(min(mask.shape) / 256)))
    blended[outline] = (0, 255, 255)
    return encode_png(np.concatenate([rgb, blended.round().astype(np.uint8)], axis=1))


def predict_files(model: InspectionModel, inputs: Iterable[str | Path], out: str | Path,
                  image_threshold: float | None = None, pixel_threshold: float | None = None,
                  batch_size: int = PREDICT_BATCH, overwrite: bool = False, progress=None) -> dict:
    """Judge every image under ``inputs``, writing into ``out`` (a folder that appears only when complete):

    - ``results.csv``: path, name (of its outputs), score, decision, defect_area_px, seconds (a row per image);
    - ``maps/NAME.npy`` (float32, the image's size), ``overlays/NAME.png``, ``masks/NAME.png`` (0 / 255);
    - ``skipped.csv`` (path, problem) when some files could not be read: they are skipped, not fatal;
    - ``summary.json``: counts, thresholds, throughput.

    Images are read, scored and written ``batch_size`` at a time, so memory does not grow with their number."""
    image_threshold, pixel_threshold = model.thresholds(image_threshold, pixel_threshold)
    inputs = list(inputs)
    files = input_files(inputs)
    if not files:
        raise ImpellerBenchError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, inputs))}")
    rows, skipped = [], []
    batches = [files[k:k + batch_size] for k in range(0, len(files), batch_size)]
    started = time.perf_counter()
    with staged_directory(out, overwrite=overwrite, keep_on_error=True) as stage, \
            open(stage / "results.csv", "w", newline="", encoding="utf-8") as results:
        # Written as the run goes: a failure late in a long run keeps what was judged (keep_on_error).
        writer = csv.DictWriter(results, RESULT_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for batch in (progress(batches, f"judging ({batch_size} a batch)", None) if progress else batches):
            readable = []
            for path, name in batch:
                try:
                    readable.append((path, name, read_image(path)))
                except ImpellerBenchError as exc:
                    skipped.append({"path": shown_path(path), "problem": exc.problem})
            if not readable:
                continue
            judgements = model.predict([image for _, _, image in readable], image_threshold, pixel_threshold)
            for (path, name, image), judged in zip(readable, judgements):
                _write_outputs(stage, name, image, judged, model.calibration)
                rows.append({"path": shown_path(path), "name": shown_path(name.as_posix()),
                             "score": f"{judged.score:.9g}", "decision": judged.decision,
                             "defect_area_px": judged.defect_area, "seconds": f"{judged.seconds:.4f}"})
                writer.writerow(rows[-1])
            results.flush()
        if not rows:
            raise ImpellerBenchError(f"none of the {len(files)} image file(s) could be read; first: "
                                     f"{skipped[0]['path']}: {skipped[0]['problem']}")
        seconds = time.perf_counter() - started
        if skipped:
            _write_csv(stage / "skipped.csv", skipped, ["path", "problem"])
        summary = {"images": len(rows), "defects": sum(r["decision"] == "defect" for r in rows),
                   "skipped": len(skipped), "seconds": round(seconds, 2),
                   "images_per_second": round(len(rows) / seconds, 2) if seconds > 0 else None,
                   "image_threshold": image_threshold, "pixel_threshold": pixel_threshold,
                   "method": model.method, "calibration": asdict(model.calibration)}
        atomic_write_bytes(stage / "summary.json", json.dumps(summary, indent=1).encode())
    return summary | {"out": str(out), "skipped_files": skipped}


RESULT_COLUMNS = ["path", "name", "score", "decision", "defect_area_px", "seconds"]


def shown_path(path) -> str:
    """A file name as text that any CSV or JSON writer takes, unambiguously: a backslash doubled, bytes that
    are not UTF-8 (a name the file system allows) as ``\\xNN``, control characters as ``\\xNN`` (a newline
    in a name) or ``\\uNNNN`` (C1, the line separators); other names unchanged."""
    raw = os.fsencode(str(path))
    parts = []
    for piece in re.split(rb"(\\)", raw):  # the backslashes the name holds, doubled first
        parts.append("\\\\" if piece == b"\\" else piece.decode("utf-8", errors="backslashreplace"))
    text = "".join(parts)
    return re.sub(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]",
                  lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x80 else f"\\u{ord(m.group()):04x}", text)


def _write_outputs(folder: Path, name: Path, image: np.ndarray, judged: Judgement, calibration: Calibration) -> None:
    buffer = io.BytesIO()
    np.save(buffer, judged.map.astype(np.float32))
    atomic_write_bytes(folder / "maps" / name.with_name(name.name + ".npy"), buffer.getvalue())
    atomic_write_bytes(folder / "masks" / name.with_name(name.name + ".png"),
                       encode_png(judged.mask.astype(np.uint8) * 255))
    atomic_write_bytes(folder / "overlays" / name.with_name(name.name + ".png"),
                       overlay_png(image, judged.map, judged.mask, calibration))


def _write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, text.getvalue().encode())
