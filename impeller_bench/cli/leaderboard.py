"""The leaderboard commands: validate entries, check a pull request, build the board, package a submission."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..common.version import __version__
from .options import dataset_for, progress_bar


@click.group("leaderboard")
def leaderboard_group():
    """Validate submissions, package a run as one, and build the leaderboard's tables, plots and web site."""


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
    from ..leaderboard.submission import submission_folders

    sys.exit(_validate_entries(submission_folders(paths, board), board, data_root, annotations))


def _validate_entries(folders, board, data_root, annotations) -> int:
    """Each folder's verdict printed as it comes, the board's other entries as the cross-entry checks' others;
    the exit code (0: every folder holds)."""
    from ..leaderboard.checks import PublishedDatasets, validate_submission
    from ..leaderboard.review import cross_entry_problems

    entries = board / "submissions"
    others = sorted(entries.iterdir()) if entries.is_dir() else []
    across = cross_entry_problems(folders, others)
    checks, datasets = [], PublishedDatasets(data_root, annotations)
    for folder in folders:
        checks.append(validate_submission(folder, data_root, annotations, datasets=datasets))
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
    from ..leaderboard.outputs import outdated
    from ..leaderboard.review import parse_name_status, pull_request_scope

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
    """Regenerate README.md, results.csv, the plots and the web site (site/) of the board from its submissions.

    The site's figures (curves, breakdowns, the best and worst test images) and overlays.png (maps over test
    images, not committed) need the built splits; --check needs no data."""
    from ..leaderboard.outputs import build_board, outdated
    from ..leaderboard.site import SITE_DIR

    if check:
        stale = outdated(board, annotations)
        for name in stale:
            click.echo(f"out of date: {board / name}")
        click.echo("run: impeller-bench leaderboard build" if stale else f"{board}: up to date")
        sys.exit(1 if stale else 0)
    site = board / SITE_DIR
    written = build_board(board, annotations, data_root)
    for path in written:
        if site not in path.parents:
            click.echo(f"wrote {path}")
    click.echo(_site_line(site, [p for p in written if site in p.parents]))


def _site_line(site: Path, files: list[Path]) -> str:
    size = sum(p.stat().st_size for p in files)
    return f"wrote {site}/: {len(files)} files, {size / 1024:.0f} KiB (open it: python -m http.server -d {site})"


@leaderboard_group.command("publish")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write the site into (replaced whole when complete): new, empty or an earlier "
                   "publish; not the committed site/, nor a folder holding or inside the board.")
@_board_option
@_annotations_option
@_data_option
def leaderboard_publish_command(out, board, annotations, data_root):
    """Write the site for the web: the committed site's pages, each entry's best and worst test images shown
    as the photo, then its map over the photo with the defect outlined (the photos come from the built splits
    under --data and never enter the repository). The Pages workflow runs this."""
    from ..leaderboard.site import publish_site

    click.echo(_site_line(out, publish_site(out, board, annotations, data_root)))


@leaderboard_group.command("submit")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--name", help="The entry's name (its folder under submissions/); for a sweep cell, default: the "
                             "grid's name pattern.")
@click.option("--command", "run_command_text", help="The command that made the run, for the record (a sweep "
                                                    "cell's default: the run command of its definition).")
