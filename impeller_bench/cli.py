"""The ``impeller-bench`` command line: a thin layer over the library."""
from __future__ import annotations

import json
import signal
import sys
import threading
import time
from pathlib import Path

import click

from . import __version__
from .errors import ImpellerBenchError


def _progress(items, label, status=None):
    """Progress of long loops on stderr: a bar on a terminal; elsewhere (a log, CI, nohup), where click's bar
    would print only its label, a line now and then and one at the end."""
    items = list(items)
    if not sys.stderr.isatty():
        from .progress import report_lines

        yield from report_lines(items, label, status, write=lambda text: click.echo(text, err=True))
        return
    show = (lambda _item: status()) if status else None
    with click.progressbar(items, label=label.ljust(26), file=sys.stderr, show_pos=True, item_show_func=show) as bar:
        yield from bar


def _exit_on_terminate(signum, frame):
    raise SystemExit(128 + signum)


class _Group(click.Group):
    """Turns the library's input errors into one clean line and exit code 2."""

    def invoke(self, ctx):
        # A kill (timeout, a scheduler) unwinds like Ctrl-C, so staged outputs are removed, not left half-written.
        if threading.current_thread() is threading.main_thread():  # signals can only be caught there
            signal.signal(signal.SIGTERM, _exit_on_terminate)
        try:
            return super().invoke(ctx)
        except ImpellerBenchError as exc:
            click.echo(f"error: {exc}", err=True)
            for note in getattr(exc, "__notes__", ()):
                click.echo(f"note: {note}", err=True)
            ctx.exit(2)
        except MemoryError as exc:  # numpy's _ArrayMemoryError among them: a line, not a traceback
            size = f" ({exc})" if str(exc) else ""
            click.echo(f"error: out of memory in '{ctx.invoked_subcommand}'{size}; free memory, or ask for less "
                       "(fewer bootstrap resamples, smaller maps, fewer images at a time)", err=True)
            ctx.exit(3)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="impeller-bench")
def main():
    """Dataset and benchmark toolkit for pixel-level anomaly detection on cast impellers."""


def _number_or(word: str, unit: str, minimum: int, keyword_value):
    """A click callback: an integer of at least ``minimum``, or ``word`` (returned as ``keyword_value``)."""

    def parse(ctx, param, value: str):
        if value.lower() == word:
            return keyword_value
        try:
            number = int(value)
        except ValueError:
            raise click.BadParameter(f"{value!r}: a number of {unit}, or '{word}'") from None
        if number < minimum:
            raise click.BadParameter(f"{number}: at least {minimum}")
        return number

    return parse


_size = _number_or("native", "pixels", 32, "native")
_count = _number_or("all", "images", 0, None)


def _device(ctx, param, value):
    """A click callback: --device checked against this machine's devices at parsing, before any work."""
    if value is None:
        return None
    from .detectors.base import parse_device

    return str(parse_device(value, "--device"))


_device_option = click.option("--device", callback=_device, help="cpu, cuda, cuda:1 ... (default: CUDA when present).")


class _MethodsCommand(click.Command):
    """A command whose help ends with the registered detectors (the registry, imported only for the help)."""

    def format_help_text(self, ctx, formatter):
        super().format_help_text(ctx, formatter)
        from .detectors import available

        formatter.write_paragraph()
        with formatter.indentation():
            formatter.write_text(f"Methods: {', '.join(available())}.")


# What --split takes from the split file: giving one of these beside it is a mistake worth saying.
_SPLIT_FILE_DECIDES = ("train_good", "test_good", "test_defect", "seed", "size", "defect_classes", "group_threshold",
                       "registration", "allow_source_mix", "balance", "name", "test_good_share")
# What --test-good-share decides instead (DifferNet's protocol by photo group).
_SHARE_DECIDES = ("train_good", "test_good", "test_defect")


@main.command("build-split")
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
@click.option("--train-good", default="400", show_default=True, callback=_count,
              help="Normal training images: a number, or 'all' (every image the training side holds).")
@click.option("--test-good", default=100, show_default=True, type=click.IntRange(0), help="Normal test images.")
@click.option("--test-defect", default="100", show_default=True, callback=_count,
              help="Defective test images with masks: a number (at most, with --balance), or 'all'.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of every random choice of the selection.")
