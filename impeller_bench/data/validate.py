"""Validate a built dataset or a source folder, and report every problem found.

Errors make a folder unusable as it stands (unreadable images, masks missing,
of the wrong size, not binary or empty on a defect image, masks on good
images, checksums that do not match the manifest, source files that are
damaged); warnings are worth a look (tiny defect regions, missing tags, and
in a source folder the annotation quirks build-split handles); notes are
facts (byte-identical copies, reused file names).

The dataset checks are one set: ``validate`` runs them, and every command
that reads a dataset (evaluate, run, the leaderboard) refuses a dataset they
find an error in (:func:`require_valid`).
"""
from __future__ import annotations

from pathlib import Path

from ..common.errors import ImpellerBenchError
from ..common.files import sha256_bytes
from ..common.imageio import decode_image, mask_pixels
from ..common.progress import no_progress
from .dataset import MANIFEST_NAME, Dataset, load_dataset
from .report import ERROR, INFO, WARNING, Finding, Report
from .sources import detect_kind
from .sources.supervisely import DEFAULT_MIN_REGION_AREA, tiny_region_findings
from .writing import region_stats


def validate(path: str | Path, min_region_area: int = DEFAULT_MIN_REGION_AREA, progress=None,
             audit: bool = True) -> Report:
    """Validate whatever ``path`` holds: a built dataset, an MVTec folder, or a source folder.

    A dataset is also audited for shortcuts (:mod:`.audit`) unless ``audit`` is
    False: each check is a note, each failed check an error.
    """
    path = Path(path)
    if not path.is_dir():
        raise ImpellerBenchError("folder not found", path)
    if (path / MANIFEST_NAME).is_file() or (path / "train" / "good").is_dir():
        report = validate_dataset(path, min_region_area, progress)
        if audit and report.ok:
            findings, result = audit_findings(path, progress)
            report.extend(findings)
            if result is not None:
                report.details["shortcut_audit"] = result
        elif audit:
            report.add(INFO, "shortcut-audit", _whole_dataset(path), "shortcut audit not run: fix the errors above first")
        return report
    kind = detect_kind(path)
    if kind is None:
        raise ImpellerBenchError(
            "not a dataset (manifest.json or train/good/) nor a known source layout (Supervisely img/ + ann/, Kaggle "
            "*_front/, Magnetic Tile Defects MT_*/)",
            path,
        )
    return validate_source(path, kind, min_region_area, progress)


# Source findings where the annotation's labels disagree (file name, tags, objects): the annotated
# source's documented quirks; and a defect image whose mask keeps no pixel at the threshold (4 of Magnetic
# Tile Defects' MT_Uneven). build-split settles each by leaving that image out of every split, so they
# stop no build; damaged files (unreadable images, annotations or bitmaps) stay errors.
HANDLED_BY_BUILD = frozenset({"name-contradicts-objects", "tag-contradicts-objects", "conflicting-tags",
                              "empty-mask"})


def validate_source(path: Path, kind: str, min_region_area: int = DEFAULT_MIN_REGION_AREA, progress=None) -> Report:
    """Everything found in a source folder, as build-split sees it.

    Errors are what a build cannot use as it stands: damaged or missing files,
    so the folder is not the source as published. A quirk of the annotations
    themselves that build-split handles (``HANDLED_BY_BUILD``) is a warning
    saying how, so a source with only such quirks validates (exit 0).
    """
    from .scanning import scan
    from .sources import read_source

    options = {"min_region_area": min_region_area} if kind == "supervisely" else {}
    records, findings = read_source(kind, path, **options)
    report = Report([handled_by_build(f) for f in findings])
    _, scan_findings = scan(records, progress or no_progress, measure=False)
    report.extend(scan_findings)
    return report


def handled_by_build(finding: Finding) -> Finding:
    """A source error that build-split handles, as a warning that says how; any other finding unchanged."""
    if finding.severity != ERROR or finding.code not in HANDLED_BY_BUILD:
        return finding
    return Finding(WARNING, finding.code, finding.path,
                   f"{finding.message} (handled by build-split: the image is left out of every split)")


