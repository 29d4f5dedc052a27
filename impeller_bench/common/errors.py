"""The one exception type the command line turns into a clean error message."""
from __future__ import annotations

from pathlib import Path


class ImpellerBenchError(Exception):
    """A problem with the user's input: reported in one line, exit code 2."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = None if path is None else str(path)
        self.problem = message  # the message without the path
        super().__init__(f"{self.path}: {message}" if self.path else message)
