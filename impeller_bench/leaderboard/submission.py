"""Leaderboard submissions: the folder format, packaging a run, and validation.

A submission folder ``leaderboard/submissions/<name>/``::

    submission.json             who, what, how (schema below), the claimed metrics and latency
    predictions/scores.csv      the evaluator's predictions format (see predictions.py)
    predictions/meta.json
    predictions/maps/<id>.npy   float16 maps at a reduced resolution (the evaluator upsamples them)
    bootstrap.npy               the claimed metrics over the bootstrap's resamples (float64, one row per
                                resample, one column per defined metric in ``METRICS`` order): the same
                                resamples for every entry of a split, so the board compares entries paired
    README.md                   optional notes

Validation trusts nothing in the folder: only plain files with safe names in
that layout, within the size limits; the claimed split must be a published
one (``annotations/<split>.json``, by sha256); every metric and every 95%
interval, and every bootstrap replicate, is recomputed with the reference
evaluator and must equal the claim to within ``TOLERANCE``.
"""
from __future__ import annotations

import io
import json
import math
import os
import re
import stat
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..common.errors import ImpellerBenchError
from ..common.files import atomic_write_bytes, staged_directory
from ..common.imageio import read_npy
from ..evaluation.evaluate import evaluate
from ..evaluation.predictions import (
    MAPS_NAME,
    META_NAME,
    SCORES_NAME,
    Predictions,
    load_predictions,
    write_predictions,
)

SCHEMA_VERSION = 1


SUBMISSION_FILE = "submission.json"


PREDICTIONS_DIR = "predictions"


NOTES_FILE = "README.md"


BOOTSTRAP_FILE = "bootstrap.npy"


TOLERANCE = 1e-6


MAX_FILE_BYTES = 256 * 1024


MAX_SUBMISSION_BYTES = 4 * 1024 * 1024


DEFAULT_MAP_SIZE = 64


IMAGE_METRICS = ("image_auroc", "image_auprc", "image_precision", "image_recall", "image_f1_max")


PIXEL_METRICS = ("pixel_auroc", "pixel_pro_30", "pixel_f1_max")


METRICS = IMAGE_METRICS + PIXEL_METRICS  # image metrics are null on a split without good test images


SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def is_safe_name(name: str) -> bool:
    """Whether ``name`` may name a folder of the board: letters, digits, '_', '-', '.', no '..' and no '/'."""
    return bool(SAFE_NAME.match(name)) and ".." not in name


ARCHIVE_SUFFIXES = (".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar", ".zst")


SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


# Control characters (C0, DEL, C1), format characters (bidirectional overrides, zero-width ones) and the line
# and paragraph separators: none may reach a page (they hide or reorder what a reader sees).
CONTROL_CATEGORIES = {"Cc", "Cf", "Zl", "Zp"}


def has_control(text: str) -> bool:
    return any(unicodedata.category(ch) in CONTROL_CATEGORIES for ch in text)


@dataclass
class Check:
    """The verdict on one submission: ok only when ``problems`` is empty."""

    folder: Path
    problems: list[str] = field(default_factory=list)
    recomputed: dict | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def text(self) -> str:
        if self.ok:
            return f"ok    {self.folder}"
        return "\n".join([f"FAIL  {self.folder}"] + [f"      - {p}" for p in self.problems])


def _expected_place(parts: tuple[str, ...]) -> bool:
    if parts in ((SUBMISSION_FILE,), (NOTES_FILE,), (BOOTSTRAP_FILE,), (PREDICTIONS_DIR, SCORES_NAME),
                 (PREDICTIONS_DIR, META_NAME)):
        return True
    return len(parts) >= 3 and parts[:2] == (PREDICTIONS_DIR, MAPS_NAME) and parts[-1].endswith(".npy")


