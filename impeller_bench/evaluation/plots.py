"""Evaluation plots: ROC and precision-recall of image scores, pixel ROC, PRO curve (PNG)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402

from ..common import metrics  # noqa: E402
from ..common.files import atomic_write_bytes  # noqa: E402


def _save(fig, path: Path) -> None:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def evaluation_plots(inputs, out_dir: str | Path, title: str = "") -> list[Path]:
    """Write the curves of one evaluation; returns the files written."""
    out_dir = Path(out_dir)
    written = image_plots(inputs, out_dir, title) if inputs.image_level else []
    if inputs.pixels is not None:
        written += pixel_plots(inputs.pixels.curve(), out_dir, title)
    return written


def image_plots(inputs, out_dir: Path, title: str) -> list[Path]:
    """Image ROC and precision-recall curves (defined only with good and defect test images)."""
    written = []
    fpr, tpr, _ = roc_curve(inputs.labels, inputs.scores)
    auroc = metrics.image_auroc(inputs.labels, inputs.scores)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(fpr, tpr, label=f"AUROC {100 * auroc:.2f}%")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"Image ROC {title}".strip())
    ax.legend(loc="lower right")
    written.append(out_dir / "image_roc.png")
    _save(fig, written[-1])

    precision, recall, _ = precision_recall_curve(inputs.labels, inputs.scores)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.step(recall, precision, where="post", label=f"AUPRC {100 * metrics.image_auprc(inputs.labels, inputs.scores):.2f}%")
    ax.set(xlabel="recall", ylabel="precision", ylim=(0, 1.02), title=f"Image precision-recall {title}".strip())
    ax.legend(loc="lower left")
    written.append(out_dir / "image_pr.png")
    _save(fig, written[-1])
    return written


def pixel_plots(curve, out_dir: Path, title: str) -> list[Path]:
    """Pixel ROC and PRO curves of one pixel curve (:class:`impeller_bench.common.metrics.Curve`)."""
    written = []
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(np.r_[0, curve.fp_at / curve.n_neg, 1], np.r_[0, curve.tp / curve.n_pos, 1],
            label=f"AUROC {100 * curve.auroc():.2f}%")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"Pixel ROC {title}".strip())
    ax.legend(loc="lower right")
    written.append(out_dir / "pixel_roc.png")
    _save(fig, written[-1])

    fpr, pro = curve.pro_points()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(fpr, pro, label=f"PRO@30% {100 * curve.pro_auc(0.3):.2f}%")
    ax.axvline(0.3, ls=":", color="grey")
    ax.set(xlabel="false positive rate (pixels)", ylabel="per-region overlap", xlim=(0, 1), ylim=(0, 1.02),
           title=f"PRO curve {title}".strip())
    ax.legend(loc="lower right")
    written.append(out_dir / "pro_curve.png")
    _save(fig, written[-1])
    return written
