"""Speed, memory and agreement of the reference evaluator against anomalib 2.x, and the bootstrap's memory.

    python benchmarks/evaluator_speed.py [--anomalib-python PATH] [--case blobs|discs] [--images N] [--size 512]
    python benchmarks/evaluator_speed.py --bootstrap 1000 [--images 240] [--size 512]

Cases (maps: smoothed noise plus a signal on the defects, float32):
- blobs (default 200 images): half with defect masks, 1-11 random discs of many sizes;
- discs (default 60 images, the field report's input): half with 1-3 discs of radius 2-25.
Then, each in its own process so that peak memory is the process's own:

- ours: all eight metrics (image AUROC, AUPRC, F1-max with precision and
  recall from the maps' maxima; pixel AUROC, PRO@30%, F1-max from one
  ``pixel_metrics`` pass), and the shared pixel path alone;
- ours, one by one: ``pixel_auroc``, ``pro_auc``, ``pixel_f1_max`` called separately;
- anomalib: its AUPRO (fpr_limit 0.3), AUROC and F1Max on the pixels, the same arrays.

With --bootstrap N: the field report's memory case (a quarter of the images good,
the rest with one 87 x 87 defect square, every score distinct), peak memory and
time of the evaluation alone and with N bootstrap resamples.

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
masks, maps = list(masks), list(maps)
start = time.perf_counter()
labels = np.array([m.any() for m in masks])
scores = np.array([a.max() for a in maps])
f1 = metrics.f1_max(labels, scores)
image_seconds = time.perf_counter() - start
pixel = metrics.pixel_metrics(masks, maps, 0.3)
seconds = time.perf_counter() - start
result = {"image_auroc": metrics.image_auroc(labels, scores), "image_auprc": metrics.image_auprc(labels, scores),
          "image_f1_max": f1.f1, "image_precision": f1.precision, "image_recall": f1.recall,
          "pixel_auroc": pixel["pixel_auroc"], "pixel_pro_30": pixel["pixel_pro"], "pixel_f1_max": pixel["pixel_f1_max"].f1}
t = time.perf_counter()
metrics.pixel_auroc(masks, maps), metrics.pro_auc(masks, maps, 0.3), metrics.pixel_f1_max(masks, maps)
one_by_one = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "pixel_seconds": seconds - image_seconds, "one_by_one_seconds": one_by_one,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "metrics": result}))
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


BOOTSTRAP = r"""
import json, resource, sys, time
import numpy as np
from impeller_bench import metrics
from impeller_bench.evaluation.evaluate import EvaluationInputs, bootstrap, point_metrics
data = np.load(sys.argv[1])
masks, maps = list(data["masks"].astype(bool)), list(data["maps"])
labels = np.array([m.any() for m in masks])
start = time.perf_counter()
inputs = EvaluationInputs([str(k) for k in range(len(masks))], labels, np.array([a.max() for a in maps], np.float64),
                          metrics.PixelSet.from_maps(masks, maps))
point = point_metrics(inputs)
plain = time.perf_counter() - start
plain_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
samples = int(sys.argv[2])
if samples:
    bootstrap([inputs], samples, seed=0)
