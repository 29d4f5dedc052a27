"""A sweep's picture: per dataset, each method (and options) with its seeds as dots and the mean over seeds with
its 95% interval (photo groups and seeds resampled) as a bar, one panel per headline metric."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..common.files import atomic_write_bytes

SHOWN = ("image_auroc", "pixel_auroc", "pixel_pro_30")  # the panels, and the printed summary's columns


def summary_plots(out, table: pd.DataFrame, summary: pd.DataFrame) -> list[Path]:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for dataset, rows in summary.groupby("dataset", sort=True):
        metrics = [m for m in SHOWN if m in rows and rows[m].notna().any()]
        if not metrics:
            continue
        labels = [m if o == "-" else f"{m} {o}" for m, o in zip(rows["method"], rows["options"])]
        figure, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 0.45 * len(rows) + 1.6),
                                    squeeze=False)
        for axis, metric in zip(axes[0], metrics):
            for y, (_, row) in enumerate(rows.iterrows()):
                seeds = table[(table.dataset == dataset) & (table.method == row["method"])
                              & (table.options == row["options"]) & (table.status == "done")][metric]
                axis.scatter(100 * seeds, [y] * len(seeds), s=14, color="0.55", zorder=2)
                if pd.notna(row.get(metric)):
                    low, high = 100 * row[f"{metric}_low"], 100 * row[f"{metric}_high"]
                    axis.plot([low, high], [y, y], color="tab:blue", linewidth=3, alpha=0.6, zorder=1)
                    axis.scatter([100 * row[metric]], [y], marker="|", s=160, color="tab:blue", zorder=3)
            axis.set_yticks(range(len(rows)), labels if axis is axes[0][0] else [""] * len(rows))
            axis.set_xlabel(f"{metric} (%)")
            axis.grid(axis="x", alpha=0.3)
            axis.invert_yaxis()
        figure.suptitle(f"{dataset}: seeds (dots), mean over seeds and its 95% interval (bar)", fontsize=10)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=110)
        plt.close(figure)
        path = Path(out) / "plots" / f"{dataset}.png"
        atomic_write_bytes(path, buffer.getvalue())
        written.append(path)
    return written
