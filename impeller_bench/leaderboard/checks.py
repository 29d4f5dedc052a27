"""Validating a submission: its files, its claims recomputed from its maps on the published split,
its bootstrap replicates and its provenance."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..common.errors import ImpellerBenchError
from ..common.files import sha256_file
from ..data.dataset import load_dataset
from ..data.validate import require_valid
from ..evaluation.evaluate import evaluate
from ..evaluation.predictions import META_NAME, load_predictions
from .submission import (
    BOOTSTRAP_FILE,
    METRICS,
    PREDICTIONS_DIR,
    SUBMISSION_FILE,
    TOLERANCE,
    Check,
    claimed_provenance,
    deprecated_split_refusal,
    is_safe_name,
    load_replicates,
    read_submission,
    scan_files,
)


def published_split_sha256(annotations: Path, split: str) -> str:
    """sha256 of a published split file, which is also the manifest.json of the dataset built from it."""
    if not is_safe_name(split):
        raise ImpellerBenchError(f"unsafe split name {split!r}")
    path = annotations / f"{split}.json"
    if not path.is_file():
        known = sorted(p.stem for p in annotations.glob("*.json"))
        raise ImpellerBenchError(f"unknown split {split!r} (published: {', '.join(known)})", annotations)
    return sha256_file(path)


def load_published_dataset(data_root: Path, annotations: Path, split: str):
    """The dataset ``data_root/<split>``, checked to be the published split byte for byte (its manifest)
    and to pass ``validate``'s checks (:func:`impeller_bench.data.validate.require_valid`): no entry is scored on a broken copy."""
    wanted = published_split_sha256(annotations, split)
    folder = data_root / split
    if not folder.is_dir():
        raise ImpellerBenchError(f"split {split} is not built here; build it with: impeller-bench build-split "
                                 f"--split {annotations / (split + '.json')} --out {folder} (plus the source folders)", folder)
    dataset = load_dataset(folder)
    if dataset.manifest_sha256 != wanted:
        raise ImpellerBenchError(f"this is not the published {split}: manifest sha256 {str(dataset.manifest_sha256)[:12]}..., "
                                 f"published {wanted[:12]}... (rebuild it with build-split --split)", folder)
    require_valid(dataset)
    return dataset


class PublishedDatasets:
    """``datasets(split)``: :func:`load_published_dataset` for ``split``, loaded and checked once however many
    entries are scored on it (a board's 13 MTD entries read its 1,067 images once, not 13 times)."""

    def __init__(self, data_root: str | Path, annotations: str | Path):
        self.data_root, self.annotations = Path(data_root), Path(annotations)
        self._loaded: dict = {}

    def __call__(self, split: str):
        if split not in self._loaded:  # a failed load is not kept: it raises again, naming its problem
            self._loaded[split] = load_published_dataset(self.data_root, self.annotations, split)
        return self._loaded[split]


def replicate_problems(stored: dict[str, np.ndarray], recomputed: dict[str, np.ndarray],
                       tolerance: float = TOLERANCE) -> list[str]:
    """One line per metric whose stored replicates differ from the recomputed ones."""
    problems = []
    for name, values in stored.items():
        again = recomputed.get(name)
        if again is None or again.shape != values.shape:
            problems.append(f"{BOOTSTRAP_FILE}: {name}: {len(values)} replicates stored, "
                            f"{0 if again is None else len(again)} recomputed")
        elif np.abs(again - values).max() > tolerance:
            problems.append(f"{BOOTSTRAP_FILE}: {name}: replicates differ from the recomputed ones by up to "
                            f"{np.abs(again - values).max():.1e} (tolerance {tolerance:.0e})")
    return problems


