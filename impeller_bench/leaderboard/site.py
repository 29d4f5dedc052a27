"""The board as a static web site (``leaderboard/site/``): an index with every track's tables, a page per
track and a page per entry, rendered with Jinja2 templates (``templates/``), readable without JavaScript
(``sort.js`` only adds sorting by a column), nothing loaded from the network.

The committed site shows what the repository holds: the submissions, their maps and the figures computed
from them (:mod:`.figures`). The sources' photos and masks are never committed; ``publish_site`` writes a copy
for the web (GitHub Pages) with each entry's examples drawn over the photos with their masks outlined.

``expected_site`` renders every file from the submissions, the annotations and the committed figures
(text pages as text, pictures as the fingerprints of their inputs), so ``site_outdated`` needs no data and
catches a page edited by hand, a stray file, and an entry changed after its figures were made.
"""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np

from ..common.errors import ImpellerBenchError
from ..common.files import atomic_write_bytes, staged_directory
from ..common.overlay import heat_overlay
from ..data import published
from ..evaluation.evaluate import resize_map
from ..evaluation.predictions import load_predictions
from .board import (
    IMAGE_COLUMNS,
    IMAGE_RANKED_BY,
    LATENCY_PLOT,
    PIXEL_COLUMNS,
    PIXEL_RANKED_BY,
    by_split,
    current_entries,
    detectable_differences,
    entry_label,
    image_level,
    plotted_split,
    ranks,
)
from .figures import entry_figures, entry_key
from .plots import FINGERPRINT_KEY, input_fingerprint, latency_payload, png_fingerprint
from .submission import METRICS, PREDICTIONS_DIR

SITE_DIR = "site"


FIGURES_NAME, CURVES_NAME, MAPS_NAME = "figures.json", "curves.png", "maps.png"


STATIC = ("style.css", "sort.js")
GENERATOR = '<meta name="generator" content="impeller-bench leaderboard">'  # in every page's head: is_site


METRIC_NAMES = {**{m: f"image {name}" for m, name in IMAGE_COLUMNS.items()},
                **{m: f"pixel {name}" for m, name in PIXEL_COLUMNS.items()}}


def _environment():
    try:
        import jinja2
    except ImportError:
        raise ImpellerBenchError("the web site needs Jinja2: pip install 'impeller-bench[site]'") from None
    environment = jinja2.Environment(loader=jinja2.PackageLoader("impeller_bench.leaderboard", "templates"),
                                     autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                                     lstrip_blocks=True, keep_trailing_newline=True)
    environment.filters["percent"] = lambda value: "-" if value is None else f"{100 * value:.2f}"
    environment.globals["generator"] = GENERATOR
    return environment


def _markdown(text: str) -> str:
    """A dataset card section as HTML: its raw HTML escaped, so the card is shown, never run."""
    try:
        from markdown_it import MarkdownIt
    except ImportError:
        raise ImpellerBenchError("the web site needs markdown-it-py: pip install 'impeller-bench[site]'") from None
    return MarkdownIt("commonmark", {"html": False}).enable("table").render(text)


CARD_NAME = "dataset_card.md"


def card_text(annotations: str | Path) -> str:
    """The dataset card beside the annotations folder (the track pages quote it), or nothing."""
    path = Path(annotations).parent / CARD_NAME
    return path.read_text() if path.is_file() else ""


def card_sections(card_text: str) -> dict[str, str]:
    """The dataset card's sections that describe one track, by the track's name (a heading that starts with
    the track's name in backticks: ``## `mtd` (second domain: ...)``)."""
    sections, name, lines = {}, None, []
    for line in card_text.splitlines() + ["## end"]:
        if line.startswith("## "):
            if name:
                sections[name] = "\n".join(lines).strip() + "\n"
            heading = line[3:].strip()
            name = heading.split("`")[1] if heading.startswith("`") and heading.count("`") >= 2 else None
            lines = []
        elif name:
            lines.append(line)
    return sections


# --- what the pages show -------------------------------------------------------------------------------------

def _column(entries: list[dict], metric: str) -> dict:
    """A metric's cells: each entry's value and interval, and where its bar lies on the column's own scale."""
    lows = [e["ci95"][metric][0] for e in entries if e["ci95"].get(metric)]
    highs = [e["ci95"][metric][1] for e in entries if e["ci95"].get(metric)]
    low, high = (min(lows), max(highs)) if lows else (0.0, 1.0)
    span = max(high - low, 1e-12)
    cells = {}
    for e in entries:
        value, interval = e["metrics"][metric], e["ci95"].get(metric)
        bar = None
        if interval:
            bar = {"left": round(100 * (interval[0] - low) / span, 2), "width": round(100 * (interval[1] - interval[0]) / span, 2),
                   "mark": round(100 * (value - low) / span, 2)}
        cells[e["name"]] = {"value": value, "interval": interval, "bar": bar}
    return {"metric": metric, "low": low, "high": high, "cells": cells}


