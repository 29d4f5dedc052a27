"""Build a benchmark dataset from source records: scan, group, select, write.

The pipeline is four pure-ish steps that tests call one by one:

- :func:`scan` decodes every image once: checks it, fingerprints it for photo
  grouping and measures the simple statistics the selection stratifies on.
- :func:`group_photos` joins variants of one photo (see :mod:`.grouping`).
- :func:`plan_split` picks the train and test images for a seed.
- :func:`write_dataset` writes the MVTec AD layout and ``manifest.json``
  atomically, from a plan or from a published split file
  (:func:`plan_from_split_file`).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..common.errors import ImpellerBenchError
from ..common.progress import no_progress
from . import grouping
from .dataset import FORMAT_VERSION
from .report import ERROR
from .scanning import Counts, Progress, finding_path, group_photos, scan
from .selection import (
    TEST,
    TRAIN,
    Selected,
    SplitPlan,
    balance_test_defects,
    check_source_mix,
    eligible,
    plan_by_group_share,
    plan_split,
)
from .sources.records import DEFECT, GOOD, SourceRecord
from .writing import write_dataset


def load_split_file(path: str | Path) -> dict:
    path = Path(path)
    try:
        split = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ImpellerBenchError(f"cannot read split file ({exc})", path) from exc
    if not isinstance(split, dict) or split.get("format_version") != FORMAT_VERSION or "entries" not in split:
        raise ImpellerBenchError(f"not a split file of format version {FORMAT_VERSION}", path)
    return split


def plan_from_split_file(split: dict, records: list[SourceRecord]) -> SplitPlan:
    """The plan a published split describes, checked against the given sources' checksums.

    Entries whose masks were carried from an annotated original
    (``mask_source``) get them again here, through the recorded map: their
    records in ``records`` are replaced by the carried ones.
    """
    index = {(r.source, r.relpath): k for k, r in enumerate(records)}
    by_kind: dict[str, list[str]] = {}
    for r in records:
        by_kind.setdefault(r.kind, [])
        if r.source not in by_kind[r.kind]:
            by_kind[r.kind].append(r.source)
    rename = {}
    for name, ref in split["sources"].items():
        given = by_kind.get(ref["kind"], [])
        if name in given:
            rename[name] = name
        elif len(given) == 1:
            rename[name] = given[0]  # the user's folder may carry another name
        else:
            flag = f"--{ref['kind']}" + (" (or --mask-source, where it only lends its masks)"
                                         if ref["kind"] == "supervisely" else "")
            raise ImpellerBenchError(
                f"split needs source {name!r} ({ref['kind']}); give its folder with {flag}"
                + (f" (given: {', '.join(given)})" if given else "")
            )

    def lookup(source, path, sha256):
        key = (rename[source], path)
        if key not in index:
            return None, f"{key[0]}/{key[1]}: missing"
        if records[index[key]].sha256 != sha256:
            return None, (f"{key[0]}/{key[1]}: sha256 {records[index[key]].sha256[:12]}... differs from the split's "
                          f"{sha256[:12]}...")
        return index[key], None

    problems, selected = [], []
    for e in split["entries"]:
        k, problem = lookup(e["source"], e["source_path"], e["source_sha256"])
        origin = e.get("mask_source")
        if problem is None and origin is not None:
            o, problem = lookup(origin["source"], origin["source_path"], origin["source_sha256"])
            if problem is None:
                from .transfer import carried_record

                records[k] = carried_record(records[o], records[k], origin["matrix"], origin)
        if problem is None and e["mask"] is not None and records[k].defect_mask is None:
            problem = f"{rename[e['source']]}/{e['source_path']}: the split needs its defect mask, the source has none"
        if problem is not None:
            problems.append(problem)
            continue
        selected.append(Selected(k, e["split"], e["label"], e["group"], e["group_shared_with_train"]))
    if problems:
        raise ImpellerBenchError(
            f"{len(problems)} source file(s) do not match the split (nothing was written):\n  " + "\n  ".join(problems)
        )
    b = split["build"]
    return SplitPlan(selected, Counts(b["train_good"], b["test_good"], b["test_defect"]), b["seed"])


def read_sources(supervisely=(), kaggle=(), mvtec=(), defect_classes=None, mtd=()):
    """Run the importers over the given folders; returns (records, findings)."""
    from .sources import read_source
    from .sources.supervisely import DEFAULT_DEFECT_CLASSES

    records, findings = [], []
    for kind, roots in (("supervisely", supervisely), ("kaggle", kaggle), ("mvtec", mvtec), ("mtd", mtd)):
        for root in roots:
            options = {"defect_classes": defect_classes or DEFAULT_DEFECT_CLASSES} if kind == "supervisely" else {}
            found_records, found = read_source(kind, root, **options)
            records += found_records
            findings += found
    names = [r.source for r in records]
    if len({(r.source, r.relpath) for r in records}) != len(records):
        raise ImpellerBenchError("two source folders share a name: " + ", ".join(sorted({n for n in names if names.count(n) > 1})))
    if not records:
        raise ImpellerBenchError("no source images: give at least one --supervisely, --kaggle, --mvtec or --mtd folder")
    return records, findings


def build_split(
    out: str | Path,
    *,
    supervisely=(),
    kaggle=(),
    mvtec=(),
    mtd=(),
    mask_sources=(),
    counts: Counts = Counts(),
    test_good_share: float | None = None,
    seed: int = 0,
    size: int | str = 256,
    split_file: str | Path | None = None,
    defect_classes=None,
    group_threshold: float = grouping.DEFAULT_MATCH_THRESHOLD,
    register: bool = True,
    allow_source_mix: bool = False,
    balance: bool = True,
    audit: bool = True,
    name: str = "custom",
    overwrite: bool = False,
    progress: Progress = no_progress,
) -> tuple[dict, dict]:
    """Build a dataset folder from source folders; returns (manifest, build report).

    With ``split_file`` the published split is rebuilt exactly (counts, seed,
    size and classes come from it); otherwise images are selected for ``seed``.
    ``mask_sources`` are annotated (Supervisely) folders whose images are not
    used: their masks are carried onto registered variants among the image
    sources' defect images (:mod:`.transfer`). A selection whose test good and
    test defect images come from different source mixes is refused unless
    ``allow_source_mix``. With ``balance``, the test defects are matched to
    the test goods on defect-blind measures (:func:`balance_test_defects`), so
    that lighting and photo sessions cannot tell them apart; at most
    ``counts.test_defect`` are kept. With ``test_good_share``, ``counts``
    give way to DifferNet's protocol by photo group (:func:`plan_by_group_share`),
    whose test defects ``balance`` matches too. The shortcut audit (:mod:`.audit`) runs
    on the written images and goes into the report (``audit=False`` skips it).
    """
    from .sources.mtd import MASK_RULE, MASK_THRESHOLD
    from .sources.supervisely import DEFAULT_DEFECT_CLASSES

    inspect = (lambda stage: {"shortcut_audit": run_audit(stage, progress)}) if audit else None
    if split_file is not None:
        split = load_split_file(split_file)
        b = split["build"]
        extra = _by_kind(mask_sources)
        records, findings = read_sources(tuple(supervisely) + tuple(extra["supervisely"]), tuple(kaggle) + tuple(extra["kaggle"]),
                                         tuple(mvtec) + tuple(extra["mvtec"]), b["defect_classes"],
                                         tuple(mtd) + tuple(extra["mtd"]))
        plan = plan_from_split_file(split, records)
        report = {"split_file": str(split_file), "entries_verified": len(plan.selected)}
        manifest = write_dataset(
            out, records, plan, name=split["name"], size=b["size"], defect_classes=b["defect_classes"],
            group_threshold=b["group_threshold"], report=report, expected=split, overwrite=overwrite, progress=progress,
            inspect=inspect,
        )
        return manifest, report

    given_classes = defect_classes
    defect_classes = tuple(defect_classes or DEFAULT_DEFECT_CLASSES)
    records, findings = read_sources(supervisely, kaggle, mvtec, defect_classes, mtd)
    if mtd and not (given_classes or supervisely or kaggle or mvtec or mask_sources):
        defect_classes = tuple(sorted({c for r in records for c in r.defect_classes}))  # the ones MTD's folders name
    scans, scan_findings = scan(records, progress)
    findings += scan_findings
    usable = eligible(records, scans, findings)
    transfer_report, mask_source_kinds = {}, {}
    if mask_sources:
        records, transfer_report = carry_masks(records, scans, usable, mask_sources, defect_classes, progress)
        mask_source_kinds = transfer_report.pop("mask_source_kinds")
    groups = group_photos(records, scans, register=register, threshold=group_threshold, progress=progress)
    if test_good_share is not None:
        plan = plan_by_group_share(records, groups, usable, test_good_share, seed)
    else:
        plan = plan_split(records, scans, groups, usable, counts, seed, defect_candidates=balance)
    if balance:
        limit = None if test_good_share is not None else counts.test_defect
        plan = balance_test_defects(records, plan, size, limit, progress)
    mix = check_source_mix(records, plan)
    if not mix.passed and not allow_source_mix:
        raise ImpellerBenchError(
            "the selection's test good and test defect images come from different source mixes, so a detector "
            f"could pass it by recognising the source ({mix.line().split(' - ', 1)[-1]}). Nothing was written. "
            "Choose sources so that both sides come from the same ones (e.g. one source alone, or --mask-source "
            "to carry the annotated masks onto another source's variants), or pass --allow-source-mix to build "
            "it anyway (recorded in the manifest)."
        )
    report = build_report(records, findings, groups, usable, plan) | transfer_report | {"source_mix": mix.line()}
    if "matching" in plan.notes:
        report["matching"] = plan.notes["matching"]
    options = {"registration": register, "allow_source_mix": allow_source_mix, "bootstrap_unit": "group",
               "matched_test_defects": balance}
    if test_good_share is not None:
        options["protocol"] = GROUP_SHARE_PROTOCOL | {"test_good_share": test_good_share}
    if mtd:
        options |= {"source_mask_rule": MASK_RULE, "source_mask_threshold": MASK_THRESHOLD}
    if mask_sources:
        from .transfer import ACCEPTANCE_RULE

        options["mask_transfer"] = ACCEPTANCE_RULE
    manifest = write_dataset(
        out, records, plan, name=name, size=size, defect_classes=defect_classes,
        group_threshold=group_threshold, report=report, overwrite=overwrite, progress=progress,
        options=options, mask_sources=mask_source_kinds, inspect=inspect,
    )
    return manifest, report


GROUP_SHARE_PROTOCOL = {
    "after": "DifferNet, Rudolph, Wandt and Rosenhahn, WACV 2021 (arXiv 2008.12577): a random 80% of the "
             "defect-free images train, the other 20% and every defect image test",
    "change": "drawn by photo group (a tile's lightings together), not by image, so that no tile is on both sides",
}


def carry_masks(records, scans, usable, mask_sources, defect_classes, progress=no_progress):
    """Records with masks carried from the annotated ``mask_sources`` onto registered variants among the
    defect images of ``records``; returns (new records, report)."""
    from .transfer import best_transfer_per_variant, carried_record, find_transfers

    mask_records, mask_findings = read_sources(**_by_kind(mask_sources), defect_classes=defect_classes)
    mask_scans, more = scan(mask_records, progress)
    mask_usable = eligible(mask_records, mask_scans, mask_findings + more)
    originals = [i for i, r in enumerate(mask_records)
                 if mask_usable[i] and r.label == DEFECT and r.defect_mask is not None and r.defect_mask.any()]
    candidates = [len(mask_records) + j for j, r in enumerate(records)
                  if usable[j] and r.label == DEFECT and r.defect_mask is None]
    pool = list(mask_records) + list(records)
    fingerprints = [s.fingerprint if s is not None else None for s in list(mask_scans) + list(scans)]
    tried = find_transfers(pool, fingerprints, originals, candidates, progress=progress)
    best = best_transfer_per_variant(tried)
    records = list(records)
    for variant, t in best.items():
        records[variant - len(mask_records)] = carried_record(pool[t.original], pool[variant], t.registration.matrix,
                                                              t.origin(pool))
    reasons: dict[str, int] = {}
    for t in tried:
        key = t.reason or "kept"
        reasons[key] = reasons.get(key, 0) + 1
    kept = [t for t in tried if t.accepted]
    shifts = [t.residual_shift for t in kept]
    ratios = [t.area_ratio for t in kept]
    return records, {
        "mask_sources": sorted({r.source for r in mask_records}),
        "mask_source_kinds": {r.source: r.kind for r in mask_records},
        "mask_transfer": {
            "annotated_defect_photos": len(originals),
            "photos_with_a_variant": len({t.original for t in kept}),
            "registrations": len(tried),
            "outcomes": reasons,
            "variants_with_masks": len(best),
            "residual_shift_px": _percentiles(shifts),
            "area_ratio": _percentiles(ratios),
        },
    }


def _by_kind(folders) -> dict[str, list]:
    """Source folders sorted by importer (read_sources' keyword arguments), each kind found from its layout."""
    from .sources import detect_kind

    out: dict[str, list] = {"supervisely": [], "kaggle": [], "mvtec": [], "mtd": []}
    for folder in folders:
        kind = detect_kind(folder)
        if kind is None:
            raise ImpellerBenchError("not a known source layout (Supervisely img/ + ann/, Kaggle *_front/, MVTec AD, "
                                     "Magnetic Tile Defects MT_*/)", folder)
        out[kind].append(folder)
    return out


def _percentiles(values) -> dict:
    if not values:
        return {}
    p = np.percentile(values, [0, 50, 99, 100])
    return {"min": round(float(p[0]), 4), "median": round(float(p[1]), 4), "p99": round(float(p[2]), 4),
            "max": round(float(p[3]), 4)}


def run_audit(folder: Path, progress=no_progress) -> dict:
    """The shortcut audit of a written dataset folder, as a report section."""
    from .audit import audit_dataset
    from .dataset import load_dataset

    return audit_dataset(load_dataset(folder), progress=progress).to_dict()


def build_report(records, findings, groups, usable, plan: SplitPlan) -> dict:
    """What the build left out and why, and what the photo grouping found."""
    group_of = groups.group_of
    labels_of_group: dict[int, set[str]] = {}
    for r, g in zip(records, group_of):
        labels_of_group.setdefault(int(g), set()).add(r.label)
    excluded = [finding_path(r) for r, ok in zip(records, usable) if not ok]
    errors_by_path: dict[str, list[str]] = {}
    for f in findings:
        if f.severity == ERROR:
            errors_by_path.setdefault(f.path, []).append(f.message)
    # Files an importer refused outright (no record: e.g. a defect image whose mask keeps no pixel) are left out too.
    read = {finding_path(r) for r in records}
    excluded += sorted(path for path in errors_by_path if path not in read)
    return {
        "records": len(records),
        "excluded": {path: errors_by_path.get(path, ["not usable"]) for path in excluded},
        "grouping": groups.summary() | {
            "groups_with_good_and_defect": sum(1 for labels in labels_of_group.values() if len(labels) > 1),
        },
        "available": plan.notes.get("available", {}),
        "selected": {
            f"{split}_{label}": sum(1 for s in plan.selected if s.split == split and s.label == label)
            for split, label in ((TRAIN, GOOD), (TEST, GOOD), (TEST, DEFECT))
        },
        "findings": {code: n for code, n in sorted(_count_codes(findings).items())},
    } | ({"left_out": plan.notes["left_out"]} if plan.notes.get("left_out") else {})


def _count_codes(findings) -> dict[str, int]:
    out: dict[str, int] = {}
    for f in findings:
        out[f.code] = out.get(f.code, 0) + 1
    return out