@click.option("--size", default="256", show_default=True, callback=_size,
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
    from .build import Counts, build_split
    from .grouping import DEFAULT_MATCH_THRESHOLD

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
        name=name, overwrite=overwrite, progress=_progress,
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
        from .audit import audit_lines

        lines += audit_lines(report["shortcut_audit"])
    return "\n".join(lines)


@main.command("validate")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--min-region-area", default=16, show_default=True, type=click.IntRange(1), help="Smaller defect regions are reported.")
@click.option("--audit/--no-audit", default=True, show_default=True,
              help="Run the shortcut audit on a built dataset (a failed audit is an error).")
def validate_command(folder, as_json, min_region_area, audit):
    """Validate a built dataset or a source folder; exit code 0 only when nothing is an error."""
    from .validate import validate

    report = validate(folder, min_region_area, _progress, audit=audit)
    click.echo(report.to_json() if as_json else report.text(f"validated {folder}"))
    sys.exit(0 if report.ok else 1)


@main.command("synth")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--train-good", default=60, show_default=True, type=click.IntRange(0))
@click.option("--test-good", default=20, show_default=True, type=click.IntRange(0))
@click.option("--test-defect", default=20, show_default=True, type=click.IntRange(0))
@click.option("--size", default=256, show_default=True, type=click.IntRange(32))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
def synth_command(out, train_good, test_good, test_defect, size, seed, overwrite):
    """Write synthetic impellers with exact defect masks, in the benchmark's layout."""
    from .synth import write_synthetic

    manifest = write_synthetic(out, train_good, test_good, test_defect, size, seed, overwrite, _progress)
    click.echo(f"wrote {out}: {train_good} train good, {test_good} test good, {test_defect} test defect "
               f"(synthetic, size {size}, seed {seed}, {len(manifest['entries'])} images)")


_anomaly_map_option = click.option(
    "--anomaly-map", type=click.Choice(["combined", "local"]),
    help="ours/efficientad's anomaly map: combined (published, every profile's default: the student-teacher and "
         "autoencoder maps averaged) or local (the student-teacher map alone: an ablation).")

_scoring_precision_option = click.option(
    "--scoring-precision", type=click.Choice(["float32", "bfloat16"]),
    help="ours/efficientad's scoring arithmetic: float32 (the default: scores that do not depend on the CPU) or "
         "bfloat16 (the networks under bfloat16 autocast: for a line whose CPU has bfloat16 units; about half the "
         "latency on a 2-core AMD EPYC with avx512_bf16).")

_TRAINING_OPTIONS = (
    click.option("--profile", default="quick", show_default=True, type=click.Choice(["quick", "paper"]),
                 help="quick: the CPU default; paper: the published recipe (70,000 steps, batch 1, 256x256), for GPUs."),
    click.option("--steps", type=click.IntRange(1), help="Training steps (overrides the profile)."),
    click.option("--seed", default=0, show_default=True, type=int),
    _device_option,
    click.option("--teacher", help="ours/efficientad's teacher: a backbone whose frozen ImageNet features teach "
                                   "(efficientnet_lite2, the default; efficientnet_lite0, mobilenet_v2 ...), a "
                                   "pretrained PDN teacher file (a published EfficientAD teacher: the paper's "
                                   "setting; or distill-teacher's output), 'distilled' or 'distilled:BACKBONE' (a "
                                   "PDN distilled on free images, made once per machine and cached), or 'random' (an "
                                   "untrained teacher, for ablations)."),
    click.option("--precision", type=click.Choice(["float32", "bfloat16", "auto"]),
                 help="ours/efficientad's training arithmetic (quick profile: auto, whichever measures faster here)."),
    click.option("--map-padding", type=click.Choice(["minimum", "zero"]),
                 help="ours/efficientad's 4-cell map frame, for ablations: minimum (ranks as normal) or zero "
                      "(published). Implies no border cover (the quick profile's maps cover the border: no frame)."),
    _anomaly_map_option,
    _scoring_precision_option,
    click.option("--decoder", type=click.Choice(["bilinear", "transposed"]),
                 help="Autoencoder decoder, for ablations (default: the method's own)."),
    click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), help="Decoder dropout, for ablations."),
    click.option("--backbone", help="Pretrained backbone of the feature methods: efficientnet_lite0 (the default "
                                    "of patchcore, padim and spade), efficientnet_lite2 (ast's default), "
                                    "mobilenet_v2, resnet18, wide_resnet50_2, wide_resnet101_2."),
    click.option("--backbone-weights", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                 help="The backbone's checkpoint file (default: its known file, checksummed)."),
    click.option("--layers", help="Comma-separated feature maps of the backbone (default: the method's own choice)."),
)

