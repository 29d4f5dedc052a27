"""Commands that fit and use detectors: run, train, predict, latency, export, distill-teacher."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from ..common.errors import ImpellerBenchError
from .options import (
    CALIBRATION_OPTIONS,
    TRAINING_OPTIONS,
    MethodsCommand,
    anomaly_map_option,
    detector_options,
    device_option,
    percent,
    progress_bar,
    scoring_precision_option,
    with_options,
)


@click.command("run", cls=MethodsCommand)
@click.argument("method")
@click.option("--dataset", "dataset_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Dataset folder (default: the built-in synthetic impellers).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Predictions folder (default predictions/METHOD).")
@with_options(TRAINING_OPTIONS)
@click.option("--model", type=click.Path(dir_okay=False, path_type=Path),
              help="Also keep the trained detector as a model file with calibrated thresholds (see 'train').")
@with_options(CALIBRATION_OPTIONS)
@click.option("--overwrite", is_flag=True, help="Replace an existing predictions folder (and model file).")
def run_command(method, dataset_dir, out, profile, steps, seed, device, model, false_alarm_rate,
                pixel_false_alarm_rate, overwrite, **training):
    """Train METHOD on train/good, score the test set, write predictions and print the evaluation."""
    from ..common.progress import format_seconds
    from ..evaluation.evaluate import format_table
    from ..inspection.runner import run_method

    started = time.monotonic()
    result = run_method(method, dataset_dir, out, profile, steps, seed, device, overwrite, progress_bar,
                        say=lambda text: click.echo(text, err=True), model=model, false_alarm_rate=false_alarm_rate,
                        pixel_false_alarm_rate=pixel_false_alarm_rate, **detector_options(**training))
    click.echo(format_table(result))
    if model is not None:
        click.echo(model_summary(result["model"]))
    click.echo(f"wrote {result['predictions']} in {format_seconds(time.monotonic() - started)} (training "
               f"{format_seconds(result['fit_seconds'])}, {format_seconds(result['score_seconds_per_image'])} "
               "per test image)")


@click.command("train", cls=MethodsCommand)
@click.argument("method")
@click.option("--dataset", "dataset_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Dataset folder: trained on train/good; a labelled test set, if any, is judged with the thresholds.")
@click.option("--model", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Model file to write.")
@with_options(TRAINING_OPTIONS)
@with_options(CALIBRATION_OPTIONS)
@click.option("--overwrite", is_flag=True, help="Replace an existing model file.")
def train_command(method, dataset_dir, model, profile, steps, seed, device, false_alarm_rate, pixel_false_alarm_rate,
                  overwrite, **training):
    """Train METHOD once and write a model file with calibrated thresholds, for 'predict' and 'export'.

    The image threshold is calibrated on normal images held out of the fit
    for --false-alarm-rate; the pixel threshold (defect masks) likewise."""
    from ..common.progress import format_seconds
    from ..inspection.runner import train_model

    started = time.monotonic()
    report = train_model(method, dataset_dir, model, profile, steps, seed, device, false_alarm_rate,
                         pixel_false_alarm_rate, overwrite, progress_bar, **detector_options(**training))
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
                     f"threshold: false alarms {percent(at['false_alarm_rate'])}, recall {percent(at['recall'])}, "
                     f"precision {percent(at['precision'])}; "
                     + (f"F1-max threshold {best['threshold']:.6g}: precision {percent(best['precision'])}, "
                        f"recall {percent(best['recall'])}" if best else "F1-max: not defined (no good test images)"))
        if "pixel_calibrated" in test:
            pixel = test["pixel_calibrated"]
            lines.append(f"pixels above the pixel threshold: {percent(pixel['false_alarm_rate'])} of normal pixels, "
                         f"{percent(pixel['recall'])} of defect pixels")
    return "\n".join(lines)


@click.command("predict")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder to write.")
@click.option("--image-threshold", type=float, help="Override the model's calibrated image threshold.")
@click.option("--pixel-threshold", type=float, help="Override the model's calibrated pixel threshold.")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1), help="Images in memory at a time.")
@device_option
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
def predict_command(model, inputs, out, image_threshold, pixel_threshold, batch_size, device, overwrite):
    """Judge images (files, or folders walked recursively) with a MODEL file from 'train'.

    Writes OUT/results.csv (path, score, decision, defect area, time), the
    maps (.npy), heat-map overlays and defect masks (PNG). Unreadable files
    are skipped and listed in OUT/skipped.csv. Exit code 0 when every file was
    judged, 1 when some were skipped, 2 when nothing was written (bad input,
    or not one file readable)."""
    from ..inspection.model import load_model
    from ..inspection.predict import predict_files

    summary = predict_files(load_model(model, device), inputs, out, image_threshold, pixel_threshold, batch_size,
                            overwrite, progress_bar)
    click.echo(f"judged {summary['images']} image(s): {summary['defects']} defect, "
               f"{summary['images'] - summary['defects']} ok, in {summary['seconds']} s "
               f"({summary['images_per_second']} images/s); wrote {out}")
    for skipped in summary["skipped_files"]:
        click.echo(f"skipped {skipped['path']}: {skipped['problem']}", err=True)
    if summary["skipped"]:
        click.echo(f"{summary['skipped']} file(s) could not be read: listed in {out / 'skipped.csv'}", err=True)
        sys.exit(1)


@click.command("latency", cls=MethodsCommand)
@click.argument("methods", nargs=-1, required=True)
@device_option
@click.option("--runs", default=50, show_default=True, type=click.IntRange(1))
@click.option("--warmup", default=5, show_default=True, type=click.IntRange(0))
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the figures here.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), help="Write a bar plot (PNG) here.")
@click.option("--profile", type=click.Choice(["quick", "paper"]),
              help="Time the model that run's PROFILE trains, at its own input size (the image stays 256x256; "
                   "default: each method's configuration at 256x256).")
@click.option("--onnx", is_flag=True, help="Also time the same path exported to ONNX, under ONNX Runtime on the CPU "
                                          "(ours, efficientad, padim, patchcore).")
@anomaly_map_option
@scoring_precision_option
@click.option("--teacher", help="ours/efficientad's teacher ('random': the published PDN-S architecture, untrained, "
                                "which times the same as trained; default: the configuration's feature teacher).")
def latency_command(methods, device, runs, warmup, json_path, plot_path, profile, onnx, anomaly_map,
                    scoring_precision, teacher):
    """Latency per image at batch 1, 256x256, host to device and back (median and 90th percentile); several
    methods are timed interleaved, one call of each in turn."""
    from ..common.files import atomic_write_bytes
    from ..detectors import option_names
    from ..inspection.latency import latency_plot, measure_latencies

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


@click.command("export")
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

    from ..common.imageio import read_image
    from ..inspection.export import check_export, export_onnx, graph_thresholds
    from ..inspection.model import load_model
    from ..inspection.predict import input_files

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


@click.command("distill-teacher")
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
@device_option
@click.option("--backbone-weights", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The backbone's checkpoint (default: its known file, checksummed).")
def distill_teacher_command(out, image_dirs, backbone, pdn, image_size, crop, steps, batch_size, lr, seed, device,
                            backbone_weights):
    """Pretrain an EfficientAD teacher by distilling a backbone's ImageNet features (offline; the CPU recipe
    impeller_bench.detectors.efficientad.distill.DISTILL_RECIPE, which `--teacher distilled` caches once per machine)."""
    from ..detectors.efficientad.distill import (
        FREE_IMAGES_LICENCE,
        USER_IMAGES_LICENCE,
        distill_teacher,
        free_images,
        images_from_folders,
    )

    if image_dirs:
        images, sources = images_from_folders(image_dirs), ", ".join(map(str, image_dirs))
        licence = USER_IMAGES_LICENCE
    else:
        (images, sources), licence = free_images(seed), FREE_IMAGES_LICENCE
    settings = {k: v for k, v in (("pdn", pdn), ("image_size", image_size), ("crop", crop), ("steps", steps),
                                  ("batch_size", batch_size), ("lr", lr)) if v is not None}
    meta = distill_teacher(images, out, backbone=backbone, seed=seed, device=device, backbone_weights=backbone_weights,
                           progress=progress_bar, sources=sources, licence=licence, **settings)
    click.echo(f"wrote {out} (+ .json): {meta['images']} images, {meta['steps']} steps, "
               f"final loss {meta['final_loss']:.4f}")
