"""The package's version: recorded in every model file, predictions folder and submission."""
from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"


def source_commit() -> str | None:
    """The commit (short) of the git checkout this package's code is tracked in, with '-dirty' when the package
    differs from it; None for an installed copy (not a tracked file of any checkout) or without git: what a
    sweep cell records as the code that ran it."""
    import subprocess

    here = Path(__file__).resolve()

    def git(*args: str) -> subprocess.CompletedProcess | None:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, cwd=here.parent)
        except (OSError, subprocess.TimeoutExpired):
            return None

    tracked = git("ls-files", "--error-unmatch", here.name)
    head = git("rev-parse", "--short", "HEAD")
    if tracked is None or tracked.returncode != 0 or head is None or head.returncode != 0 or not head.stdout.strip():
        return None
    changed = git("status", "--porcelain", "--untracked-files=no", "--", str(here.parent.parent))
    return head.stdout.strip() + ("-dirty" if changed is not None and changed.stdout.strip() else "")
