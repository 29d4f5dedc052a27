"""Commands that make and check datasets: build-split, validate, synth, download."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from .options import count_value, progress_bar, size_value

# What --split takes from the split file: giving one of these beside it is a mistake worth saying.
_SPLIT_FILE_DECIDES = ("train_good", "test_good", "test_defect", "seed", "size", "defect_classes", "group_threshold",
                       "registration", "allow_source_mix", "balance", "name", "test_good_share")


# What --test-good-share decides instead (DifferNet's protocol by photo group).
_SHARE_DECIDES = ("train_good", "test_good", "test_defect")


@click.command("build-split")
@click.option("--supervisely", "supervisely", multiple=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Supervisely project folder (img/ + ann/); repeatable.")
@click.option("--kaggle", "kaggle", multiple=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Kaggle casting folder (ok_front/, def_front/, optionally under train/ and test/); repeatable.")
@click.option("--mvtec", "mvtec", multiple=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="MVTec AD layout folder used as a source; repeatable.")
@click.option("--mtd", "mtd", multiple=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Magnetic Tile Defects folder (MT_Free/, MT_<Class>/Imgs/ with a grey mask beside each photo, "
                   "thresholded at 128); repeatable.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Dataset folder to write.")
@click.option("--train-good", default="400", show_default=True, callback=count_value,
              help="Normal training images: a number, or 'all' (every image the training side holds).")
@click.option("--test-good", default=100, show_default=True, type=click.IntRange(0), help="Normal test images.")
@click.option("--test-defect", default="100", show_default=True, callback=count_value,
              help="Defective test images with masks: a number (at most, with --balance), or 'all'.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of every random choice of the selection.")
@click.option("--size", default="256", show_default=True, callback=size_value,
              help="Side in pixels (area-averaged), or 'native' to copy the original bytes.")
@click.option("--split", "split_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Rebuild a published split (annotations/*.json) exactly: its counts, seed, size, options and name "
                   "come from it.")
@click.option("--defect-class", "defect_classes", multiple=True, help="Supervisely classes that count as defects (default: holes, chipping, deburring).")
@click.option("--mask-source", "mask_sources", multiple=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Annotated folder (Supervisely, or MVTec AD layout with masks) whose images are not used: its "
                   "masks are carried onto their registered variants among the other sources' defect images; "
                   "repeatable.")
@click.option("--group-threshold", default=None, type=click.FloatRange(0, 1), help="Match score that joins two images into one photo group (default 0.7).")
@click.option("--registration/--no-registration", default=True, show_default=True,
              help="Also join photos that register onto each other pixel for pixel (--no-registration: impeller-v1's grouping).")
@click.option("--allow-source-mix", is_flag=True,
              help="Build even if test good and test defect images come from different source mixes (recorded in the manifest).")
@click.option("--balance/--no-balance", default=True, show_default=True,
              help="Keep only test defects matched to the test goods on defect-blind measures (lighting, sharpness, "
                   "pretrained features), at most two per good image and at most --test-defect.")
@click.option("--test-good-share", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="DifferNet's protocol, by photo group: this share of the good images (whole photo groups, "
                   "seeded) and every defect image test (matched with --balance), the other good images train "
                   "(the mtd split: 0.2); replaces --train-good, --test-good and --test-defect.")
@click.option("--audit/--no-audit", default=True, show_default=True, help="Run the shortcut audit on the written images.")
@click.option("--name", default="custom", show_default=True, help="Name recorded in the manifest.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
def build_split_command(supervisely, kaggle, mvtec, mtd, out, train_good, test_good, test_defect, seed, size,
                        split_file, defect_classes, mask_sources, group_threshold, registration, allow_source_mix,
                        balance, test_good_share, audit, name, overwrite):
    """Build the benchmark dataset (MVTec AD layout + manifest.json) from public sources.

    Exit code 0 when the dataset is written and its shortcut audit passes (or
    is skipped), 1 when it is written but the audit fails (publish no number
    on it), 2 when nothing is written."""
    from ..data.build import build_split
    from ..data.grouping import DEFAULT_MATCH_THRESHOLD
    from ..data.scanning import Counts

    ctx = click.get_current_context()
    given = lambda names: [f"--{p.replace('_', '-')}" for p in names
                           if ctx.get_parameter_source(p) == click.core.ParameterSource.COMMANDLINE]
    if split_file is not None and given(_SPLIT_FILE_DECIDES):
        raise click.UsageError(f"{', '.join(given(_SPLIT_FILE_DECIDES))}: --split takes these from the split file; "
                               "drop them")
    if test_good_share is not None and given(_SHARE_DECIDES):
        named = given(_SHARE_DECIDES)
        raise click.UsageError(f"{', '.join(named)}: --test-good-share decides the counts itself (every good photo "
                               f"group on one side, the test defects all, or those --balance matches); drop "
                               f"{'it' if len(named) == 1 else 'them'}")
    manifest, report = build_split(
        out, supervisely=supervisely, kaggle=kaggle, mvtec=mvtec, mtd=mtd, mask_sources=mask_sources,
        counts=Counts(train_good, test_good, test_defect), test_good_share=test_good_share, seed=seed, size=size,
        split_file=split_file,
        defect_classes=defect_classes or None,
        group_threshold=DEFAULT_MATCH_THRESHOLD if group_threshold is None else group_threshold,
        register=registration, allow_source_mix=allow_source_mix, balance=balance, audit=audit,
        name=name, overwrite=overwrite, progress=progress_bar,
    )
    click.echo(build_summary(manifest, report, out))
    if not audit:
        click.echo("shortcut audit: not run (--no-audit); run impeller-bench validate on the dataset before "
                   "publishing any number on it")
    if not report.get("shortcut_audit", {"passed": True})["passed"]:
        click.echo(f"{out} is written, but its shortcut audit failed: a detector could pass it without finding "
                   "defects, so publish no number on it", err=True)
        sys.exit(1)


def build_summary(manifest: dict, report: dict, out: Path) -> str:
    entries = manifest["entries"]
    count = lambda split, label: sum(1 for e in entries if e["split"] == split and e["label"] == label)
    lines = [f"wrote {out}: {count('train', 'good')} train good, {count('test', 'good')} test good, "
             f"{count('test', 'defect')} test defect ({manifest['name']}, size {manifest['build']['size']})"]
    if "grouping" in report:
        g = report["grouping"]
        lines.append(f"photo groups: {g['groups']} groups from {g['images']} images; {g['groups_with_several_images']} "
                     f"groups hold several images ({g['images_in_shared_groups']} images); merges: "
                     f"{g['exact_duplicate_pairs']} byte-identical pairs, {g['content_matches']} content matches"
                     + (f", {g['capture_joins']} joined into capture series (one object under several lightings)"
                        if g.get("capture_joins") else ""))
        lines.append(f"left out: {len(report['excluded'])} image(s) that failed validation (see build_report.json)")
        for path, reasons in list(report["excluded"].items())[:10]:
            lines.append(f"  {path}: {'; '.join(reasons)}")
        if report.get("left_out"):
            lines.append(f"left out of both sides: {len(report['left_out'])} image(s) (see build_report.json): "
                         f"{next(iter(report['left_out'].values()))}")
        if "matching" in report:
            m = report["matching"]
            lines.append(f"test defects matched to the test goods on defect-blind measures: kept {m['kept']} of "
                         f"{m['candidate_test_defects']} candidates (at most {m['per_good']} per good image)")
        if "mask_transfer" in report:
            t = report["mask_transfer"]
            lines.append(f"masks carried: {t['variants_with_masks']} variants of {t['photos_with_a_variant']} of "
                         f"{t['annotated_defect_photos']} annotated defect photos ({t['registrations']} registrations; "
                         f"residual misalignment median {t['residual_shift_px'].get('median')} px, "
                         f"max {t['residual_shift_px'].get('max')} px)")
    else:
        lines.append(f"verified {report['entries_verified']} entries against {report['split_file']}: byte for byte")
    if "shortcut_audit" in report:
        from ..data.audit import audit_lines

        lines += audit_lines(report["shortcut_audit"])
    return "\n".join(lines)


@click.command("validate")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--min-region-area", default=16, show_default=True, type=click.IntRange(1), help="Smaller defect regions are reported.")
@click.option("--audit/--no-audit", default=True, show_default=True,
              help="Run the shortcut audit on a built dataset (a failed audit is an error).")
def validate_command(folder, as_json, min_region_area, audit):
    """Validate a built dataset or a source folder; exit code 0 only when nothing is an error."""
    from ..data.validate import validate

    report = validate(folder, min_region_area, progress_bar, audit=audit)
    click.echo(report.to_json() if as_json else report.text(f"validated {folder}"))
    sys.exit(0 if report.ok else 1)


@click.command("synth")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--train-good", default=60, show_default=True, type=click.IntRange(0))
@click.option("--test-good", default=20, show_default=True, type=click.IntRange(0))
@click.option("--test-defect", default=20, show_default=True, type=click.IntRange(0))
@click.option("--size", default=256, show_default=True, type=click.IntRange(32))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
def synth_command(out, train_good, test_good, test_defect, size, seed, overwrite):
    """Write synthetic impellers with exact defect masks, in the benchmark's layout."""
    from ..data.synth import write_synthetic

    manifest = write_synthetic(out, train_good, test_good, test_defect, size, seed, overwrite, progress_bar)
    click.echo(f"wrote {out}: {train_good} train good, {test_good} test good, {test_defect} test defect "
               f"(synthetic, size {size}, seed {seed}, {len(manifest['entries'])} images)")