_RATE = click.FloatRange(0, 1, max_open=True)
_CALIBRATION_OPTIONS = (
    click.option("--false-alarm-rate", default=0.01, show_default=True, type=_RATE,
                 help="Share of normal parts the image threshold may flag, calibrated on held-out normal images."),
    click.option("--pixel-false-alarm-rate", default=0.001, show_default=True, type=_RATE,
                 help="Share of normal pixels the defect-mask threshold may flag."),
)


def _with(options):
    """A decorator applying a tuple of click options in their order."""
    def apply(function):
        for option in reversed(options):
            function = option(function)
        return function
    return apply


def _detector_options(teacher, precision, map_padding, anomaly_map, scoring_precision, decoder, dropout, backbone,
                      backbone_weights, layers) -> dict:
    """The training options given on the command line, as detector configuration overrides."""
    options = {"teacher": teacher, "precision": precision, "map_padding": map_padding, "anomaly_map": anomaly_map,
               "scoring_precision": scoring_precision, "decoder": decoder,
               "cover_border": False if map_padding else None, "dropout": dropout,
               "backbone": backbone, "backbone_weights": str(backbone_weights) if backbone_weights else None,
               "layers": [name.strip() for name in layers.split(",")] if layers else None}
    return {k: v for k, v in options.items() if v is not None}


@main.command("run", cls=_MethodsCommand)
@click.argument("method")
@click.option("--dataset", "dataset_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Dataset folder (default: the built-in synthetic impellers).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Predictions folder (default predictions/METHOD).")
@_with(_TRAINING_OPTIONS)
@click.option("--model", type=click.Path(dir_okay=False, path_type=Path),
              help="Also keep the trained detector as a model file with calibrated thresholds (see 'train').")
@_with(_CALIBRATION_OPTIONS)
@click.option("--overwrite", is_flag=True, help="Replace an existing predictions folder (and model file).")
def run_command(method, dataset_dir, out, profile, steps, seed, device, model, false_alarm_rate,
                pixel_false_alarm_rate, overwrite, **training):
    """Train METHOD on train/good, score the test set, write predictions and print the evaluation."""
    from .evaluate import format_table
    from .progress import format_seconds
    from .runner import run_method

    started = time.monotonic()
    result = run_method(method, dataset_dir, out, profile, steps, seed, device, overwrite, _progress,
                        say=lambda text: click.echo(text, err=True), model=model, false_alarm_rate=false_alarm_rate,
                        pixel_false_alarm_rate=pixel_false_alarm_rate, **_detector_options(**training))
    click.echo(format_table(result))
    if model is not None:
        click.echo(model_summary(result["model"]))
    click.echo(f"wrote {result['predictions']} in {format_seconds(time.monotonic() - started)} (training "
               f"{format_seconds(result['fit_seconds'])}, {format_seconds(result['score_seconds_per_image'])} "
               "per test image)")