def compare_claims(claimed: dict, recomputed: dict, tolerance: float = TOLERANCE, intervals: bool = True) -> list[str]:
    """One line per claimed number that differs from the recomputed one by more than ``tolerance`` (the 95%
    intervals too, unless ``intervals`` is False)."""
    problems = []
    for name in METRICS:
        claim, actual = claimed["metrics"][name], recomputed["metrics"].get(name)
        if (claim is None) != (actual is None):
            shown = lambda v: "null" if v is None else f"{v:.6f}"
            problems.append(f"{name}: claimed {shown(claim)}, recomputed {shown(actual)}"
                            + (" (not defined: the split has no good test images)" if actual is None else ""))
            continue
        if claim is None:
            continue
        pairs = [("", claim, actual)]
        pairs += [(f" 95% interval {end}", claimed["ci95"][name][k], recomputed["ci95"][name][k])
                  for k, end in enumerate(("low", "high")) if intervals]
        for what, claim, actual in pairs:
            if abs(claim - actual) > tolerance:
                problems.append(f"{name}{what}: claimed {claim:.6f}, recomputed {actual:.6f} "
                                f"(off by {abs(claim - actual):.1e}; tolerance {tolerance:.0e})")
    return problems


def validate_submission(folder: str | Path, data_root: str | Path, annotations: str | Path, progress=None,
                        intervals: bool = True, datasets: PublishedDatasets | None = None) -> Check:
    """Check one submission folder completely; the evaluator's numbers are recomputed, never read.

    ``intervals=False`` recomputes everything but the bootstrap intervals (the costly part: 1,000 resamples,
    minutes for an MTD entry on 2 cores), for a quick pass over many entries; the command line always
    checks them. ``datasets``, shared over many entries of the same ``data_root`` and ``annotations``, loads
    each split once."""
    folder, data_root, annotations = Path(folder), Path(data_root), Path(annotations)
    datasets = datasets or PublishedDatasets(data_root, annotations)
    check = Check(folder)
    if not is_safe_name(folder.name):
        check.problems.append(f"{folder.name!r}: not an entry name (letters, digits, '_', '-', '.'; a letter or "
                              "digit first: no hidden folders)")
        return check
    files, check.problems = scan_files(folder)
    if check.problems:
        return check
    claimed, check.problems = read_submission(folder)
    if check.problems:
        return check
    split, claimed_sha = claimed["dataset"]["split"], claimed["dataset"]["manifest_sha256"]
    refusal = deprecated_split_refusal(split, claimed["name"])
    if refusal:
        check.problems.append(refusal)
        return check
    try:
        published = published_split_sha256(annotations, split)
    except ImpellerBenchError as exc:
        check.problems.append(str(exc))
        return check
    if claimed_sha != published:
        check.problems.append(f"wrong manifest hash: the submission claims {claimed_sha[:12]}... for {split}, "
                              f"the published split's is {published[:12]}...")
        return check
    try:
        stored = load_replicates(folder, claimed)
    except ImpellerBenchError as exc:  # reported beside what the recomputation finds (a forged claim, say)
        stored = None
        check.problems.append(str(exc))
    try:
        predictions = load_predictions(folder / PREDICTIONS_DIR)
        dataset = datasets(split)
        samples = claimed["bootstrap"]["samples"] if intervals else 0
        recomputed = evaluate(dataset, predictions, samples, claimed["bootstrap"]["seed"], progress,
                              replicates=intervals)
    except ImpellerBenchError as exc:
        check.problems.append(str(exc))
        return check
    check.recomputed = recomputed
    check.problems += provenance_problems(claimed, predictions.meta)
    check.problems += compare_claims(claimed, recomputed, intervals=intervals)
    if intervals and stored is not None:
        check.problems += replicate_problems(stored, recomputed["replicates"])
    return check


def provenance_problems(claimed: dict, meta: dict) -> list[str]:
    """Where the claim contradicts its predictions' own record (``meta.json``): a copy of one method's
    predictions filed under another's name, say."""
    recorded = claimed_provenance(meta)
    return [f"{SUBMISSION_FILE} claims {key} {json.dumps(claimed[key])[:80]}, but its predictions' "
            f"{META_NAME} records {json.dumps(recorded[key])[:80]}"
            for key in recorded if claimed[key] != recorded[key]]