print(json.dumps({"plain_seconds": plain, "plain_peak_rss_mb": plain_peak, "seconds": time.perf_counter() - start,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def discs(rng, size: int, count_range, radius_range) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    yy, xx = np.ogrid[:size, :size]
    for _ in range(rng.integers(*count_range)):
        r = rng.uniform(*radius_range)
        cy, cx = rng.uniform(0, size, 2)
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    return mask


def make_arrays(images: int, size: int, case: str = "blobs", seed: int = 0):
    rng = np.random.default_rng(seed)
    masks = np.zeros((images, size, size), np.uint8)
    maps = np.empty((images, size, size), np.float32)
    for k in range(images):
        if case == "squares":
            if k >= images // 4:
                y, x = rng.integers(0, size - 87, 2)
                masks[k, y:y + 87, x:x + 87] = 1
        elif k % 2 == 0:
            masks[k] = discs(rng, size, (1, 12), (1, size / 16)) if case == "blobs" else discs(rng, size, (1, 4), (2, 25))
        noise = ndi.gaussian_filter(rng.normal(size=(size, size)).astype(np.float32), 4)
        maps[k] = noise / noise.std() + 2.0 * ndi.gaussian_filter(masks[k].astype(np.float32), 3)
    return masks, maps


def run(python: str, code: str, *args: str) -> dict:
    done = subprocess.run([python, "-c", code, *args], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--anomalib-python", help="python of a virtual environment with anomalib 2.x")
    parser.add_argument("--case", choices=["blobs", "discs"], default="blobs")
    parser.add_argument("--images", type=int, help="test images (default: 200 blobs, 60 discs, 240 with --bootstrap)")
    parser.add_argument("--bootstrap", type=int, help="measure the bootstrap's memory and time with this many resamples")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for anomalib")
    parser.add_argument("--float16", action="store_true", help="round the maps to float16 (many exact ties)")
    args = parser.parse_args()
    if args.bootstrap is not None:
        measure_bootstrap(args.images or 240, args.size, args.bootstrap)
        return
    images = args.images or (200 if args.case == "blobs" else 60)
    masks, maps = make_arrays(images, args.size, args.case)
    if args.float16:
        maps = maps.astype(np.float16).astype(np.float32)
    print(f"{images} images of {args.size}x{args.size}: {masks.size / 1e6:.1f} M pixels, "
          f"{int(masks.any(axis=(1, 2)).sum())} with defects, {len(np.unique(maps))} distinct scores")
    with tempfile.TemporaryDirectory() as tmp:
        arrays = Path(tmp) / "arrays.npz"
        np.savez(arrays, masks=masks, maps=maps)
        ours = run(sys.executable, OURS, str(arrays))
        print(f"ours: all eight metrics in {ours['seconds']:.2f} s (the shared pixel path {ours['pixel_seconds']:.2f} s; "
              f"the three pixel functions one by one {ours['one_by_one_seconds']:.2f} s), "
              f"peak memory {ours['peak_rss_mb']:.0f} MB")
        for name, value in ours["metrics"].items():
            print(f"  {name:<16} {value:.9f}")
        if not args.anomalib_python:
            print("(no --anomalib-python: no comparison)")
            return
        theirs = run(args.anomalib_python, ANOMALIB, str(arrays), str(args.threads))
    print(f"anomalib: AUPRO + AUROC + F1Max in {theirs['seconds']:.2f} s "
          f"(AUPRO {theirs['metrics']['pixel_pro_30_seconds']:.2f} s, AUROC {theirs['metrics']['pixel_auroc_seconds']:.2f} s, "
          f"F1Max {theirs['metrics']['pixel_f1_max_seconds']:.2f} s), peak memory {theirs['peak_rss_mb']:.0f} MB")
    print(f"speed-up: {theirs['seconds'] / ours['seconds']:.1f}x (ours computes five image metrics more); "
          f"shared pixel path alone: {theirs['seconds'] / ours['pixel_seconds']:.1f}x")
    for name in ("pixel_auroc", "pixel_pro_30", "pixel_f1_max"):
        a, b = ours["metrics"][name], theirs["metrics"][name]
        print(f"  {name:<16} ours {a:.9f}  anomalib {b:.9f}  |difference| {abs(a - b):.2e}")


def measure_bootstrap(images: int, size: int, samples: int) -> None:
    masks, maps = make_arrays(images, size, "squares")
    positives = int(masks.sum())
    print(f"{images} images of {size}x{size} float32, {int(masks.any(axis=(1, 2)).sum())} with an 87x87 defect, "
          f"{len(np.unique(maps[masks.astype(bool)]))} distinct defect-pixel scores of {positives}")
    with tempfile.TemporaryDirectory() as tmp:
        arrays = Path(tmp) / "arrays.npz"
        np.savez(arrays, masks=masks, maps=maps)
        del masks, maps
        plain = run(sys.executable, BOOTSTRAP, str(arrays), "0")
        boot = run(sys.executable, BOOTSTRAP, str(arrays), str(samples))
    print(f"plain evaluation: {plain['seconds']:.1f} s, peak memory {plain['peak_rss_mb']:.0f} MB "
          f"(the arrays themselves included)")
    print(f"with --bootstrap {samples}: {boot['seconds']:.1f} s, peak memory {boot['peak_rss_mb']:.0f} MB "
          f"({boot['peak_rss_mb'] / plain['peak_rss_mb']:.2f}x the plain evaluation's)")


if __name__ == "__main__":
    main()