def _table(entries: list[dict], columns: dict[str, str], ranked_by: str, title: str) -> dict:
    entry_ranks = dict(zip((e["name"] for e in entries), ranks(entries, ranked_by)))
    shared = {r for r in entry_ranks.values() if list(entry_ranks.values()).count(r) > 1}
    order = sorted(entries, key=lambda e: (entry_ranks[e["name"]], -e["metrics"][ranked_by], e["name"]))
    metric_columns = [(m, name, _column(entries, m)) for m, name in columns.items()]
    rows = [{"name": e["name"], "label": entry_label(e), "rank": entry_ranks[e["name"]],
             "tied": entry_ranks[e["name"]] in shared,
             "cells": [(m, column["cells"][e["name"]]) for m, _, column in metric_columns]} for e in order]
    detectable = detectable_differences(entries, columns) if len(entries) > 1 else {}
    return {"title": title, "ranked_by": columns[ranked_by], "columns": [(m, name) for m, name, _ in metric_columns],
            "rows": rows, "detectable": [(name, detectable[m]) for m, name in columns.items() if detectable.get(m) is not None]}


def _latency_rows(entries: list[dict]) -> list[dict]:
    timed = sorted((e for e in entries if e["latency"]), key=lambda e: (e["latency"]["median_ms"], e["name"]))
    return [{"name": e["name"], "label": entry_label(e), "median_ms": e["latency"]["median_ms"],
             "p90_ms": e["latency"]["p90_ms"], "device": e["latency"]["protocol"].get("device", "?"),
             "threads": e["latency"]["protocol"].get("threads", "?"),
             "hardware": e["latency"].get("hardware", e["hardware"])} for e in timed]


def _track(split: str, group: list[dict], annotations: Path) -> dict:
    tables = []
    if image_level(annotations, split, group):
        tables.append(_table(group, IMAGE_COLUMNS, IMAGE_RANKED_BY, "Image level"))
    tables.append(_table(group, PIXEL_COLUMNS, PIXEL_RANKED_BY, "Pixel level"))
    unit = (group[0].get("bootstrap") or {}).get("unit", "image")
    return {"split": split, "about": published.SPLITS.get(split, {}).get("about"), "tables": tables,
            "audit": published.load_audit(annotations, split), "unit": unit, "latency": _latency_rows(group),
            "deprecated": published.status(split) == published.DEPRECATED,
            "reason": published.deprecation_reason(split), "sha256": group[0]["dataset"]["manifest_sha256"]}


def split_counts(annotations: Path, split: str) -> list[dict]:
    """Images and photo groups per part of a published split, from its annotations file."""
    path = annotations / f"{split}.json"
    if not path.is_file():
        return []
    parts: dict[tuple, dict] = {}
    for e in json.loads(path.read_text())["entries"]:
        part = parts.setdefault((e["split"], e["label"]), {"split": e["split"], "label": e["label"], "images": 0,
                                                            "groups": set()})
        part["images"] += 1
        part["groups"].add(e.get("group"))
    return [p | {"groups": len(p["groups"] - {None}) or None} for _, p in sorted(parts.items(), reverse=True)]


def _entry_page(entry: dict, figures: dict | None) -> dict:
    metrics = [{"metric": m, "name": METRIC_NAMES[m], "value": entry["metrics"][m], "interval": entry["ci95"].get(m)}
               for m in METRICS if entry["metrics"].get(m) is not None]
    return {"entry": entry, "label": entry_label(entry), "metrics": metrics, "figures": figures,
            "config": sorted(entry["config"].items())}


# --- files ---------------------------------------------------------------------------------------------------

def _render(environment, template: str, depth: int, **context) -> str:
    return environment.get_template(template).render(root="../" * depth, **context)


