"""The board's plots (latency against PRO, overlays of the maps), with the fingerprints of their inputs."""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np

from ..common.files import atomic_write_bytes
from ..evaluation.evaluate import resize_map
from ..evaluation.predictions import load_predictions
from .board import (
    PIXEL_RANKED_BY,
    by_split,
    current_entries,
    entry_label,
    plot_text,
    plotted_split,
    ranked,
)
from .submission import PREDICTIONS_DIR

FINGERPRINT_KEY = "impeller-bench-input-sha256"


PLOT_FORMAT = 5  # bump when a plot's drawing changes, so that --check asks for a rebuild


OVERLAY_IMAGES = 4


OVERLAY_ENTRIES = 8


def input_fingerprint(kind: str, payload) -> str:
    text = json.dumps({"plot": kind, "format": PLOT_FORMAT, "data": payload}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def latency_payload(entries: list[dict]) -> list:
    split = plotted_split(entries)
    return [[e["name"], plot_text(entry_label(e)), e["latency"]["median_ms"], e["metrics"]["pixel_pro_30"], e["ci95"]["pixel_pro_30"]]
            for e in sorted(current_entries(entries), key=lambda e: e["name"])
            if e["latency"] and e["dataset"]["split"] == split]


def overlay_choice(annotations: Path, split: str, count: int = OVERLAY_IMAGES) -> list[str]:
    """Defective test images spread over defect sizes: the smallest, the largest and evenly between."""
    manifest = json.loads((annotations / f"{split}.json").read_text())
    defects = sorted((e for e in manifest["entries"] if e["split"] == "test" and e["label"] == "defect"),
                     key=lambda e: (e["defect_area"], e["id"]))
    if not defects:
        return []
    picks = np.unique(np.linspace(0, len(defects) - 1, count).round().astype(int))
    return [defects[k]["id"] for k in picks]


def _overlay_entries(group: list[dict]) -> list[dict]:
    return [entry for _, entry in ranked(group, PIXEL_RANKED_BY)][:OVERLAY_ENTRIES]


def _save_png(figure, path: Path, fingerprint: str) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, metadata={"Software": None, FINGERPRINT_KEY: fingerprint})
    atomic_write_bytes(path, buffer.getvalue())


def png_fingerprint(path: Path) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.text.get(FINGERPRINT_KEY)
    except (OSError, ValueError):
        return None


def draw_latency_plot(entries: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    payload = latency_payload(entries)
    figure, axes = plt.subplots(figsize=(7, 4.5))
    log_latency = np.log([row[2] for row in payload])
    for k, (name, label, median_ms, pro, (low, high)) in enumerate(payload):
        axes.errorbar([median_ms], [100 * pro], yerr=[[100 * (pro - low)], [100 * (high - pro)]], fmt="o", capsize=3)
        # Of two points close in latency, the higher one is labelled above and the lower one below.
        others = [j for j in range(len(payload)) if j != k]
        nearest = min(others, key=lambda j: abs(log_latency[j] - log_latency[k])) if others else k
        above = pro >= payload[nearest][3]
        axes.annotate(f"{label} ({name})", (median_ms, 100 * pro), textcoords="offset points",
                      xytext=(6, 5 if above else -11), fontsize=7)
    values = [row[2] for row in payload]
    if values and max(values) / min(values) > 20:
        axes.set_xscale("log")
        axes.set_xlim(min(values) / 1.5, max(values) * 8)  # room for the rightmost label
    if not payload:
        axes.text(0.5, 0.5, "no entry of this split claims a latency", ha="center", va="center",
                  transform=axes.transAxes)
    axes.set_xlabel("latency per image, median (ms; batch 1, 256x256, each entry's own hardware)")
    axes.set_ylabel("pixel PRO@30% (%), 95% interval")
    axes.set_title(f"Latency against localisation on {plotted_split(entries)} (up and left is better)")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    _save_png(figure, path, input_fingerprint("latency", payload))
    plt.close(figure)


def draw_overlays(entries: list[dict], annotations: Path, datasets: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, payload = [], {}
    for split, group in by_split(current_entries(entries)).items():
        samples = {s.id: s for s in datasets[split].test}
        shown = _overlay_entries(group)
        payload[split] = {"images": overlay_choice(annotations, split), "entries": [e["name"] for e in shown]}
        rows += [(samples[image_id], shown) for image_id in payload[split]["images"]]
    if not rows:
        return  # no current split with entries: nothing to draw
    columns = 1 + max(len(shown) for _, shown in rows)
    figure, grid = plt.subplots(len(rows), columns, figsize=(1.7 * columns, 1.8 * len(rows)), squeeze=False)
    for axes in grid.ravel():
        axes.axis("off")
    for r, (sample, shown) in enumerate(rows):
        image, mask = sample.load_image(), sample.load_mask()
        grid[r, 0].imshow(image, cmap="gray")
        grid[r, 0].contour(mask, levels=[0.5], colors="lime", linewidths=0.7)
        grid[r, 0].set_title(sample.id.split("/")[-1], fontsize=6)
        for c, entry in enumerate(shown, start=1):
            predictions = load_predictions(entry["_folder"] / PREDICTIONS_DIR)
            heat = resize_map(predictions.load_map(sample.id), mask.shape)
            low, high = np.percentile(heat, [1, 99.9])
            grid[r, c].imshow(image, cmap="gray")
            grid[r, c].imshow(np.clip((heat - low) / max(high - low, 1e-12), 0, 1), cmap="inferno", alpha=0.55)
            grid[r, c].contour(mask, levels=[0.5], colors="lime", linewidths=0.7)
            if r == 0:
                grid[r, c].set_title(plot_text(f"{entry_label(entry)}\n{entry['name']}"), fontsize=6)
    figure.suptitle("Anomaly maps, each scaled to its own range;\ntrue defects outlined in green", fontsize=8)
    figure.tight_layout()
    _save_png(figure, path, input_fingerprint("overlays", payload))
    plt.close(figure)