def validate_dataset(root: Path, min_region_area: int = DEFAULT_MIN_REGION_AREA, progress=None) -> Report:
    """Check every image and mask of a dataset folder against its manifest (when it has one)."""
    progress = progress or no_progress
    report = Report()
    try:
        dataset = load_dataset(root)
    except ImpellerBenchError as exc:
        report.add(ERROR, "bad-manifest", exc.path or str(root), str(exc).split(": ", 1)[-1])
        return report
    entries = {e["id"]: e for e in (dataset.manifest or {}).get("entries", [])}
    if dataset.manifest is not None and len(entries) != len(dataset.manifest["entries"]):
        report.add(ERROR, "duplicate-id", MANIFEST_NAME, "the manifest lists an id more than once")
    referenced: set[Path] = set()
    for sample in progress(dataset.train + dataset.test, "checking images"):
        entry = entries.get(sample.id)
        rel = sample.image_path.relative_to(root).as_posix()
        referenced.add(sample.image_path)
        if sample.mask_path is not None:  # its mask belongs to it even when the image itself is refused
            referenced.add(sample.mask_path)
        image = _check_file(report, root, sample.image_path, entry and entry.get("sha256"), "image")
        if image is None:
            continue
        size = image.size
        if not sample.is_defect:
            if entry is not None and entry.get("mask"):
                report.add(ERROR, "mask-on-good-image", rel, f"good image has a mask ({entry['mask']})")
            continue
        if sample.mask_path is None:
            if dataset.has_pixel_masks:
                report.add(ERROR, "missing-mask", rel, "defect image has no mask")
            continue
        mask_rel = sample.mask_path.relative_to(root).as_posix()
        mask_image = _check_file(report, root, sample.mask_path, entry and entry.get("mask_sha256"), "mask")
        if mask_image is None:
            continue
        if mask_image.size != size:
            report.add(ERROR, "mask-size-mismatch", mask_rel,
                       f"mask is {mask_image.size[0]}x{mask_image.size[1]}, its image {rel} is {size[0]}x{size[1]}")
            continue
        try:
            mask = mask_pixels(mask_image, mask_rel)
        except ImpellerBenchError as exc:
            report.add(ERROR, "mask-not-binary", mask_rel, str(exc).split(": ", 1)[-1])
            continue
        if not mask.any():
            report.add(ERROR, "empty-mask", mask_rel, "mask of a defect image has no defect pixel")
            continue
        report.extend(tiny_region_findings(mask, mask_rel, min_region_area))
        if entry is not None:
            regions, area = region_stats(mask)
            if (regions, area) != (entry["region_count"], entry["defect_area"]) or len(entry["region_classes"]) != regions:
                report.add(ERROR, "manifest-mismatch", mask_rel,
                           f"{regions} region(s), {area} defect pixel(s), but the manifest says {entry['region_count']} "
                           f"region(s) ({len(entry['region_classes'])} with classes), {entry['defect_area']} pixel(s)")
    gt = root / "ground_truth"
    if gt.is_dir():
        stems_of_good = {s.image_path.stem for s in dataset.test if not s.is_defect}
        for mask_path in sorted(gt.rglob("*_mask.png")):
            if mask_path in referenced:
                continue
            rel = mask_path.relative_to(root).as_posix()
            stem = mask_path.name[: -len("_mask.png")]
            if mask_path.parent.name == "good" or stem in stems_of_good:
                report.add(ERROR, "mask-on-good-image", rel, "a mask for a good image")
            else:
                report.add(WARNING, "unlisted-file", rel, "mask of no listed defect image")
    return report


# A refusal names this many errors and counts the rest (validate lists them all).
ERRORS_NAMED = 3
# Errors found per dataset state: run, compare and the leaderboard reach the check more than once for one
# dataset within a command, and each check reads every image; a few states are plenty to keep.
_errors_by_state: dict[tuple, list[Finding]] = {}
_STATES_KEPT = 8


