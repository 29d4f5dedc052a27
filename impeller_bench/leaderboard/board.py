"""The board's tables: entries loaded and ranked with ties, the README and results.csv.

``outputs.build_board`` writes, into the board folder:

- ``README.md``: per split (the main split first, then the other current
  ones, then the deprecated ones under their own heading with the reason;
  see :mod:`impeller_bench.data.published`), the split's shortcut audit verdict, the
  image-level table (the paper's Table 1 layout) and the pixel-level table
  (Table 2), each entry with its 95% bootstrap interval and its rank with
  ties (1 + the entries that beat it, paired: :mod:`impeller_bench.evaluation.significance`), under
  each table the difference the split detects with 80% power, the
  paper's own figures beside them (marked: their split and masks, not
  comparable number for number), the latency table and how every entry was
  made;
- ``results.csv``: one row per entry, every number;
- ``latency_vs_pro.png``: one point per entry of the current splits;
- ``overlays.png``: maps over a few defective test images with their mask
  outlines, drawn from the built split. It shows the sources' photos and
  masks, which the repository never holds (licence CC BY-NC-ND), so it is
  written for the reader's own checkout and CI's artefacts, not committed.

The committed files are compared byte for byte (text) by ``outdated``; a
PNG's pixels depend on the matplotlib build, so each PNG carries the sha256
of the data it was drawn from (a PNG text chunk) and that is what is
compared.
"""
from __future__ import annotations

import csv
import html
import io
import json
from pathlib import Path

from ..common.errors import ImpellerBenchError
from ..data import published
from ..detectors.base import model_name
from ..evaluation.evaluate import IMAGE_METRICS_UNDEFINED
from ..evaluation.significance import tied_ranks, track_detectable_difference
from .review import maps_digest
from .submission import METRICS, load_replicates, read_submission

README_NAME = "README.md"


CSV_NAME = "results.csv"


LATENCY_PLOT = "latency_vs_pro.png"


OVERLAY_PLOT = "overlays.png"


IMAGE_COLUMNS = {"image_auroc": "AUROC", "image_auprc": "AUPRC", "image_precision": "Precision",
                 "image_recall": "Recall", "image_f1_max": "F1-max"}


PIXEL_COLUMNS = {"pixel_auroc": "AUROC", "pixel_pro_30": "PRO@30%", "pixel_f1_max": "F1-max"}


IMAGE_RANKED_BY, PIXEL_RANKED_BY = "image_auroc", "pixel_pro_30"




# Lim, Suh and Hur (2025), Tables 1 and 2 (percent) and latency (ms, batch 1, 256x256, RTX A5000):
# their own split and masks, shown for reference only.
_PAPER_ROWS = {  # image AUROC, AUPRC, precision, recall, F1-max; pixel AUROC, PRO@30%, F1-max; latency ms
    "patchsvdd": (89.00, 86.63, 77.12, 91, 83.49, 82.00, 51.00, 11.89, 675.64),
    "spade": (97.19, 97.17, 89.72, 96, 92.75, 89.05, 74.90, 26.16, 153.5),
    "padim": (97.92, 98.02, 96.74, 89, 92.71, 84.09, 73.95, 22.68, 77.22),
    "patchcore": (99.40, 99.55, 95.19, 99, 97.06, 90.00, 63.67, 17.59, 45.79),
    "ast": (100, 100, 100, 99, 99.50, 87.77, 57.67, 14.51, 66.71),
    "efficientad": (99.59, 99.63, 96.08, 98, 97.03, 85.68, 73.86, 29.04, 4.17),
    "ours": (99.81, 99.86, 100, 99, 99.50, 90.66, 75.83, 29.70, 4.03),
}


PAPER = {method: dict(zip((*METRICS, "latency_ms"), row)) for method, row in _PAPER_ROWS.items()}


PAPER_HARDWARE = "RTX A5000 GPU"


# Rudolph, Wandt and Rosenhahn (WACV 2021), Magnetic Tile Defects: image AUROC only, on their split (a random 80%
# of the defect-free images train: by image, so most test tiles were also trained on under another lighting).
DIFFERNET_MTD = {"image_auroc": 97.7}


