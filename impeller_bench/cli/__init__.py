"""The ``impeller-bench`` command line: a thin layer over the library, one module per command group
(``data``: build-split, validate, synth, download; ``run``: run, train, predict, latency, export,
distill-teacher; ``evaluation``: evaluate, compare; ``leaderboard``; ``sweep``), the options they share in ``options``."""
from __future__ import annotations

import signal
import threading

import click

from ..common.errors import ImpellerBenchError
from ..common.version import __version__
from .data import build_split_command, download_command, synth_command, validate_command
from .evaluation import compare_command, evaluate_command
from .leaderboard import leaderboard_group
from .run import (
    distill_teacher_command,
    export_command,
    latency_command,
    predict_command,
    run_command,
    train_command,
)
from .sweep import sweep_command


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


for _command in (build_split_command, validate_command, synth_command, download_command, run_command, train_command,
                 predict_command, latency_command, export_command, distill_teacher_command, evaluate_command,
                 compare_command, leaderboard_group, sweep_command):
    main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    main()
