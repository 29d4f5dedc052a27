"""``predict``: judge image files with a model file, writing a results table, maps and overlays."""
from __future__ import annotations

import csv
import io
import json
import os
import re
import time
from dataclasses import asdict
from pathlib import Path
from typing import Iterable

import numpy as np

from ..common.errors import ImpellerBenchError
from ..common.files import atomic_write_bytes, staged_directory
from ..common.imageio import IMAGE_SUFFIXES, encode_png, is_image_file, read_image
from ..common.overlay import heat_overlay
from .calibration import PREDICT_BATCH, Calibration
from .model import InspectionModel, Judgement


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
    rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image
    span = max(calibration.pixel_threshold - calibration.pixel_reference, 1e-12)
    heat = (anomaly_map - calibration.pixel_reference) / (2 * span)
    return encode_png(np.concatenate([rgb, heat_overlay(rgb, heat, mask)], axis=1))


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