def reference_rows(split: str) -> list[tuple[str, str, dict]]:
    """Published figures shown beside a split's entries, never ranked: (model, where, {metric: percent, and
    latency_ms where published}). The impeller splits get the paper's (``published.SPLITS``' ``references``:
    "paper", the default), mtd DifferNet's, a track no published figure was measured like (the localization
    track: no good test images) none."""
    kind = published.SPLITS.get(split, {}).get("references", "paper")
    if kind == "differnet":
        return [("DifferNet (Rudolph et al. 2021)", "their split, by image", DIFFERNET_MTD)]
    if kind == "paper":
        return [(f"{model_name(method)} (paper)", "paper, their split", figures) for method, figures in PAPER.items()]
    return []


def image_level(annotations: str | Path, split: str, entries: list[dict]) -> bool:
    """Whether ``split`` defines the image metrics: its published file holds good and defect test images (a
    split not published there, the entries' claims say)."""
    from ..common.metrics import image_metrics_defined

    path = Path(annotations) / f"{split}.json"
    if not path.is_file():
        return all(e["metrics"][IMAGE_RANKED_BY] is not None for e in entries)
    tests = [e["label"] != "good" for e in json.loads(path.read_text())["entries"] if e["split"] == "test"]
    return image_metrics_defined(tests)


# Characters a Markdown table would act on (a cell's end, code, escapes, links), as entities: with HTML
# escaped, submitted text is shown as written, never as markup.
MARKDOWN_ENTITIES = str.maketrans({"|": "&#124;", "`": "&#96;", "\\": "&#92;", "[": "&#91;", "]": "&#93;",
                                   "*": "&#42;", "_": "&#95;", "~": "&#126;", ":": "&#58;", "\n": " ", "\r": " "})


def cell(text) -> str:
    """Submitted text as the content of one Markdown table cell (emphasis and autolinks too: no ``*``, ``_``,
    ``~`` or ``:``, and no ``www.``, acts; Markdown applies inside inline HTML such as ``<code>``)."""
    return html.escape(str(text), quote=True).translate(MARKDOWN_ENTITIES).replace("www.", "www&#46;")


def code_cell(text) -> str:
    return f"<code>{cell(text)}</code>"


def plot_text(text: str) -> str:
    """Submitted text as a plot label: its dollar signs literal (matplotlib takes $...$ as mathematics, and
    fails the whole build on a formula it cannot parse)."""
    return text.replace("$", r"\$")



def entry_label(entry: dict) -> str:
    """The model's name as the board shows it: an ablation says so ("Ours, local map": the student-teacher map
    alone, not the published combined map)."""
    ablation = ", local map" if entry["config"].get("anomaly_map") == "local" else ""
    return model_name(entry["method"]) + ablation


def load_entries(board: str | Path) -> list[dict]:
    """Every submission of the board, schema-checked, with its bootstrap replicates (``_replicates``);
    ``leaderboard validate`` checks the numbers."""
    folder = Path(board) / "submissions"
    if not folder.is_dir():
        raise ImpellerBenchError("no submissions/ folder", board)
    entries = []
    for path in sorted(folder.iterdir()):  # hidden ones too: refused, not passed over
        data, problems = read_submission(path)
        if problems:
            raise ImpellerBenchError("; ".join(problems) + " (run: impeller-bench leaderboard validate)", path)
        entries.append(data | {"_folder": path, "_replicates": load_replicates(path, data)})
    if not entries:
        raise ImpellerBenchError("the board has no submissions", folder)
    return entries


def ranked(entries: list[dict], metric: str) -> list[tuple[int, dict]]:
    """(rank, entry) pairs, best first; entries of equal rank by value, then name."""
    return sorted(zip(ranks(entries, metric), entries),
                  key=lambda pair: (pair[0], -pair[1]["metrics"][metric], pair[1]["name"]))


def ranks(entries: list[dict], metric: str) -> list[int]:
    """Ranks with ties (entries of one split): 1 + the number of entries that beat it, each pair judged by the
    paired 95% bootstrap interval of its difference (:func:`impeller_bench.evaluation.significance.tied_ranks`)."""
    return tied_ranks([e["_replicates"][metric] for e in entries])


def detectable_differences(entries: list[dict], metrics) -> dict[str, float | None]:
    """Per metric, the difference the split detects with 80% power at the 5% level, paired (the median over
    the pairs of ``entries``: :func:`impeller_bench.evaluation.significance.track_detectable_difference`)."""
    return {m: track_detectable_difference([e["_replicates"][m] for e in entries]) for m in metrics}