@main.command("train", cls=_MethodsCommand)
@click.argument("method")
@click.option("--dataset", "dataset_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Dataset folder: trained on train/good; a labelled test set, if any, is judged with the thresholds.")
@click.option("--model", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Model file to write.")
@_with(_TRAINING_OPTIONS)
@_with(_CALIBRATION_OPTIONS)
@click.option("--overwrite", is_flag=True, help="Replace an existing model file.")
def train_command(method, dataset_dir, model, profile, steps, seed, device, false_alarm_rate, pixel_false_alarm_rate,
                  overwrite, **training):
    """Train METHOD once and write a model file with calibrated thresholds, for 'predict' and 'export'.

    The image threshold is calibrated on normal images held out of the fit
    for --false-alarm-rate; the pixel threshold (defect masks) likewise."""
    from .progress import format_seconds
    from .runner import train_model

    started = time.monotonic()
    report = train_model(method, dataset_dir, model, profile, steps, seed, device, false_alarm_rate,
                         pixel_false_alarm_rate, overwrite, _progress, **_detector_options(**training))
    click.echo(model_summary(report))
    click.echo(f"wrote {model} in {format_seconds(time.monotonic() - started)} (training "
               f"{format_seconds(report['fit_seconds'])})")


def model_summary(report: dict) -> str:
    """The calibration, and what it gives on the labelled test set when there was one, in a few lines."""
    c = report["calibration"]
    lines = [f"model {report['model']}: image threshold {c['image_threshold']:.6g} (false-alarm rate "
             f"{c['false_alarm_rate']:.2%}), pixel threshold {c['pixel_threshold']:.6g} (pixel rate "
             f"{c['pixel_false_alarm_rate']:.2%}); calibrated on {c['source']}"]
    test = report.get("test_report")
    if test:
        at, best = test["calibrated"], test.get("f1_max")
        lines.append(f"on the test set ({test['test_good']} good, {test['test_defect']} defect): calibrated "
                     f"threshold: false alarms {_percent(at['false_alarm_rate'])}, recall {_percent(at['recall'])}, "
                     f"precision {_percent(at['precision'])}; "
                     + (f"F1-max threshold {best['threshold']:.6g}: precision {_percent(best['precision'])}, "
                        f"recall {_percent(best['recall'])}" if best else "F1-max: not defined (no good test images)"))
        if "pixel_calibrated" in test:
            pixel = test["pixel_calibrated"]
            lines.append(f"pixels above the pixel threshold: {_percent(pixel['false_alarm_rate'])} of normal pixels, "
                         f"{_percent(pixel['recall'])} of defect pixels")
    return "\n".join(lines)


def _percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


@main.command("predict")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder to write.")
@click.option("--image-threshold", type=float, help="Override the model's calibrated image threshold.")
@click.option("--pixel-threshold", type=float, help="Override the model's calibrated pixel threshold.")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1), help="Images in memory at a time.")
@_device_option
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
def predict_command(model, inputs, out, image_threshold, pixel_threshold, batch_size, device, overwrite):
    """Judge images (files, or folders walked recursively) with a MODEL file from 'train'.

    Writes OUT/results.csv (path, score, decision, defect area, time), the
    maps (.npy), heat-map overlays and defect masks (PNG). Unreadable files
    are skipped and listed in OUT/skipped.csv. Exit code 0 when every file was
    judged, 1 when some were skipped, 2 when nothing was written (bad input,
    or not one file readable)."""
    from .inspection import load_model, predict_files

    summary = predict_files(load_model(model, device), inputs, out, image_threshold, pixel_threshold, batch_size,
                            overwrite, _progress)
    click.echo(f"judged {summary['images']} image(s): {summary['defects']} defect, "
               f"{summary['images'] - summary['defects']} ok, in {summary['seconds']} s "
               f"({summary['images_per_second']} images/s); wrote {out}")
    for skipped in summary["skipped_files"]:
        click.echo(f"skipped {skipped['path']}: {skipped['problem']}", err=True)
    if summary["skipped"]:
        click.echo(f"{summary['skipped']} file(s) could not be read: listed in {out / 'skipped.csv'}", err=True)
        sys.exit(1)


@main.command("latency", cls=_MethodsCommand)
@click.argument("methods", nargs=-1, required=True)
@_device_option
@click.option("--runs", default=50, show_default=True, type=click.IntRange(1))
@click.option("--warmup", default=5, show_default=True, type=click.IntRange(0))
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the figures here.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), help="Write a bar plot (PNG) here.")
@click.option("--profile", type=click.Choice(["quick", "paper"]),
              help="Time the model that run's PROFILE trains, at its own input size (the image stays 256x256; "
                   "default: each method's configuration at 256x256).")
@click.option("--onnx", is_flag=True, help="Also time the same path exported to ONNX, under ONNX Runtime on the CPU "
                                          "(ours, efficientad, padim, patchcore).")
@_anomaly_map_option
@_scoring_precision_option
@click.option("--teacher", help="ours/efficientad's teacher ('random': the published PDN-S architecture, untrained, "
                                "which times the same as trained; default: the configuration's feature teacher).")
def latency_command(methods, device, runs, warmup, json_path, plot_path, profile, onnx, anomaly_map,
                    scoring_precision, teacher):
    """Latency per image at batch 1, 256x256, host to device and back (median and 90th percentile); several
    methods are timed interleaved, one call of each in turn."""
    from .detectors import option_names
    from .imageio import atomic_write_bytes
    from .latency import latency_plot, measure_latencies

    options = {k: v for k, v in (("anomaly_map", anomaly_map), ("scoring_precision", scoring_precision),
                                 ("teacher", teacher)) if v}
    for name in options:
        without = [m for m in methods if name not in option_names(m)]
        if without:
            raise ImpellerBenchError(f"--{name.replace('_', '-')} applies to ours and efficientad, not "
                                     f"{', '.join(without)}")
    results = measure_latencies(methods, device, runs, warmup, profile=profile,
                                runtimes=(False, True) if onnx else (False,), options=options or None)
    text = json.dumps(results, indent=1)
    click.echo(text)
    if json_path:
        atomic_write_bytes(json_path, (text + "\n").encode())
    if plot_path:
        latency_plot(results, plot_path)