def scan_files(folder: Path) -> tuple[list[str], list[str]]:
    """The submission's files (relative POSIX paths) and every problem with them.

    Refused: links (to files or folders), anything but plain files and
    folders, names with ``..``, a leading dot or characters outside
    ``[A-Za-z0-9_.-]``, archives, files outside the layout, a file over
    ``MAX_FILE_BYTES`` and a folder over ``MAX_SUBMISSION_BYTES``. Nothing is
    followed or opened here, only ``lstat``.
    """
    problems: list[str] = []
    files: list[str] = []
    if folder.is_symlink():
        return files, [f"{folder.name}: the submission folder is a symbolic link"]
    if not folder.is_dir():
        return files, ["not a folder"]
    total = 0
    pending = [(folder, ())]
    while pending:
        directory, prefix = pending.pop()
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            parts = prefix + (entry.name,)
            shown = "/".join(parts)
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISLNK(info.st_mode):
                problems.append(f"{shown}: symbolic links are not accepted")
                continue
            if not is_safe_name(entry.name):
                problems.append(f"{shown}: unsafe name (letters, digits, '_', '-', '.' only; no '..', no leading dot)")
                continue
            if stat.S_ISDIR(info.st_mode):
                pending.append((Path(entry.path), parts))
                continue
            if not stat.S_ISREG(info.st_mode):
                problems.append(f"{shown}: not a plain file")
                continue
            if entry.name.lower().endswith(ARCHIVE_SUFFIXES):
                problems.append(f"{shown}: archives are not accepted (commit the files themselves)")
                continue
            if not _expected_place(parts):
                problems.append(f"{shown}: unexpected file (allowed: {SUBMISSION_FILE}, {NOTES_FILE}, {BOOTSTRAP_FILE}, "
                                f"{PREDICTIONS_DIR}/{SCORES_NAME}, {PREDICTIONS_DIR}/{META_NAME}, "
                                f"{PREDICTIONS_DIR}/{MAPS_NAME}/<image id>.npy)")
                continue
            if info.st_size > MAX_FILE_BYTES:
                problems.append(f"{shown}: {info.st_size:,} bytes, over the limit of {MAX_FILE_BYTES:,} per file")
            total += info.st_size
            files.append(shown)
    if total > MAX_SUBMISSION_BYTES:
        problems.append(f"{total:,} bytes in all, over the limit of {MAX_SUBMISSION_BYTES:,} per submission "
                        f"(write smaller maps: leaderboard submit --map-size)")
    for required in (SUBMISSION_FILE, BOOTSTRAP_FILE):
        if required not in files and not any(p.startswith(required) for p in problems):
            problems.append(f"no {required}")
    return sorted(files), problems


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _interval(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(_number(v) for v in value) and value[0] <= value[1]


def _text(value) -> bool:
    return isinstance(value, str) and bool(value.strip())


# field -> (check, what it must be)
FIELDS = {
    "schema_version": (lambda v: v == SCHEMA_VERSION, f"the number {SCHEMA_VERSION}"),
    "name": (_text, "the folder's name"),
    "method": (_text, "the detector's name, e.g. 'patchcore'"),
    "version": (_text, "the code's version, e.g. 'impeller-bench 0.1.0 (commit abc1234)'"),
    "authors": (lambda v: isinstance(v, list) and v and all(_text(a) for a in v), "a non-empty list of names"),
    "code": (_text, "a link to the code that made the predictions"),
    "backbone": (lambda v: isinstance(v, dict) and set(v) == {"name", "weights"}, "{'name': ..., 'weights': ...} (null values when none)"),
    "config": (lambda v: isinstance(v, dict), "the detector's configuration (an object)"),
    "command": (_text, "the command that made the predictions"),
    "hardware": (_text, "where it ran, e.g. '2-core x86-64 CPU'"),
    "dataset": (lambda v: isinstance(v, dict) and _text(v.get("split")) and isinstance(v.get("manifest_sha256"), str)
                and bool(SHA256_HEX.match(v["manifest_sha256"])),
                "{'split': 'impeller-v1', 'manifest_sha256': <64 hex digits>}"),
    "metrics": (lambda v: isinstance(v, dict) and set(v) == set(METRICS)
                and all((_number(v[m]) and 0 <= v[m] <= 1) or (v[m] is None and m in IMAGE_METRICS) for m in METRICS),
                f"an object with {', '.join(METRICS)}, each a fraction in [0, 1] (the image metrics null where the "
                "split has no good test images)"),
    "bootstrap": (lambda v: isinstance(v, dict) and isinstance(v.get("samples"), int) and v["samples"] >= 1
                  and isinstance(v.get("seed"), int), "{'samples': n >= 1, 'seed': int}"),
    "ci95": (lambda v: isinstance(v, dict) and set(v) == set(METRICS)
             and all(_interval(v[m]) or (v[m] is None and m in IMAGE_METRICS) for m in METRICS),
             "an object with [low, high] for every metric (null for an image metric that is null)"),
    "latency": (lambda v: v is None or (isinstance(v, dict) and _number(v.get("median_ms")) and _number(v.get("p90_ms"))
                                         and v["median_ms"] > 0 and isinstance(v.get("protocol"), dict)),
                "null, or {'median_ms': > 0, 'p90_ms': > 0, 'protocol': {...}}"),
}


def schema_problems(data) -> list[str]:
    """Every field that is missing or malformed, each with what it should be."""
    if not isinstance(data, dict):
        return [f"{SUBMISSION_FILE} must hold a JSON object"]
    problems = []
    for name, (check, wanted) in FIELDS.items():
        if name not in data:
            problems.append(f"{SUBMISSION_FILE}: missing field '{name}' ({wanted})")
        elif not check(data[name]):
            problems.append(f"{SUBMISSION_FILE}: field '{name}' must be {wanted}; found {json.dumps(data[name])[:80]}")
    if not problems:
        problems += null_problems(data["metrics"], data["ci95"])
    problems += [f"{SUBMISSION_FILE}: field '{where}' holds control characters ({json.dumps(text)[:60]}): one line "
                 "of printable text is expected" for where, text in _texts(data)
                 if has_control(text.replace("\n", "").replace("\t", "") if where == "notes" else text)]
    if "notes" in data and not isinstance(data["notes"], str):
        problems.append(f"{SUBMISSION_FILE}: field 'notes' must be text")
    unknown = sorted(set(data) - set(FIELDS) - {"notes"})
    if unknown:
        problems.append(f"{SUBMISSION_FILE}: unknown field(s) {', '.join(unknown)}")
    return problems


def _texts(value, where: str = ""):
    """(field path, text) for every string in a submission, keys included (they reach pages too)."""
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _texts(key, where)
            yield from _texts(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for k, item in enumerate(value):
            yield from _texts(item, f"{where}[{k}]")


def null_problems(metrics: dict, ci95: dict) -> list[str]:
    """The one way a claim may leave metrics out: every image metric null (a split without good test images),
    each with a null interval, and no other null."""
    nulls = {m for m in METRICS if metrics[m] is None}
    problems = []
    if nulls and nulls != set(IMAGE_METRICS):
        problems.append(f"{SUBMISSION_FILE}: the image metrics are null all together (a split without good test "
                        f"images) or none of them; found null: {', '.join(sorted(nulls))}")
    unpaired = sorted(m for m in METRICS if (metrics[m] is None) != (ci95[m] is None))
    if unpaired:
        problems.append(f"{SUBMISSION_FILE}: an interval is null exactly where its metric is: {', '.join(unpaired)}")
    return problems


def read_submission(folder: Path) -> tuple[dict | None, list[str]]:
    path = folder / SUBMISSION_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        return None, [f"{SUBMISSION_FILE}: cannot be read as JSON ({exc})"]
    problems = schema_problems(data)
    if not problems and data["name"] != folder.name:
        problems.append(f"{SUBMISSION_FILE}: name {data['name']!r} differs from the folder's name {folder.name!r}")
    return (data if not problems else None), problems


def defined_metrics(claimed: dict) -> list[str]:
    """The metrics a claim defines (not null), in ``METRICS`` order: the replicates' columns."""
    return [m for m in METRICS if claimed["metrics"][m] is not None]


def replicates_bytes(replicates: dict[str, np.ndarray], metrics: list[str]) -> bytes:
    """The ``bootstrap.npy`` file of ``replicates`` (metric -> values over the resamples)."""
    buffer = io.BytesIO()
    np.save(buffer, np.stack([np.asarray(replicates[m], np.float64) for m in metrics], axis=1), allow_pickle=False)
    return buffer.getvalue()


def load_replicates(folder: str | Path, claimed: dict) -> dict[str, np.ndarray]:
    """A submission's bootstrap replicates by metric, checked to be a finite float64 table with one column per
    defined metric and at most ``bootstrap.samples`` rows (a resample with one class only is skipped)."""
    path = Path(folder) / BOOTSTRAP_FILE
    table = read_npy(path)
    metrics = defined_metrics(claimed)
    if (table.dtype != np.float64 or table.ndim != 2 or table.shape[1] != len(metrics)
            or not 2 <= table.shape[0] <= claimed["bootstrap"]["samples"]):
        raise ImpellerBenchError(f"expected a float64 table of at most {claimed['bootstrap']['samples']} resamples x "
                                 f"{len(metrics)} metrics ({', '.join(metrics)}), found {table.dtype} {table.shape}", path)
    if not np.isfinite(table).all():
        raise ImpellerBenchError("bootstrap replicates hold NaN or infinite values", path)
    return {m: table[:, k] for k, m in enumerate(metrics)}


def deprecated_split_refusal(split: str, name: str) -> str | None:
    """Why an entry named ``name`` may not stand on ``split`` (a deprecated split keeps only its frozen entries)."""
    from ..data import published

    if published.status(split) != published.DEPRECATED or name in published.frozen_entries(split):
        return None
    current = ", ".join(s for s, about in published.SPLITS.items() if about["status"] != published.DEPRECATED)
    return (f"split {split} is deprecated and takes no new entries ({published.deprecation_reason(split)}); "
            f"run on {current}")


def claimed_provenance(meta: dict) -> dict:
    """What a submission must claim about how its predictions were made, from their ``meta.json``: method,
    configuration (with the profile) and backbone (or, for the EfficientAD family, its teacher)."""
    meta = _portable(meta)
    backbone = {"name": meta.get("backbone"), "weights": meta.get("backbone_weights")}
    if backbone["name"] is None and meta.get("teacher"):
        backbone = {"name": f"teacher: {meta['teacher']}", "weights": meta.get("teacher_weights")}
    return {"method": meta.get("method") or "unknown", "config": {"profile": meta.get("profile"),
                                                                   **(meta.get("config") or {})},
            "backbone": backbone}


def submission_folders(paths: list[str | Path], board: str | Path) -> list[Path]:
    """The submission folders named by ``paths`` (a submission, or a folder of them); all of the board by default."""
    paths = [Path(p) for p in paths] or [Path(board) / "submissions"]
    folders = []
    for path in paths:
        if (path / SUBMISSION_FILE).exists() or path.is_symlink() or not path.is_dir():
            folders.append(path)
        else:
            folders += sorted(path.iterdir())  # hidden ones too: each is accounted for or refused
    if not folders:
        raise ImpellerBenchError("no submissions found", paths[0])
    return folders


def shrink_map(array: np.ndarray, size: int) -> np.ndarray:
    """Area-average a map down to at most ``size`` pixels a side (never up), keeping its aspect ratio: a map's
    longer side becomes ``size`` (a square map, size x size)."""
    h, w = array.shape
    scale = min(1.0, size / max(h, w))
    target = (max(1, round(h * scale)), max(1, round(w * scale)))
    if target == (h, w):
        return array.astype(np.float32)
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    return torch.nn.functional.adaptive_avg_pool2d(tensor, target)[0, 0].numpy()


def _portable(value):
    """Machine-specific absolute paths reduced to their file names."""
    if isinstance(value, dict):
        return {k: _portable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_portable(v) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        return Path(value).name
    return value


def package_submission(run: Predictions, out: str | Path, dataset, *, authors: list[str], code: str, version: str,
                       hardware: str, command: str, latency: dict | None = None, map_size: int = DEFAULT_MAP_SIZE,
                       bootstrap_samples: int = 1000, seed: int = 0, notes: str | None = None, overwrite: bool = False,
                       progress=None) -> dict:
    """Turn a run's predictions into a submission: compact maps, recomputed claims, one atomic write."""
    out = Path(out)
    if not is_safe_name(out.name):
        raise ImpellerBenchError("unsafe submission name (letters, digits, '_', '-', '.')", out)
    refusal = deprecated_split_refusal(dataset.name, out.name)
    if refusal:
        raise ImpellerBenchError(refusal, run.root)
    ids, have_maps = [s.id for s in dataset.test], run.map_ids()
    maps = {i: shrink_map(run.load_map(i), map_size) for i in ids if i in have_maps}
    scores = {i: run.scores[i] for i in ids if i in run.scores}
    meta = _portable({k: v for k, v in run.meta.items() if k != "dataset"})
    meta["map_size"] = map_size
    with staged_directory(out, overwrite=overwrite) as stage:
        predictions_dir = write_predictions(stage / PREDICTIONS_DIR, scores, maps, meta, dtype=np.float16)
        result = evaluate(dataset, load_predictions(predictions_dir), bootstrap_samples, seed, progress,
                          replicates=True)
        provenance = claimed_provenance(meta)
        submission = {
            "schema_version": SCHEMA_VERSION, "name": out.name, "method": provenance["method"],
            "version": version, "authors": list(authors), "code": code, "backbone": provenance["backbone"],
            "config": provenance["config"],
            "command": command, "hardware": hardware,
            "dataset": {"split": dataset.name, "manifest_sha256": dataset.manifest_sha256},
            "metrics": {m: result["metrics"].get(m) for m in METRICS},
            "bootstrap": result["bootstrap"], "ci95": {m: result["ci95"].get(m) for m in METRICS},
            "latency": latency,
        }
        if notes:
            submission["notes"] = notes
        problems = schema_problems(submission)
        if problems:
            raise ImpellerBenchError("; ".join(problems), run.root)
        atomic_write_bytes(stage / SUBMISSION_FILE, (json.dumps(submission, indent=1) + "\n").encode())
        atomic_write_bytes(stage / BOOTSTRAP_FILE, replicates_bytes(result["replicates"], defined_metrics(submission)))
        _, problems = scan_files(stage)
        if problems:
            raise ImpellerBenchError("the packaged submission breaks the rules: " + "; ".join(problems), run.root)
    return submission


def latency_entry(figures: list[dict], method: str, hardware: str) -> dict:
    """A submission's latency claim from ``impeller-bench latency --json`` output."""
    for row in figures:
        if row.get("method") == method:
            protocol = {k: row.get(k) for k in ("device", "threads", "image_size", "batch_size", "runs", "warmup",
                                                "runtime", "profile", "options", "anomaly_map", "interleaved_with",
                                                "memory", "memory_of_training_images")
                        if k in row}
            protocol["timing"] = "host array to device and the map back, median of the runs after warm-up"
            return {"median_ms": row["median_ms"], "p90_ms": row["p90_ms"], "protocol": protocol, "hardware": hardware}
    raise ImpellerBenchError(f"no latency figures for {method}")