def by_split(entries: list[dict]) -> dict[str, list[dict]]:
    """Entries per split: the main split first, then current ones, then deprecated ones."""
    splits: dict[str, list[dict]] = {}
    for entry in entries:
        splits.setdefault(entry["dataset"]["split"], []).append(entry)
    return dict(sorted(splits.items(), key=lambda item: published.split_order(item[0])))


def current_entries(entries: list[dict]) -> list[dict]:
    """The entries whose split is not deprecated."""
    return [e for e in entries if published.status(e["dataset"]["split"]) != published.DEPRECATED]


def _percent(value: float) -> str:
    return f"{100 * value:.2f}"


def _with_interval(entry: dict, metric: str) -> str:
    low, high = entry["ci95"][metric]
    return f"{_percent(entry['metrics'][metric])} [{_percent(low)}, {_percent(high)}]"


def _table(entries: list[dict], columns: dict[str, str], ranked_by: str, references) -> list[str]:
    head = ["Rank", "Model", "Entry"] + list(columns.values())
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rank, entry in ranked(entries, ranked_by):
        cells = [str(rank), cell(entry_label(entry)), code_cell(entry["name"])] + [_with_interval(entry, m) for m in columns]
        lines.append("| " + " | ".join(cells) + " |")
    for model, where, figures in references:
        if any(m in figures for m in columns):
            cells = ["-", f"*{model}*", f"*{where}*"] + [f"*{figures[m]:.2f}*" if m in figures else "-" for m in columns]
            lines.append("| " + " | ".join(cells) + " |")
    if len(entries) > 1:
        detectable = detectable_differences(entries, columns)
        lines += ["", "Detectable difference (80% power, 5% level, paired; this table's median pair), points: "
                  + ", ".join(f"{name} {100 * detectable[m]:.2f}" for m, name in columns.items()) + "."]
    return lines


def _latency_table(entries: list[dict], references) -> list[str]:
    lines = ["| Model | Entry | Median ms | p90 ms | Device | Threads | Hardware |", "|---|---|---|---|---|---|---|"]
    timed = sorted((e for e in entries if e["latency"]), key=lambda e: (e["latency"]["median_ms"], e["name"]))
    for entry in timed:
        latency, protocol = entry["latency"], entry["latency"]["protocol"]
        lines.append(f"| {cell(entry_label(entry))} | {code_cell(entry['name'])} | {latency['median_ms']:.1f} "
                     f"| {latency['p90_ms']:.1f} | {cell(protocol.get('device', '?'))} | {cell(protocol.get('threads', '?'))} "
                     f"| {cell(latency.get('hardware', entry['hardware']))} |")
    for model, _, figures in references:
        if "latency_ms" in figures:
            lines.append(f"| *{model}* | *paper* | *{figures['latency_ms']:.2f}* | - | *cuda* | - | *{PAPER_HARDWARE}* |")
    return lines


def _split_section(split: str, group: list[dict], level: str, audit: dict | None, annotations) -> list[str]:
    sha = group[0]["dataset"]["manifest_sha256"]
    about = published.SPLITS.get(split, {}).get("about")
    lines = [f"{level} {split}", "", f"Split `annotations/{split}.json`" + (f": {about}" if about else "")
             + f" (manifest sha256 `{sha[:16]}...`)."]
    if audit is not None:
        lines.append(f"Shortcut audit (`annotations/audits/{split}.json`): **{'pass' if audit['passed'] else 'FAIL'}**.")
    unit = (group[0].get("bootstrap") or {}).get("unit", "image")
    references = reference_rows(split)
    lines += [f"Intervals: bootstrap over {'photo groups (variants of one photo move together)' if unit == 'photo group' else 'test images'}.",
              ""]
    if image_level(annotations, split, group):
        lines += [f"{level}# Image level (ranked by AUROC)", ""] + _table(group, IMAGE_COLUMNS, IMAGE_RANKED_BY, references)
        lines.append("")
    else:
        lines += [f"{IMAGE_METRICS_UNDEFINED.capitalize()} on this track; pixel false "
                  "positives are counted over the normal pixels of the defect images.", ""]
    lines += [f"{level}# Pixel level (ranked by PRO@30%)", ""] + _table(group, PIXEL_COLUMNS, PIXEL_RANKED_BY, references)
    lines += ["", f"{level}# Latency (batch 1, 256x256, host to device and back)", "",
              "As each submitter measured it on their hardware: reported, not checked (validation cannot re-time "
              "another machine).", ""] + _latency_table(group, references)
    return lines + [""]