@main.command("export")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--format", "export_format", default="onnx", show_default=True, type=click.Choice(["onnx"]))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="File to write (.onnx).")
@click.option("--check-images", type=click.Path(exists=True, path_type=Path),
              help="Images (a file or a folder) to compare ONNX Runtime's outputs with torch's on (default: the "
                   "held-out normal images the model file keeps).")
@click.option("--opset", default=17, show_default=True, type=click.IntRange(16))
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
def export_command(model, export_format, out, check_images, opset, overwrite):
    """Export a MODEL file from 'train' as an ONNX graph: image in (float32 N x 3 x S x S, RGB in [0, 1], at the
    model's input size S), score and map (S x S) out, the thresholds in its metadata; then check that ONNX
    Runtime gives torch's outputs (to 1e-4, absolute or relative)."""
    import os

    import numpy as np

    from .export import check_export, export_onnx, graph_thresholds
    from .imageio import read_image
    from .inspection import input_files, load_model

    if out.exists() and not overwrite:
        raise ImpellerBenchError("output file exists (use --overwrite to replace it)", out)
    loaded = load_model(model, "cpu")
    if check_images is not None:
        images = []
        for path, _ in input_files([check_images]):
            try:
                images.append(read_image(path))
            except ImpellerBenchError as exc:
                click.echo(f"skipped {exc}", err=True)
            if len(images) == 16:
                break
        if not images:
            raise ImpellerBenchError("no readable image to check the export on", check_images)
    elif loaded.check_images:  # held-out normal images the model file keeps
        images = loaded.check_images
    else:
        size = loaded.detector.model_input_size
        click.echo("the model file keeps no calibration images: checked on 4 seeded noise images", err=True)
        images = list(np.random.default_rng(0).integers(0, 256, (4, size, size), dtype=np.uint8))
    metadata = graph_thresholds(loaded.calibration) | {"model_file": model.name}
    # Checked before it takes the name: a graph that fails the check never replaces anything.
    checking = out.with_name(f".{out.name}.checking")
    try:
        written = export_onnx(loaded.detector, checking, opset, metadata)
        worst = check_export(loaded.detector, checking, images)
        os.replace(checking, out)
    finally:
        checking.unlink(missing_ok=True)
    click.echo(f"wrote {out} ({written['bytes'] / 2**20:.1f} MiB, {loaded.method}, input {written['model_input_size']} px,"
               f" opset {opset}); ONNX Runtime matches torch on {len(images)} image(s): largest difference {worst:.2g}")


@main.command("distill-teacher")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Teacher file to write (.pt).")
@click.option("--images", "image_dirs", multiple=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder(s) of images to distil on, repeatable. They must be free to use: a teacher distilled on "
                   "images is a derivative of them (so not the CC BY-NC-ND casting photos). Default: scikit-image's "
                   "public-domain and CC0 sample photos plus synthetic impellers.")
@click.option("--backbone", default="efficientnet_lite0", show_default=True,
              help="The ImageNet backbone whose features the PDN learns (efficientnet_lite0, efficientnet_lite2, "
                   "mobilenet_v2, resnet18, wide_resnet50_2, wide_resnet101_2).")
@click.option("--pdn", type=click.Choice(["small", "medium"]), help="PDN size (default: the CPU recipe's, small).")
@click.option("--image-size", type=click.IntRange(64), help="Images are resized to this (default: the CPU recipe's).")
@click.option("--crop", type=click.IntRange(36), help="Side of the random crops trained on (default: the CPU recipe's; "
                                                      "the image size: whole images, as published).")
@click.option("--steps", type=click.IntRange(1), help="Training steps (default: the CPU recipe's).")
@click.option("--batch-size", type=click.IntRange(1), help="Crops per step (default: the CPU recipe's).")
@click.option("--lr", type=click.FloatRange(0, min_open=True),
              help="Adam learning rate (default: the CPU recipe's; 1e-4 published, for 60,000 steps).")