def expected_site(entries: list[dict], annotations: str | Path, figures: dict[str, dict],
                  card_text: str, photos: bool = False) -> dict[str, str]:
    """Every file of the site by its path in the site: the text of pages, stylesheet and script, and the
    fingerprint of each picture's inputs. ``figures``: each entry of a current split's figures, by name."""
    annotations = Path(annotations)
    environment = _environment()
    groups = by_split(entries)
    tracks = [_track(split, group, annotations) for split, group in groups.items()]
    sections = card_sections(card_text)
    files = {name: (Path(__file__).parent / "templates" / name).read_text() for name in STATIC}
    files["index.html"] = _render(environment, "index.html", 0, tracks=tracks, latency_plot=LATENCY_PLOT,
                                  plotted=plotted_split(entries), entries=sorted(entries, key=lambda e: e["name"]))
    files[LATENCY_PLOT] = input_fingerprint("latency", latency_payload(entries))
    for track in tracks:
        split = track["split"]
        card = sections.get(split)
        files[f"tracks/{split}.html"] = _render(environment, "track.html", 1, track=track,
                                                card=_markdown(card) if card else None,
                                                counts=split_counts(annotations, split))
    for entry in entries:
        folder = f"entries/{entry['name']}"
        entry_figures_ = figures.get(entry["name"])
        files[f"{folder}/index.html"] = _render(environment, "entry.html", 2, photos=photos,
                                                **_entry_page(entry, entry_figures_))
        if entry_figures_ is not None:
            files[f"{folder}/{FIGURES_NAME}"] = _figures_text(entry_figures_)
            files[f"{folder}/{CURVES_NAME}"] = input_fingerprint("site-curves", entry_figures_["curves"])
            if entry_figures_["examples"]:
                files[f"{folder}/{MAPS_NAME}"] = input_fingerprint("site-maps", _maps_payload(entry_figures_, photos))
    return files


def _maps_payload(figures: dict, photos: bool) -> dict:
    return {"maps_sha256": figures["maps_sha256"], "examples": figures["examples"], "photos": photos}


def _figures_text(figures: dict) -> str:
    return json.dumps(figures, indent=1, sort_keys=True) + "\n"


def committed_figures(site: Path, entries: list[dict]) -> dict[str, dict]:
    """The figures committed beside the entry pages, of the entries they are still current for."""
    figures = {}
    for entry in entries:
        path = site / "entries" / entry["name"] / FIGURES_NAME
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except ValueError:
                continue
            if isinstance(data, dict) and {k: data.get(k) for k in entry_key(entry)} == entry_key(entry):
                figures[entry["name"]] = data
    return figures


def site_outdated(board: str | Path, entries: list[dict], annotations: str | Path, card_text: str) -> list[str]:
    """The site's files that are missing, out of date, edited by hand or not the build's (empty when current)."""
    site = Path(board) / SITE_DIR
    figures = committed_figures(site, entries)
    expected = expected_site(entries, annotations, figures, card_text)
    stale = [f"{SITE_DIR}/entries/{e['name']}/{FIGURES_NAME} (missing or made from other maps)"
             for e in current_entries(entries) if e["name"] not in figures]
    for name, want in expected.items():
        path = site / name
        have = (png_fingerprint(path) if name.endswith(".png") else path.read_text()) if path.is_file() else None
        if have != want:
            stale.append(f"{SITE_DIR}/{name}")
    if site.is_dir():
        stale += [f"{SITE_DIR}/{p.relative_to(site).as_posix()} (not made by the build)"
                  for p in sorted(site.rglob("*")) if p.is_file() and p.relative_to(site).as_posix() not in expected]
    return stale


def write_site(out: str | Path, board: str | Path, entries: list[dict], annotations: str | Path, datasets: dict,
               card_text: str, photos: bool = False) -> list[Path]:
    """Write the whole site into ``out`` (a fresh folder, swapped in when complete): ``datasets`` are the
    built current splits, by name, from which each entry's figures are computed."""
    out, board = Path(out), Path(board)
    figures = {e["name"]: entry_figures(e, datasets[e["dataset"]["split"]]) for e in current_entries(entries)}
    files = expected_site(entries, annotations, figures, card_text, photos)
    with staged_directory(out, overwrite=True) as staging:
        for name, content in files.items():
            path = staging / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if name == LATENCY_PLOT:
                shutil.copyfile(board / LATENCY_PLOT, path)
            elif name.endswith(CURVES_NAME):
                _draw_curves(figures[path.parent.name]["curves"], path, content)
            elif name.endswith(MAPS_NAME):
                entry = next(e for e in entries if e["name"] == path.parent.name)
                _draw_maps(entry, figures[entry["name"]], datasets[entry["dataset"]["split"]] if photos else None,
                           path, content)
            else:
                path.write_text(content)
    return [out / name for name in files]


# --- pictures ------------------------------------------------------------------------------------------------

def _draw_curves(curves: dict, path: Path, fingerprint: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(key, title) for key, title in (("image_roc", "Image ROC"), ("pixel_roc", "Pixel ROC"),
                                              ("pro", "PRO up to 30% FPR")) if key in curves]
    figure, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.6), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        curve = curves[key]
        if key == "pro":
            ax.plot(curve["fpr"], curve["pro"], color="tab:orange")
            ax.set_xlim(0, curve["fpr"][-1])
            ax.set_xlabel("false positive rate", fontsize=7)
            ax.set_ylabel("per-region overlap", fontsize=7)
        else:
            ax.plot(curve["fpr"], curve["tpr"], color="tab:blue")
            ax.plot([0, 1], [0, 1], color="0.7", linewidth=0.7)
            ax.set_xlabel("false positive rate", fontsize=7)
            ax.set_ylabel("true positive rate", fontsize=7)
            title += f" (AUROC {100 * curve['auroc']:.1f})"
        ax.set_ylim(0, 1.01)
        ax.set_title(title, fontsize=8)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, metadata={"Software": None, FINGERPRINT_KEY: fingerprint})
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())


