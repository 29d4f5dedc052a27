"""Progress reporting: library loops take ``progress(items, label, status=None)``; the CLI passes a bar.

``status``, when given, is a function of no arguments returning a short text
(a training loop's loss and speed) that the bar shows after its counter.
Where no one watches a bar (output to a log, CI, nohup), ``report_lines``
writes a line now and then instead.
"""
from __future__ import annotations

import time

REPORT_EVERY_SECONDS = 20.0  # often enough to see a long run move, rarely enough to keep a log readable


def no_progress(items, label, status=None):
    """The silent default: the items, unchanged."""
    return items


def format_seconds(seconds: float) -> str:
    """A duration for people: '12.3 ms', '4.2 s', '37 s', '2 min 05 s', '1 h 07 min'."""
    if seconds < 1:
        return f"{1000 * seconds:.1f} ms"
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def report_lines(items, label, status=None, write=print, interval: float = REPORT_EVERY_SECONDS,
                 clock=time.monotonic):
    """Yield ``items``, writing ``label: done/total (percent), speed, about T left`` at most every
    ``interval`` seconds, and ``label: total/total in T, speed`` once the loop ends.

    The speed is ``status()`` where the loop gives one (a training loop's loss and steps per second), else
    items per second; the time left is the items to go at the speed so far."""
    total = len(items) if hasattr(items, "__len__") else None
    started = last = clock()
    done = 0
    for item in items:
        yield item
        done += 1
        now = clock()
        if now - last >= interval and done != total:  # the last item has the end line
            last = now
            write(_progress_line(label, done, total, now - started, status))
    write(_progress_line(label, done, total, clock() - started, status, finished=True))


def _progress_line(label, done, total, elapsed, status, finished=False) -> str:
    """One line of ``report_lines``: counter, speed (the loop's own status where it has one), time left or taken."""
    rate = done / elapsed if elapsed > 0 else 0.0
    speed = status() if status else f"{rate:.2f}/s"
    if finished:
        return f"{label}: {done}/{done} in {format_seconds(elapsed)}, {speed}"
    if total is None:
        return f"{label}: {done}, {speed}"
    left = f"about {format_seconds((total - done) / rate)} left" if rate > 0 else "time left unknown"
    return f"{label}: {done}/{total} ({100 * done // max(total, 1)}%), {speed}, {left}"


class TrainingMeter:
    """A training loop's last loss and its steps per second since the first ``tick``; ``status`` for the bar."""

    def __init__(self):
        self.started = None
        self.steps = 0
        self.loss = float("nan")

    def tick(self) -> None:
        if self.started is None:
            self.started = time.perf_counter()
        else:
            self.steps += 1

    @property
    def per_second(self) -> float:
        if not self.steps:
            return 0.0
        return self.steps / max(time.perf_counter() - self.started, 1e-9)

    def status(self) -> str:
        return f"loss {self.loss:.3f}  {self.per_second:.2f} steps/s"
