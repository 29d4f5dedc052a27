"""Draw carried masks for a look: annotated originals beside their registered variants, outlines on both.

    python benchmarks/carried_masks_figure.py --dataset data/kaggle-only \\
        --annotated sources/casting-supervisely --out carried_masks.png [--count 8] [--seed 0]

For a seeded sample of test defects of a split built with ``--mask-source``
(e.g. ``impeller-bench build-split --kaggle ... --mask-source ... --out data/kaggle-only``), each row shows the annotated original with its mask
outline, the variant with the carried mask outline, and a close-up of both
around the largest defect region, plus the registration figures from the
manifest. The figure shows the sources' photos (CC BY-NC-ND): it is for your
own checkout, not for the repository.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from impeller_bench.common.imageio import read_gray, read_mask
from impeller_bench.data.sources.supervisely import read as read_supervisely


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, type=Path)
    parser.add_argument("--annotated", required=True, type=Path, help="the Supervisely folder the masks came from")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    manifest = json.loads((args.dataset / "manifest.json").read_text())
    carried = [e for e in manifest["entries"] if e.get("mask_source")]
    if not carried:
        print(f"{args.dataset}: no carried masks (build it with --mask-source)", file=sys.stderr)
        return 2
    rng = np.random.default_rng(args.seed)
    sample = [carried[k] for k in sorted(rng.choice(len(carried), min(args.count, len(carried)), replace=False))]
    records = {r.relpath: r for r in read_supervisely(args.annotated)[0]}
    figure, grid = plt.subplots(len(sample), 4, figsize=(10, 2.6 * len(sample)), squeeze=False)
    for row, entry in zip(grid, sample):
        origin = entry["mask_source"]
        original = records[origin["source_path"]]
        image, mask = read_gray(args.dataset / entry["file"]), read_mask(args.dataset / entry["mask"])
        source = read_gray(original.path)
        labels, _ = ndi.label(mask)
        largest = np.argmax(np.bincount(labels.ravel())[1:]) + 1
        cy, cx = (int(v) for v in np.argwhere(labels == largest).mean(axis=0))
        # The same spot in the original, through the recorded map (scaled from the 300 px variant to this size).
        scale = 300 / image.shape[0]
        a = np.asarray(origin["matrix"]).reshape(2, 3)
        oy, ox = a @ np.array([(cy + 0.5) * scale - 0.5, (cx + 0.5) * scale - 0.5, 1.0])
        half_v, half_o = 20, int(20 * scale * np.sqrt(abs(np.linalg.det(a[:, :2]))))
        panels = [
            (source, original.defect_mask, f"{origin['source_path'].split('/')[-1]} (original)", None),
            (image, mask, f"{entry['source_path'].split('/')[-1]} (carried)", None),
            (source, original.defect_mask, "original, close-up", (oy, ox, half_o)),
            (image, mask, f"variant, close-up\ncorr {origin['correlation']:.4f}, shift {origin['residual_shift']:.2f} px",
             (cy, cx, half_v)),
        ]
        for axes, (picture, outline, title, window) in zip(row, panels):
            axes.imshow(picture, cmap="gray")
            axes.contour(outline, levels=[0.5], colors="lime", linewidths=0.8)
            if window is not None:
                y, x, h = window
                axes.set_xlim(x - h, x + h)
                axes.set_ylim(y + h, y - h)
            axes.set_title(title, fontsize=7)
            axes.axis("off")
    figure.tight_layout()
    figure.savefig(args.out, dpi=100)
    print(f"wrote {args.out}: {len(sample)} of {len(carried)} carried masks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