TILE = 112  # pixels per picture in an entry's examples


def _draw_maps(entry: dict, figures: dict, dataset, path: Path, fingerprint: str) -> None:
    """One row per example: the heat map (scaled to its own range); with ``dataset`` (the published copy) the
    photo, then the map over the photo with the mask's outline (``predict``'s drawing)."""
    from PIL import Image, PngImagePlugin

    predictions = load_predictions(entry["_folder"] / PREDICTIONS_DIR)
    samples = {s.id: s for s in dataset.test} if dataset is not None else {}
    columns = 2 if dataset is not None else 1
    examples = figures["examples"]
    canvas = Image.new("RGB", (columns * TILE + (columns - 1) * 4, len(examples) * (TILE + 4) - 4), "white")
    for row, example in enumerate(examples):
        heat = resize_map(predictions.load_map(example["id"]).astype(np.float64), (TILE, TILE))
        low, high = np.percentile(heat, [1, 99.9])
        heat = (heat - low) / max(high - low, 1e-12)
        photo = mask = None
        if dataset is not None:
            sample = samples[example["id"]]
            photo = np.asarray(Image.fromarray(sample.load_image()).convert("RGB").resize((TILE, TILE), Image.BILINEAR))
            mask = np.asarray(Image.fromarray((sample.load_mask() > 0).astype(np.uint8) * 255).resize(
                (TILE, TILE), Image.NEAREST)) > 0
            canvas.paste(Image.fromarray(photo), (0, row * (TILE + 4)))
        canvas.paste(Image.fromarray(heat_overlay(photo, heat, mask)), ((columns - 1) * (TILE + 4), row * (TILE + 4)))
    info = PngImagePlugin.PngInfo()
    info.add_text(FINGERPRINT_KEY, fingerprint)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", optimize=True, pnginfo=info)
    atomic_write_bytes(path, buffer.getvalue())


def publish_site(out: str | Path, board: str | Path, annotations: str | Path, data_root: str | Path) -> list[Path]:
    """The site for the web, into ``out``: the committed site's pages, with each entry's examples drawn over
    the sources' photos and their masks outlined (from the built splits under ``data_root``)."""
    from .board import load_entries
    from .checks import load_published_dataset

    board = Path(board)
    if Path(out).resolve() == (board / SITE_DIR).resolve():
        raise ImpellerBenchError(f"{out}: the committed site holds no photos; publish to another folder")
    _refuse_foreign_folder(Path(out), board, Path(data_root))
    out = Path(out).resolve()  # (a relative '.' has no name to stage beside)
    entries = load_entries(board)
    datasets = {split: load_published_dataset(Path(data_root), Path(annotations), split)
                for split in by_split(current_entries(entries))}
    return write_site(out, board, entries, annotations, datasets, card_text(annotations), photos=True)


def is_site(folder: Path) -> bool:
    """Whether ``folder`` holds a site this code wrote (its index page carries the generator tag)."""
    index = folder / "index.html"
    try:
        return index.is_file() and GENERATOR in index.read_text(errors="replace")
    except OSError:
        return False


def _refuse_foreign_folder(out: Path, board: Path, data_root: Path) -> None:
    """Publishing replaces ``out`` whole, so it must be a real folder that is new, empty or an earlier publish,
    neither holding nor inside the board, nor holding the data."""
    if out.is_symlink():
        raise ImpellerBenchError(f"{out}: a symbolic link (publishing would replace the link, not its target); "
                                 "give the folder itself")
    resolved = out.resolve()
    for inner, what in ((board, "the leaderboard"), (data_root, "the built splits")):
        if resolved == inner.resolve() or resolved in inner.resolve().parents:
            raise ImpellerBenchError(f"{out}: holds {what} ({inner}); publish to a folder of its own")
    if board.resolve() in resolved.parents:
        raise ImpellerBenchError(f"{out}: inside the leaderboard ({board}), whose folders the build owns; publish "
                                 "outside it")
    if out.exists() and not out.is_dir():
        raise ImpellerBenchError(f"{out}: exists and is not a folder")
    try:
        foreign = out.is_dir() and any(out.iterdir()) and not is_site(out)
    except OSError as exc:
        raise ImpellerBenchError(f"cannot read the folder ({exc.strerror or exc})", out) from None
    if foreign:
        raise ImpellerBenchError(f"{out}: exists and is not a site from an earlier publish (its index.html lacks "
                                 "the generator tag; it would be replaced whole): publish to a new or empty folder, "
                                 "or remove it first")
