"""Commands of the reference evaluator: evaluate one predictions folder, compare two."""
from __future__ import annotations

import json
from pathlib import Path

import click

from .options import dataset_for, progress_bar


@click.command("evaluate")
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
    from ..common.files import atomic_write_bytes
    from ..evaluation.evaluate import evaluate, format_table
    from ..evaluation.predictions import load_predictions

    predictions = load_predictions(pred_dir)
    dataset = dataset_for(predictions, dataset_dir)
    result = evaluate(dataset, predictions, bootstrap_samples, seed, progress_bar, plots_dir)
    target = json_path or pred_dir / "metrics.json"
    atomic_write_bytes(target, (json.dumps(result, indent=1) + "\n").encode())
    click.echo(format_table(result))
    click.echo(f"wrote {target}")


@click.command("compare")
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
    from ..common.files import atomic_write_bytes
    from ..evaluation.evaluate import compare
    from ..evaluation.predictions import load_predictions

    a, b = load_predictions(pred_a), load_predictions(pred_b)
    dataset = dataset_for(a, dataset_dir)
    result = compare(dataset, a, b, bootstrap_samples, seed, progress_bar)
    click.echo(f"B minus A: B = {result['b']} ({pred_b}), A = {result['a']} ({pred_a}); paired bootstrap over "
               f"{result['bootstrap']['unit']}s, {bootstrap_samples} resamples, seed {seed}:")
    click.echo(f"  {'metric':<16} {'B - A':>7}  {'95% interval':^18}  {'verdict':<19}  detectable (80% power)")
    for name, diff in result["difference"].items():
        lo, hi = result["ci95"][name]
        click.echo(f"  {name:<16} {100 * diff:+7.2f}  [{100 * lo:+7.2f}, {100 * hi:+7.2f}]  {result['verdict'][name]:<19}  "
                   f"{100 * result['detectable_difference'][name]:.2f}")
    if not result["image_level"]:
        from ..evaluation.evaluate import IMAGE_METRICS_UNDEFINED

        click.echo(f"  {IMAGE_METRICS_UNDEFINED}")
    if json_path:
        atomic_write_bytes(json_path, (json.dumps(result, indent=1) + "\n").encode())