def render_readme(entries: list[dict], annotations: str | Path) -> str:
    """The board's README; ``annotations`` holds the published splits' audits."""
    lines = ["# Leaderboard", "",
             "Generated by `impeller-bench leaderboard build` from `submissions/`; do not edit by hand",
             "(`impeller-bench leaderboard build --check` fails when this file is out of date).",
             "Every number of every entry is recomputed from its committed predictions by",
             "`impeller-bench leaderboard validate`. Percent; 95% bootstrap intervals in brackets. A rank is",
             "1 + the number of entries that beat this one: whose paired 95% interval of the difference (the same",
             "resamples of the split's photo groups, or test images, for both) lies above zero; entries that",
             "nothing beats share rank 1, and ranks need not follow the point values. Under each table: the",
             "difference the split detects with 80% power for its median pair of entries. Rows in *italics* are",
             "published figures: on the impeller splits with good test",
             "images the paper's (Lim, Suh and Hur 2025, Tables 1-2, their split with their masks and a GPU), on",
             "`mtd` DifferNet's (Rudolph et al. 2021, their image-by-image split), none on the localization track:",
             "shown for reference, not comparable number for number, and not ranked.", ""]
    audit = lambda split: published.load_audit(annotations, split)
    groups = by_split(entries)
    for split, group in groups.items():
        if published.status(split) != published.DEPRECATED:
            lines += _split_section(split, group, "##", audit(split), annotations)
    deprecated = [split for split in groups if published.status(split) == published.DEPRECATED]
    if deprecated:
        lines += ["## Deprecated: source shortcut", "",
                  "Kept for reproducibility only; do not compare methods on these numbers. These splits take no",
                  "new entries."]
        for split in deprecated:
            lines += ["", f"Why `{split}` is deprecated: {published.deprecation_reason(split)}.", ""]
            lines += _split_section(split, groups[split], "###", audit(split), annotations)
    lines += [f"![Latency against pixel PRO on {plotted_split(entries)}]({LATENCY_PLOT})", "",
              f"Anomaly maps on a few defective test images: `{OVERLAY_PLOT}`, written here by `impeller-bench",
              "leaderboard build` from the built splits (not committed: it shows the sources' photos and masks).", "",
              "## Entries", "", "| Entry | Model | Split | Backbone | Hardware | Command | Notes |",
              "|---|---|---|---|---|---|---|"]
    for entry in sorted(entries, key=lambda e: e["name"]):
        lines.append(f"| {code_cell(entry['name'])} | {cell(entry_label(entry))} | {cell(entry['dataset']['split'])} "
                     f"| {cell(entry['backbone']['name'] or '-')} | {cell(entry['hardware'])} "
                     f"| {code_cell(entry['command'])} | {cell(entry.get('notes', ''))} |")
    lines += ["", "Submit an entry: see the project README, section *Leaderboard*.", ""]
    return "\n".join(lines)


def render_csv(entries: list[dict], annotations: str | Path) -> str:
    columns = ["split", "name", "method", "rank_image", "rank_pixel"]
    columns += [c for m in METRICS for c in (m, f"{m}_ci_low", f"{m}_ci_high")]
    columns += ["latency_median_ms", "latency_p90_ms", "latency_device", "hardware", "manifest_sha256", "maps_sha256"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for split, group in by_split(entries).items():
        pixel_rank = ranks(group, PIXEL_RANKED_BY)
        image_rank = ranks(group, IMAGE_RANKED_BY) if image_level(annotations, split, group) else [""] * len(group)
        for entry, r_image, r_pixel in sorted(zip(group, image_rank, pixel_rank), key=lambda t: t[0]["name"]):
            latency = entry["latency"] or {}
            row = [split, entry["name"], entry["method"], r_image, r_pixel]
            row += ["" if entry["metrics"][m] is None else repr(v)
                    for m in METRICS for v in (entry["metrics"][m], *(entry["ci95"][m] or (None, None)))]
            row += [latency.get("median_ms", ""), latency.get("p90_ms", ""), (latency.get("protocol") or {}).get("device", ""),
                    entry["hardware"], entry["dataset"]["manifest_sha256"], maps_digest(entry["_folder"]) or ""]
            writer.writerow(row)
    return buffer.getvalue()


def plotted_split(entries: list[dict]) -> str | None:
    """The split the latency plot shows: the main one where it has entries, else the first current one (PRO on
    different tracks is not one scale)."""
    splits = list(by_split(current_entries(entries)))
    return splits[0] if splits else None