@click.option("--author", "authors", multiple=True, help="Repeatable.")
@click.option("--code", help="Link to the code that made the predictions.")
@click.option("--hardware", help="Where it ran, e.g. '2-core x86-64 CPU, no GPU'.")
@click.option("--latency", "latency_json", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Figures written by 'impeller-bench latency --json' (the entry's method is taken from it).")
@click.option("--map-size", default=64, show_default=True, type=click.IntRange(8, 128), help="Maps are area-averaged down to this side.")
@click.option("--bootstrap", "bootstrap_samples", default=1000, show_default=True, type=click.IntRange(1))
@click.option("--notes", help="Free text shown with the entry.")
@click.option("--dataset", "dataset_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The published split the run was made on (default: the one its meta.json names).")
@_board_option
@click.option("--overwrite", is_flag=True, help="Replace an entry of the same name.")
def leaderboard_submit_command(run_dirs, name, run_command_text, authors, code, hardware, latency_json, map_size,
                               bootstrap_samples, notes, dataset_dir, board, overwrite):
    """Package runs' predictions as submissions: compact maps, recomputed claims, submission.json.

    Each RUN_DIR is a predictions folder ('run --out') or a sweep's cell (SWEEP/cells/NAME): a cell brings its
    command, and its grid's submission block the name, authors, code, hardware, latency file and notes, so
    that 'leaderboard submit SWEEP/cells/*' submits a whole sweep. Options given here take precedence."""
    from ..sweeps.cells import is_cell, submission_defaults

    if name and len(run_dirs) > 1:
        raise click.UsageError("--name names one entry: give one RUN_DIR, or sweep cells whose grid names them")
    given = {"name": name, "command": run_command_text, "authors": list(authors) or None, "code": code,
             "hardware": hardware, "latency": latency_json, "notes": notes, "dataset_dir": dataset_dir}
    entries = []
    for run_dir in run_dirs:
        defaults = submission_defaults(run_dir) if is_cell(run_dir) else {"predictions": run_dir}
        fields = defaults | {k: v for k, v in given.items() if v is not None}
        missing = [f"--{option}" for option, key in (("name", "name"), ("command", "command"), ("author", "authors"),
                                                      ("code", "code"), ("hardware", "hardware")) if not fields.get(key)]
        if missing:
            raise click.UsageError(f"{run_dir}: missing {', '.join(missing)} (a sweep cell's grid can give them "
                                   "in its submission block)")
        entries.append(fields)
    named = {}
    for run_dir, fields in zip(run_dirs, entries):
        if fields["name"] in named:
            raise click.UsageError(f"{named[fields['name']]} and {run_dir} would both be entry {fields['name']!r}: "
                                   "the grid's name pattern must tell its cells apart ({seed_suffix} for seeds, "
                                   "{options} for options)")
        named[fields["name"]] = run_dir
    for fields in entries:
        _submit_one(fields, board, map_size, bootstrap_samples, overwrite)
    ctx = click.get_current_context()
    where = f" --board {board}" if ctx.get_parameter_source("board") == click.core.ParameterSource.COMMANDLINE else ""
    click.echo(f"then: impeller-bench leaderboard validate{where} && impeller-bench leaderboard build{where} "
               "(both take --annotations and --data too, where the splits are not the defaults)")


def _submit_one(fields: dict, board: Path, map_size: int, bootstrap_samples: int, overwrite: bool) -> None:
    from ..common.errors import ImpellerBenchError
    from ..evaluation.evaluate import IMAGE_METRICS_UNDEFINED
    from ..evaluation.predictions import load_predictions
    from ..leaderboard.submission import is_safe_name, latency_entry, package_submission

    run = load_predictions(fields["predictions"])
    dataset = dataset_for(run, fields.get("dataset_dir") and Path(fields["dataset_dir"]))
    latency = None
    if fields.get("latency"):
        path = Path(fields["latency"])
        try:
            figures = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ImpellerBenchError(f"cannot read the latency figures ({exc.__class__.__name__})", path) from None
        latency = latency_entry(figures, run.meta.get("method"), fields["hardware"])
    name = fields["name"]
    if not is_safe_name(name):
        raise ImpellerBenchError(f"entry name {name!r} is unsafe (letters, digits, '_', '-', '.'; no '/')",
                                 board / "submissions")
    submission = package_submission(run, board / "submissions" / name, dataset, authors=list(fields["authors"]),
                                    code=fields["code"], version=f"impeller-bench {__version__}",
                                    hardware=fields["hardware"], command=fields["command"], latency=latency,
                                    map_size=map_size, bootstrap_samples=bootstrap_samples, notes=fields.get("notes"),
                                    overwrite=overwrite, progress=progress_bar)
    image_auroc = submission["metrics"]["image_auroc"]
    click.echo(f"wrote {board / 'submissions' / name}: "
               f"{IMAGE_METRICS_UNDEFINED if image_auroc is None else f'image AUROC {100 * image_auroc:.2f}'}, "
               f"pixel PRO@30% {100 * submission['metrics']['pixel_pro_30']:.2f}")
