"""What the commands share: progress on stderr, option types and callbacks, the training and calibration options."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from ..common.errors import ImpellerBenchError


def progress_bar(items, label, status=None):
    """Progress of long loops on stderr: a bar on a terminal; elsewhere (a log, CI, nohup), where click's bar
    would print only its label, a line now and then and one at the end."""
    items = list(items)
    if not sys.stderr.isatty():
        from ..common.progress import report_lines

        yield from report_lines(items, label, status, write=lambda text: click.echo(text, err=True))
        return
    show = (lambda _item: status()) if status else None
    with click.progressbar(items, label=label.ljust(26), file=sys.stderr, show_pos=True, item_show_func=show) as bar:
        yield from bar


def number_or(word: str, unit: str, minimum: int, keyword_value):
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


size_value = number_or("native", "pixels", 32, "native")


count_value = number_or("all", "images", 0, None)


def device_value(ctx, param, value):
    """A click callback: --device checked against this machine's devices at parsing, before any work."""
    if value is None:
        return None
    from ..detectors.base import parse_device

    return str(parse_device(value, "--device"))


device_option = click.option("--device", callback=device_value, help="cpu, cuda, cuda:1 ... (default: CUDA when present).")


class MethodsCommand(click.Command):
    """A command whose help ends with the registered detectors (the registry, imported only for the help)."""

    def format_help_text(self, ctx, formatter):
        super().format_help_text(ctx, formatter)
        from ..detectors import available

        formatter.write_paragraph()
        with formatter.indentation():
            formatter.write_text(f"Methods: {', '.join(available())}.")


anomaly_map_option = click.option(
    "--anomaly-map", type=click.Choice(["combined", "local"]),
    help="ours/efficientad's anomaly map: combined (published, every profile's default: the student-teacher and "
         "autoencoder maps averaged) or local (the student-teacher map alone: an ablation).")


scoring_precision_option = click.option(
    "--scoring-precision", type=click.Choice(["float32", "bfloat16"]),
    help="ours/efficientad's scoring arithmetic: float32 (the default: scores that do not depend on the CPU) or "
         "bfloat16 (the networks under bfloat16 autocast: for a line whose CPU has bfloat16 units; about half the "
         "latency on a 2-core AMD EPYC with avx512_bf16).")


TRAINING_OPTIONS = (
    click.option("--profile", default="quick", show_default=True, type=click.Choice(["quick", "paper"]),
                 help="quick: the CPU default; paper: the published recipe (70,000 steps, batch 1, 256x256), for GPUs."),
    click.option("--steps", type=click.IntRange(1), help="Training steps (overrides the profile)."),
    click.option("--seed", default=0, show_default=True, type=int),
    device_option,
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
    anomaly_map_option,
    scoring_precision_option,
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


RATE = click.FloatRange(0, 1, max_open=True)


CALIBRATION_OPTIONS = (
    click.option("--false-alarm-rate", default=0.01, show_default=True, type=RATE,
                 help="Share of normal parts the image threshold may flag, calibrated on held-out normal images."),
    click.option("--pixel-false-alarm-rate", default=0.001, show_default=True, type=RATE,
                 help="Share of normal pixels the defect-mask threshold may flag."),
)


def with_options(options):
    """A decorator applying a tuple of click options in their order."""
    def apply(function):
        for option in reversed(options):
            function = option(function)
        return function
    return apply


def detector_options(teacher, precision, map_padding, anomaly_map, scoring_precision, decoder, dropout, backbone,
                      backbone_weights, layers) -> dict:
    """The training options given on the command line, as detector configuration overrides (the settings of
    :data:`~impeller_bench.inspection.runner.COMMAND_LINE_OPTIONS`)."""
    options = {"teacher": teacher, "precision": precision, "map_padding": map_padding, "anomaly_map": anomaly_map,
               "scoring_precision": scoring_precision, "decoder": decoder,
               "cover_border": False if map_padding else None, "dropout": dropout,
               "backbone": backbone, "backbone_weights": str(backbone_weights) if backbone_weights else None,
               "layers": [name.strip() for name in layers.split(",")] if layers else None}
    return {k: v for k, v in options.items() if v is not None}


def percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def dataset_for(predictions, dataset_dir):
    from ..data.dataset import load_dataset

    if dataset_dir is None:
        recorded = predictions.meta.get("dataset")
        if not recorded:
            raise ImpellerBenchError("no --dataset given and meta.json names no dataset", predictions.root)
        dataset_dir = Path(recorded)
    return load_dataset(dataset_dir)
