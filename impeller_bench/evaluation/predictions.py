"""The predictions format, written and read here only.

A predictions folder::

    scores.csv              columns image,score: the test image's id (as in the manifest,
                            e.g. test/defect/cast_def_0_1087) and its image score; higher = more anomalous
    maps/<id>.npy           one 2-D anomaly map per test image, any resolution (the evaluator resizes it
                            to its mask's size: bilinear, half-pixel centres), float16, float32, float64
                            or integer, scored at its own precision (integers beyond 2**53 refused)
    meta.json               method, config, manifest_sha256 of the dataset, dataset path, latency (optional)
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..common.errors import ImpellerBenchError
from ..common.files import safe_id, staged_directory
from ..common.imageio import read_npy
from ..common.metrics import MetricInputError, working_dtype

SCORES_NAME = "scores.csv"


MAPS_NAME = "maps"


META_NAME = "meta.json"


@dataclass
class Predictions:
    root: Path
    scores: dict[str, float]
    meta: dict

    def map_path(self, image_id: str) -> Path:
        return self.root / MAPS_NAME / f"{image_id}.npy"

    def map_ids(self) -> set[str]:
        maps = self.root / MAPS_NAME
        if not maps.is_dir():
            return set()
        return {p.relative_to(maps).as_posix()[: -len(".npy")] for p in maps.rglob("*.npy")}

    def load_map(self, image_id: str) -> np.ndarray:
        """The 2-D map of one image at its own precision (float16 widened to float32, integers to float64);
        refused if not 2-D, not a float or integer array, not finite, or not exactly representable."""
        path = self.map_path(image_id)
        array = read_npy(path)
        if array.ndim != 2 or array.size == 0:
            raise ImpellerBenchError(f"map has shape {array.shape}; a non-empty 2-D array is required", path)
        try:
            dtype = working_dtype([array])
        except MetricInputError as exc:
            raise ImpellerBenchError(f"map of dtype {array.dtype}: {exc}", path) from None
        if not np.isfinite(array).all():
            raise ImpellerBenchError(f"map holds {int((~np.isfinite(array)).sum())} NaN or infinite value(s)", path)
        return array.astype(dtype, copy=False)


def load_predictions(path: str | Path) -> Predictions:
    """Read and check scores.csv and meta.json (maps are read on demand)."""
    root = Path(path)
    if not root.is_dir():
        raise ImpellerBenchError("predictions folder not found", root)
    scores_path, meta_path = root / SCORES_NAME, root / META_NAME
    if not scores_path.is_file():
        raise ImpellerBenchError(f"no {SCORES_NAME}", root)
    rows = list(csv.reader(io.StringIO(scores_path.read_text())))
    if not rows or [c.strip() for c in rows[0]] != ["image", "score"]:
        raise ImpellerBenchError("the header must be: image,score", scores_path)
    scores: dict[str, float] = {}
    bad = []
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != 2:
            raise ImpellerBenchError(f"line {line}: expected 2 columns, found {len(row)}", scores_path)
        image_id = safe_id(row[0].strip(), scores_path)
        try:
            value = float(row[1])
        except ValueError:
            raise ImpellerBenchError(f"line {line}: score {row[1]!r} is not a number", scores_path) from None
        if not math.isfinite(value):
            bad.append(image_id)
        if image_id in scores:
            raise ImpellerBenchError(f"line {line}: {image_id} has a second score", scores_path)
        scores[image_id] = value
    if bad:
        raise ImpellerBenchError(f"{len(bad)} NaN or infinite score(s): {', '.join(bad[:10])}", scores_path)
    meta = {}
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except (ValueError, RecursionError) as exc:  # (nesting deeper than Python's stack: hostile, not valid)
            raise ImpellerBenchError(f"not valid JSON ({exc})", meta_path) from None
        if not isinstance(meta, dict) or not isinstance(meta.get("config", {}), dict):
            raise ImpellerBenchError("must hold a JSON object (its 'config' an object too)", meta_path)
    return Predictions(root, scores, meta)


def check_against(predictions: Predictions, test_ids: list[str], manifest_sha256: str | None, need_maps: bool) -> None:
    """One error for every way the predictions do not fit the test set, its cause first.

    Predictions made on another dataset (meta.json's manifest sha256 is not
    this dataset's) are refused for that alone: the ids they lack or add
    follow from it, and listing them would bury the cause.
    """
    claimed = predictions.meta.get("manifest_sha256")
    if manifest_sha256 is not None and claimed is not None and claimed != manifest_sha256:
        raise ImpellerBenchError(f"predictions {predictions.root} were made on another dataset: meta.json gives "
                                 f"manifest sha256 {claimed[:12]}..., this dataset's is {manifest_sha256[:12]}...")
    wanted = set(test_ids)
    problems = []
    missing_scores = [i for i in test_ids if i not in predictions.scores]
    if missing_scores:
        problems.append(f"{len(missing_scores)} test image(s) without a score: {', '.join(missing_scores[:20])}")
    map_ids = predictions.map_ids()
    if need_maps:
        missing_maps = [i for i in test_ids if i not in map_ids]
        if missing_maps:
            problems.append(f"{len(missing_maps)} test image(s) without a map: {', '.join(missing_maps[:20])}")
    extra = sorted((set(predictions.scores) | map_ids) - wanted)
    if extra:
        problems.append(f"{len(extra)} prediction(s) for images not in the test set: {', '.join(extra[:20])}")
    if problems:
        raise ImpellerBenchError("; ".join(problems), predictions.root)


def write_predictions(out: str | Path, scores: dict[str, float], maps: dict[str, np.ndarray], meta: dict,
                      dtype=None, overwrite: bool = False) -> Path:
    """Write a predictions folder atomically; maps keep their own type unless ``dtype`` asks for another
    (float16, as submissions store them, rounds: ties may appear)."""
    out = Path(out)
    bad = [i for i, s in scores.items() if not math.isfinite(float(s))]
    if bad:
        raise ImpellerBenchError(f"NaN or infinite score(s) for {', '.join(bad[:10])}")
    with staged_directory(out, overwrite=overwrite) as stage:
        lines = ["image,score"] + [f"{safe_id(i, out)},{float(s)!r}" for i, s in scores.items()]
        (stage / SCORES_NAME).write_text("\n".join(lines) + "\n")
        for image_id, array in maps.items():
            array = np.asarray(array)
            if array.ndim != 2:
                raise ImpellerBenchError(f"map for {image_id} has shape {array.shape}; 2-D required")
            target = stage / MAPS_NAME / f"{safe_id(image_id, out)}.npy"
            target.parent.mkdir(parents=True, exist_ok=True)
            stored = array if dtype is None else array.astype(dtype)
            if not np.isfinite(stored).all():
                raise ImpellerBenchError(f"map for {image_id} is not finite as {stored.dtype.name} "
                                         "(NaN in the map, or values past float16's range: write float32)")
            np.save(target, stored)
        (stage / META_NAME).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return out