@click.command("download")
@click.option("--to", "to", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder to unpack the sources into.")
@click.option("--source", "sources", multiple=True, help="Only this source (repeatable; default: all known sources).")
@click.option("--archive", "archives", multiple=True, metavar="NAME=PATH_OR_URL",
              help="Use this zip (a local file or a URL) for source NAME instead of its own locations; repeatable.")
@click.option("--no-kaggle", is_flag=True, help="Do not use the kaggle package even when it is configured.")
@click.option("--annotations", default="annotations", show_default=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder with sources/<name>.sha256.")
@click.option("--overwrite", is_flag=True, help="Replace sources already unpacked.")
def download_command(to, sources, archives, no_kaggle, annotations, overwrite):
    """Fetch the public sources, check every file's sha256, then unpack them into TO/<source>."""
    from ..data.download import download_source
    from ..data.sources.references import KNOWN_SOURCES

    given = {}
    for item in archives:
        name, sep, location = item.partition("=")
        if not sep or not location:
            raise click.BadParameter(f"{item!r}: expected NAME=PATH_OR_URL", param_hint="--archive")
        given[name] = location
    unknown = sorted((set(sources) | set(given)) - set(KNOWN_SOURCES))
    if unknown:
        raise click.BadParameter(f"unknown source(s) {', '.join(unknown)} (known: {', '.join(KNOWN_SOURCES)})")
    for name in sources or list(KNOWN_SOURCES):
        receipt = download_source(name, to, annotations, given.get(name), not no_kaggle, overwrite, progress_bar,
                                  say=lambda text: click.echo(text, err=True))
        click.echo(f"{name}: {receipt['files']} files verified and unpacked into {receipt['folder']} (from {receipt['origin']})")
    click.echo(f"next: impeller-bench build-split --supervisely {to}/casting-supervisely "
               f"--split annotations/impeller-v2-native.json --out data/impeller-v2-native")