@click.option("--seed", default=0, show_default=True, type=int)
@_device_option
@click.option("--backbone-weights", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The backbone's checkpoint (default: its known file, checksummed).")
def distill_teacher_command(out, image_dirs, backbone, pdn, image_size, crop, steps, batch_size, lr, seed, device,
                            backbone_weights):
    """Pretrain an EfficientAD teacher by distilling a backbone's ImageNet features (offline; the CPU recipe
    impeller_bench.distill.DISTILL_RECIPE, which `--teacher distilled` caches once per machine)."""
    from .distill import FREE_IMAGES_LICENCE, USER_IMAGES_LICENCE, distill_teacher, free_images, images_from_folders

    if image_dirs:
        images, sources = images_from_folders(image_dirs), ", ".join(map(str, image_dirs))
        licence = USER_IMAGES_LICENCE
    else:
        (images, sources), licence = free_images(seed), FREE_IMAGES_LICENCE
    settings = {k: v for k, v in (("pdn", pdn), ("image_size", image_size), ("crop", crop), ("steps", steps),
                                  ("batch_size", batch_size), ("lr", lr)) if v is not None}
    meta = distill_teacher(images, out, backbone=backbone, seed=seed, device=device, backbone_weights=backbone_weights,
                           progress=_progress, sources=sources, licence=licence, **settings)
    click.echo(f"wrote {out} (+ .json): {meta['images']} images, {meta['steps']} steps, "
               f"final loss {meta['final_loss']:.4f}")


def _dataset_for(predictions, dataset_dir):
    from .data import load_dataset

    if dataset_dir is None:
        recorded = predictions.meta.get("dataset")
        if not recorded:
            raise ImpellerBenchError("no --dataset given and meta.json names no dataset", predictions.root)
        dataset_dir = Path(recorded)
    return load_dataset(dataset_dir)


@main.command("evaluate")
@click.argument("pred_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--dataset", "dataset_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Dataset folder (default: the one meta.json names).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the metrics (default PRED_DIR/metrics.json).")
@click.option("--bootstrap", "bootstrap_samples", default=0, show_default=True, type=click.IntRange(0),
              help="Bootstrap resamples for 95% intervals (1000 is usual): of the test images, or of whole photo "
                   "groups where the dataset's manifest says so (the v2 splits).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the bootstrap.")
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False, path_type=Path), help="Write ROC, PR and PRO curves here.")
def evaluate_command(pred_dir, dataset_dir, json_path, bootstrap_samples, seed, plots_dir):
    """Score a predictions folder with the reference evaluator; prints a table and writes metrics.json."""
    from .evaluate import evaluate, format_table
    from .imageio import atomic_write_bytes
    from .predictions import load_predictions

    predictions = load_predictions(pred_dir)
    dataset = _dataset_for(predictions, dataset_dir)
    result = evaluate(dataset, predictions, bootstrap_samples, seed, _progress, plots_dir)
    target = json_path or pred_dir / "metrics.json"
    atomic_write_bytes(target, (json.dumps(result, indent=1) + "\n").encode())
    click.echo(format_table(result))
    click.echo(f"wrote {target}")