def require_valid(dataset: Dataset | str | Path, progress=None) -> Dataset:
    """Refuse a dataset in which ``validate`` finds an error: the rule of every command that reads one.
    Returns the dataset (the one given, when it is loaded) marked ``validated``: the later stages in this
    process take it as checked and do not read it again.

    These are :func:`validate_dataset`'s checks (every image and mask read,
    so an unreadable or truncated file is caught here, in seconds); the
    shortcut audit, which takes minutes, is left to ``validate`` and
    ``build-split``. Raises one line, cause first (:func:`refusal`).
    """
    root = Path(dataset.root if isinstance(dataset, Dataset) else dataset)
    state = (root.resolve(), _files_state(root))
    if state not in _errors_by_state:
        if len(_errors_by_state) >= _STATES_KEPT:
            _errors_by_state.clear()
        _errors_by_state[state] = validate_dataset(root, progress=progress).errors
    errors = _errors_by_state[state]
    if errors:
        raise ImpellerBenchError(refusal(root, errors))
    checked = dataset if isinstance(dataset, Dataset) else load_dataset(root)
    checked.validated = True
    return checked


def _files_state(root: Path) -> tuple:
    """Every file under ``root`` with its size, times and inode: any write, copy or replacement changes it."""
    state = []
    for path in sorted(root.rglob("*")):
        if path.is_file():
            info = path.stat()
            state.append((path.relative_to(root).as_posix(), info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino))
    return tuple(state)


def refusal(root: Path, errors: list[Finding]) -> str:
    """The one line a dataset with errors gets: that it fails validation first, then the first few errors."""
    count = f"{len(errors)} error{'s' if len(errors) != 1 else ''}"
    listed = "; ".join(f"{f.path}: {f.code} ({f.message})" for f in errors[:ERRORS_NAMED])
    rest = len(errors) - ERRORS_NAMED
    more = f"; and {rest} more (impeller-bench validate {root} lists them all)" if rest > 0 else ""
    return f"dataset {root} fails validation: {count}: {listed}{more}"


def audit_findings(root: Path, progress=None) -> tuple[list, dict | None]:
    """The shortcut audit of a dataset as findings, and its full result (None when it cannot run).

    One finding gives the verdict; each check is a note (``shortcut-check``)
    when it passes and an error (``shortcut-source-mix``, ``shortcut-separable``)
    when it fails.
    """
    from .audit import audit_dataset, separability_line, source_mix_line

    dataset, where = load_dataset(root), _whole_dataset(root)
    if not dataset.train or not any(s.is_defect for s in dataset.test):
        return [Finding(INFO, "shortcut-audit", where,
                        "shortcut audit not run: the dataset needs train and test defect images")], None
    if all(s.is_defect for s in dataset.test) and not dataset.has_pixel_masks:
        return [Finding(INFO, "shortcut-audit", where, "shortcut audit not run: no good test images and no pixel "
                                                       "masks, so no metric is defined on this dataset")], None
    result = audit_dataset(dataset, progress=progress or no_progress).to_dict()
    verdict = "PASS" if result["passed"] else "FAIL: a detector could pass this split without finding defects"
    findings = [Finding(INFO if result["passed"] else ERROR, "shortcut-audit", where, f"shortcut audit: {verdict}")]
    checks = [("shortcut-source-mix", result["source_mix"]["passed"], source_mix_line(result["source_mix"]))]
    checks += [("shortcut-separable", c["passed"], separability_line(c)) for c in result["separability"]]
    for code, passed, line in checks:
        findings.append(Finding(INFO, "shortcut-check", where, line) if passed else Finding(ERROR, code, where, line))
    return findings, result


def _whole_dataset(root: Path) -> str:
    """Where a finding about the whole dataset points: its manifest, or the folder itself when it has none."""
    return MANIFEST_NAME if (Path(root) / MANIFEST_NAME).is_file() else "."


def _check_file(report: Report, root: Path, path: Path, expected_sha256: str | None, what: str):
    rel = path.relative_to(root).as_posix()
    if not path.is_file():
        report.add(ERROR, f"missing-{what}", rel, f"{what} file is missing")
        return None
    data = path.read_bytes()
    if expected_sha256 is not None and sha256_bytes(data) != expected_sha256:
        report.add(ERROR, "checksum-mismatch", rel, f"sha256 {sha256_bytes(data)[:12]}... differs from the manifest's {expected_sha256[:12]}...")
    try:
        return decode_image(data, rel)
    except ImpellerBenchError as exc:
        report.add(ERROR, f"unreadable-{what}", rel, str(exc).split(": ", 1)[-1])
        return None
