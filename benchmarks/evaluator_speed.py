"""Speed, memory and agreement of the reference evaluator against anomalib 2.x.

    python benchmarks/evaluator_speed.py [--anomalib-python PATH] [--images 200] [--size 512]

Makes 200 test images of 512x512 (100 with defect masks: random blobs of many
sizes; maps: smoothed noise plus a signal on the defects, float32), then, each
in its own process so that peak memory is the process's own:

- ours: all eight metrics (image AUROC, AUPRC, F1-max with precision and
  recall from the maps' maxima; pixel AUROC, PRO@30%, F1-max);
- anomalib: its AUPRO (fpr_limit 0.3), AUROC and F1Max on the pixels, the same arrays.

anomalib is not a dependency: install it into a separate virtual environment
(torchvision must import there: on x86_64, torch==2.14.1 with torchvision==0.29.1)
and pass that environment's python.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

OURS = r"""
import json, resource, sys, time
import numpy as np
data = np.load(sys.argv[1])
masks, maps = data["masks"].astype(bool), data["maps"]
from impeller_bench import metrics
start = time.perf_counter()
labels = masks.reshape(len(masks), -1).any(axis=1)
scores = maps.reshape(len(maps), -1).max(axis=1)
f1 = metrics.f1_max(labels, scores)
curve = metrics.PixelSet.from_maps(list(masks), list(maps)).curve()
pixel_f1 = curve.f1_max()
result = {"image_auroc": metrics.image_auroc(labels, scores), "image_auprc": metrics.image_auprc(labels, scores),
          "image_f1_max": f1.f1, "image_precision": f1.precision, "image_recall": f1.recall,
          "pixel_auroc": curve.auroc(), "pixel_pro_30": curve.pro_auc(0.3), "pixel_f1_max": pixel_f1.f1}
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "metrics": result}))
"""

ANOMALIB = r"""
import json, resource, sys, time, warnings
warnings.filterwarnings("ignore")
import numpy as np, torch
torch.set_num_threads(int(sys.argv[2]))
data = np.load(sys.argv[1])
masks, maps = torch.from_numpy(data["masks"].astype(np.int64)), torch.from_numpy(data["maps"])
from anomalib.metrics.aupro import _AUPRO
from anomalib.metrics.auroc import _AUROC
from anomalib.metrics.f1_score import _F1Max
start = time.perf_counter()
out = {}
for name, metric in (("pixel_pro_30", _AUPRO(fpr_limit=0.3)), ("pixel_auroc", _AUROC()), ("pixel_f1_max", _F1Max())):
    t = time.perf_counter()
    metric.update(maps, masks)
    out[name] = float(metric.compute())
    out[name + "_seconds"] = time.perf_counter() - t
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "metrics": out}))
"""


def make_arrays(images: int, size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    masks = np.zeros((images, size, size), np.uint8)
    maps = np.empty((images, size, size), np.float32)
    for k in range(images):
        if k % 2 == 0:
            for _ in range(rng.integers(1, 12)):
                r = rng.uniform(1, size / 16)
                cy, cx = rng.uniform(0, size, 2)
                yy, xx = np.ogrid[:size, :size]
                masks[k] |= ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r)
        noise = ndi.gaussian_filter(rng.normal(size=(size, size)).astype(np.float32), 4)
        maps[k] = noise / noise.std() + 2.0 * ndi.gaussian_filter(masks[k].astype(np.float32), 3)
    return masks, maps


def run(python: str, code: str, *args: str) -> dict:
    done = subprocess.run([python, "-c", code, *args], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--anomalib-python", help="python of a virtual environment with anomalib 2.x")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for anomalib")
    parser.add_argument("--float16", action="store_true", help="round the maps to float16 (many exact ties)")
    args = parser.parse_args()
    masks, maps = make_arrays(args.images, args.size)
    if args.float16:
        maps = maps.astype(np.float16).astype(np.float32)
    print(f"{args.images} images of {args.size}x{args.size}: {masks.size / 1e6:.1f} M pixels, "
          f"{int(masks.any(axis=(1, 2)).sum())} with defects, {len(np.unique(maps))} distinct scores")
    with tempfile.TemporaryDirectory() as tmp:
        arrays = Path(tmp) / "arrays.npz"
        np.savez(arrays, masks=masks, maps=maps)
        ours = run(sys.executable, OURS, str(arrays))
        print(f"ours: all eight metrics in {ours['seconds']:.2f} s, peak memory {ours['peak_rss_mb']:.0f} MB")
        for name, value in ours["metrics"].items():
            print(f"  {name:<16} {value:.9f}")
        if not args.anomalib_python:
            print("(no --anomalib-python: no comparison)")
            return
        theirs = run(args.anomalib_python, ANOMALIB, str(arrays), str(args.threads))
    print(f"anomalib: AUPRO + AUROC + F1Max in {theirs['seconds']:.2f} s "
          f"(AUPRO {theirs['metrics']['pixel_pro_30_seconds']:.2f} s, AUROC {theirs['metrics']['pixel_auroc_seconds']:.2f} s, "
          f"F1Max {theirs['metrics']['pixel_f1_max_seconds']:.2f} s), peak memory {theirs['peak_rss_mb']:.0f} MB")
    print(f"speed-up: {theirs['seconds'] / ours['seconds']:.1f}x (ours computes five image metrics more)")
    for name in ("pixel_auroc", "pixel_pro_30", "pixel_f1_max"):
        a, b = ours["metrics"][name], theirs["metrics"][name]
        print(f"  {name:<16} ours {a:.9f}  anomalib {b:.9f}  |difference| {abs(a - b):.2e}")


if __name__ == "__main__":
    main()