@main.command("compare")
@click.argument("pred_a", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("pred_b", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--dataset", "dataset_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Dataset folder (default: the one PRED_A's meta.json names).")
@click.option("--bootstrap", "bootstrap_samples", default=1000, show_default=True, type=click.IntRange(1),
              help="Paired bootstrap resamples for the 95% intervals: of the test images, or of whole photo groups "
                   "where the dataset's manifest says so (the v2 splits).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the bootstrap.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Also write the comparison here.")
def compare_command(pred_a, pred_b, dataset_dir, bootstrap_samples, seed, json_path):
    """Paired bootstrap comparison: B minus A per metric, with its 95% interval."""
    from .evaluate import compare
    from .imageio import atomic_write_bytes
    from .predictions import load_predictions

    a, b = load_predictions(pred_a), load_predictions(pred_b)
    dataset = _dataset_for(a, dataset_dir)
    result = compare(dataset, a, b, bootstrap_samples, seed, _progress)
    click.echo(f"B minus A: B = {result['b']} ({pred_b}), A = {result['a']} ({pred_a}); paired bootstrap over "
               f"{result['bootstrap']['unit']}s, {bootstrap_samples} resamples, seed {seed}:")
    click.echo(f"  {'metric':<16} {'B - A':>7}  {'95% interval':^18}  {'verdict':<19}  detectable (80% power)")
    for name, diff in result["difference"].items():
        lo, hi = result["ci95"][name]
        click.echo(f"  {name:<16} {100 * diff:+7.2f}  [{100 * lo:+7.2f}, {100 * hi:+7.2f}]  {result['verdict'][name]:<19}  "
                   f"{100 * result['detectable_difference'][name]:.2f}")
    if not result["image_level"]:
        from .evaluate import IMAGE_METRICS_UNDEFINED

        click.echo(f"  {IMAGE_METRICS_UNDEFINED}")
    if json_path:
        atomic_write_bytes(json_path, (json.dumps(result, indent=1) + "\n").encode())


@main.command("download")
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
    from .download import download_source
    from .sources.references import KNOWN_SOURCES

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
        receipt = download_source(name, to, annotations, given.get(name), not no_kaggle, overwrite, _progress,
                                  say=lambda text: click.echo(text, err=True))
        click.echo(f"{name}: {receipt['files']} files verified and unpacked into {receipt['folder']} (from {receipt['origin']})")
    click.echo(f"next: impeller-bench build-split --supervisely {to}/casting-supervisely "
               f"--split annotations/impeller-v2-native.json --out data/impeller-v2-native")


@main.group("leaderboard")
def leaderboard_group():
    """Validate submissions, package a run as one, and build the leaderboard's tables and plots."""


_board_option = click.option("--board", default="leaderboard", show_default=True, type=click.Path(file_okay=False, path_type=Path),
                             help="The leaderboard folder (holds submissions/).")
_annotations_option = click.option("--annotations", default="annotations", show_default=True,
                                   type=click.Path(exists=True, file_okay=False, path_type=Path),
                                   help="Folder of the published split files.")
_data_option = click.option("--data", "data_root", default="data", show_default=True, type=click.Path(file_okay=False, path_type=Path),
                            help="Folder holding the built splits, one subfolder per split (data/impeller-v2-native).")


@leaderboard_group.command("validate")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@_board_option
@_annotations_option
@_data_option
def leaderboard_validate_command(paths, board, annotations, data_root):
    """Check submissions (default: all of the board): files, schema, split, provenance, every number
    recomputed, and against the board's other entries (names alike, identical maps).

    Every folder is visited, hidden ones too, each with its own verdict. Exit code 0 only when every
    submission holds."""
    from .submission import submission_folders

    sys.exit(_validate_entries(submission_folders(paths, board), board, data_root, annotations))


def _validate_entries(folders, board, data_root, annotations) -> int:
    """Each folder's verdict printed as it comes, the board's other entries as the cross-entry checks' others;
    the exit code (0: every folder holds)."""
    from .review import cross_entry_problems
    from .submission import validate_submission

    entries = board / "submissions"
    others = sorted(entries.iterdir()) if entries.is_dir() else []
    across = cross_entry_problems(folders, others)
    checks = []
    for folder in folders:
        checks.append(validate_submission(folder, data_root, annotations))
        checks[-1].problems += across[folder]
        click.echo(checks[-1].text())
    failed = sum(not c.ok for c in checks)
    click.echo(f"{len(checks) - failed} of {len(checks)} submission(s) hold")
    return 1 if failed else 0


@leaderboard_group.command("check-pr")
@click.option("--changes", required=True, type=click.File("r"),
              help="The pull request's changed files, as `git diff --name-status -z BASE...HEAD` prints them.")
@click.option("--pr", "pr_root", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The pull request's checkout (read as data, never run).")
@click.option("--kind", "kind_only", is_flag=True,
              help="Only print the request's kind, 'submission' or 'maintenance', and exit 0.")
@_board_option
@_annotations_option
@_data_option
def leaderboard_check_pr_command(changes, pr_root, board, annotations, data_root, kind_only):
    """Judge a pull request with this (the base branch's) code. A submission (it changes something under
    leaderboard/submissions/): its scope (one new entry, nothing else), then that entry, in full, against
    the base board's entries, with the base annotations. Maintenance (no submission changed): the request's
    whole board, with its own annotations, every entry in full, and its generated files current.

    Run it from the base branch's checkout, with its --board and --annotations; --data holds the splits built
    from the annotations that apply (the base's for a submission, the request's for maintenance)."""
    from .leaderboard import outdated
    from .review import parse_name_status, pull_request_scope

    existing = sorted(p.name for p in (board / "submissions").iterdir()) if (board / "submissions").is_dir() else []
    name, problems = pull_request_scope(parse_name_status(changes.read()), existing)
    if kind_only:
        click.echo("maintenance" if name is None and not problems else "submission")
        sys.exit(0)
    if name is None:
        pr_board, pr_annotations = pr_root / "leaderboard", pr_root / "annotations"
        click.echo("maintenance: no submission changed; the request's board is judged whole")
        code = _validate_entries(sorted((pr_board / "submissions").iterdir()), pr_board, data_root, pr_annotations)
        stale = outdated(pr_board, pr_annotations)
        for stale_name in stale:
            click.echo(f"FAIL  out of date: {pr_board / stale_name}")
        sys.exit(1 if code or stale else 0)
    for problem in problems:
        click.echo(f"FAIL  scope: {problem}")
    if problems:
        sys.exit(1)
    sys.exit(_validate_entries([pr_root / "leaderboard" / "submissions" / name], board, data_root, annotations))


@leaderboard_group.command("build")
@_board_option
@_annotations_option
@_data_option
@click.option("--check", is_flag=True, help="Write nothing; exit 1 when a committed file is missing or out of date.")
def leaderboard_build_command(board, annotations, data_root, check):
    """Regenerate README.md, results.csv and the plots of the board from its submissions.

    overlays.png (maps over test images) needs the built split and is not committed."""
    from .leaderboard import build_board, outdated

    if check:
        stale = outdated(board, annotations)
        for name in stale:
            click.echo(f"out of date: {board / name}")
        click.echo("run: impeller-bench leaderboard build" if stale else f"{board}: up to date")
        sys.exit(1 if stale else 0)
    for path in build_board(board, annotations, data_root):
        click.echo(f"wrote {path}")


@leaderboard_group.command("submit")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--name", required=True, help="The entry's name (its folder under submissions/).")
@click.option("--command", "run_command_text", required=True, help="The command that made RUN_DIR, for the record.")
@click.option("--author", "authors", multiple=True, required=True, help="Repeatable.")
@click.option("--code", required=True, help="Link to the code that made the predictions.")
@click.option("--hardware", required=True, help="Where it ran, e.g. '2-core x86-64 CPU, no GPU'.")
@click.option("--latency", "latency_json", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Figures written by 'impeller-bench latency --json' (the entry's method is taken from it).")
@click.option("--map-size", default=64, show_default=True, type=click.IntRange(8, 128), help="Maps are area-averaged down to this side.")
@click.option("--bootstrap", "bootstrap_samples", default=1000, show_default=True, type=click.IntRange(1))
@click.option("--notes", help="Free text shown with the entry.")
@click.option("--dataset", "dataset_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The published split the run was made on (default: the one its meta.json names).")
@_board_option
@click.option("--overwrite", is_flag=True, help="Replace an entry of the same name.")
def leaderboard_submit_command(run_dir, name, run_command_text, authors, code, hardware, latency_json, map_size,
                               bootstrap_samples, notes, dataset_dir, board, overwrite):
    """Package a run's predictions as a submission: compact maps, recomputed claims, submission.json."""
    from .predictions import load_predictions
    from .submission import latency_entry, package_submission

    run = load_predictions(run_dir)
    dataset = _dataset_for(run, dataset_dir)
    latency = None
    if latency_json:
        latency = latency_entry(json.loads(latency_json.read_text()), run.meta.get("method"), hardware)
    submission = package_submission(run, board / "submissions" / name, dataset, authors=list(authors), code=code,
                                    version=f"impeller-bench {__version__}", hardware=hardware, command=run_command_text,
                                    latency=latency, map_size=map_size, bootstrap_samples=bootstrap_samples, notes=notes,
                                    overwrite=overwrite, progress=_progress)
    from .evaluate import IMAGE_METRICS_UNDEFINED

    image_auroc = submission["metrics"]["image_auroc"]
    click.echo(f"wrote {board / 'submissions' / name}: "
               f"{IMAGE_METRICS_UNDEFINED if image_auroc is None else f'image AUROC {100 * image_auroc:.2f}'}, "
               f"pixel PRO@30% {100 * submission['metrics']['pixel_pro_30']:.2f}")
    ctx = click.get_current_context()
    where = f" --board {board}" if ctx.get_parameter_source("board") == click.core.ParameterSource.COMMANDLINE else ""
    click.echo(f"then: impeller-bench leaderboard validate{where} && impeller-bench leaderboard build{where} "
               "(both take --annotations and --data too, where the splits are not the defaults)")


if __name__ == "__main__":  # pragma: no cover
    main()
