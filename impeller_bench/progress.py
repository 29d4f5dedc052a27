"""Progress reporting: library loops take ``progress(items, label, status=None)``; the CLI passes a bar.

``status``, when given, is a function of no arguments returning a short text
(a training loop's loss and speed) that the bar shows after its counter.
"""
from __future__ import annotations

import time


def no_progress(items, label, status=None):
    """The silent default: the items, unchanged."""
    return items


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
