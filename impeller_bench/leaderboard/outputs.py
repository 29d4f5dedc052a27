"""The board's generated files (the README's tables, results.csv, the plots and the web site under
``site/``): what each must hold, whether the committed ones are current, and writing them."""
from __future__ import annotations

from pathlib import Path

from ..common.files import atomic_write_bytes
from .board import (
    CSV_NAME,
    LATENCY_PLOT,
    OVERLAY_PLOT,
    README_NAME,
    by_split,
    current_entries,
    load_entries,
    render_csv,
    render_readme,
)
from .checks import load_published_dataset
from .plots import (
    draw_latency_plot,
    draw_overlays,
    input_fingerprint,
    latency_payload,
    png_fingerprint,
)
from .site import SITE_DIR, card_text, site_outdated, write_site


def expected_outputs(entries: list[dict], annotations: str | Path) -> dict[str, str]:
    """What each committed file must hold: the text itself, or a PNG's input fingerprint."""
    return {README_NAME: render_readme(entries, annotations), CSV_NAME: render_csv(entries, annotations),
            LATENCY_PLOT: input_fingerprint("latency", latency_payload(entries))}


def outdated(board: str | Path, annotations: str | Path) -> list[str]:
    """The committed files that are missing or do not match the submissions (empty when up to date)."""
    board = Path(board)
    entries = load_entries(board)
    stale = []
    for name, expected in expected_outputs(entries, annotations).items():
        path = board / name
        if name.endswith(".png"):
            current = png_fingerprint(path) if path.is_file() else None
        else:
            current = path.read_text() if path.is_file() else None
        if current != expected:
            stale.append(name)
    return stale + site_outdated(board, entries, annotations, card_text(annotations))


def build_board(board: str | Path, annotations: str | Path, data_root: str | Path) -> list[Path]:
    """Regenerate every file of the board; the overlays and the site's figures need the built splits under
    ``data_root``."""
    board, annotations, data_root = Path(board), Path(annotations), Path(data_root)
    entries = load_entries(board)
    # Every split is checked before anything is written: a missing one leaves the board as it was.
    datasets = {split: load_published_dataset(data_root, annotations, split) for split in by_split(current_entries(entries))}
    expected = expected_outputs(entries, annotations)
    # The pictures and the site first (the site copies the latency plot), the tables last: a drawing that fails
    # leaves the tables as they were, so that --check still tells the board is out of date.
    draw_latency_plot(entries, board / LATENCY_PLOT)
    draw_overlays(entries, annotations, datasets, board / OVERLAY_PLOT)
    site = write_site(board / SITE_DIR, board, entries, annotations, datasets, card_text(annotations))
    atomic_write_bytes(board / README_NAME, expected[README_NAME].encode())
    atomic_write_bytes(board / CSV_NAME, expected[CSV_NAME].encode())
    return [board / name for name in (*expected, OVERLAY_PLOT) if (board / name).is_file()] + site
