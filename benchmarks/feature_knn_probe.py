"""How separable is a split's test set for a plain pretrained-feature detector? A diagnostic probe.

    python benchmarks/feature_knn_probe.py --dataset DIR [--size 256] [--stages stage3 stage4] [--bank 50000]

Patch features of EfficientNet-Lite0 (ImageNet) at the given stages, upsampled
to the first stage's grid and averaged over 3 x 3 neighbourhoods; a memory
bank of a seeded random subset of the training patches; each test image's
score is the largest nearest-neighbour distance of its patches. Not one of
the benchmark's methods (PatchCore, with its coreset and reweighting, is the
baselines issue's): a probe for what a split asks of a detector. Prints image
AUROC overall and with the good test images of each source alone.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from impeller_bench import metrics
from impeller_bench.backbones import imagenet_tensor, load_backbone
from impeller_bench.data import load_dataset


def patch_features(backbone, samples, size, stages):
    out = []
    for start in range(0, len(samples), 16):
        x = imagenet_tensor([s.load_image() for s in samples[start:start + 16]], size)
        with torch.no_grad():
            maps = backbone.features(x, stages)
        grid = maps[stages[0]].shape[-2:]
        stacked = torch.cat([F.interpolate(maps[s], size=grid, mode="bilinear", align_corners=False) for s in stages], 1)
        out.append(F.avg_pool2d(stacked, 3, stride=1, padding=1))
    return torch.cat(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--stages", nargs="+", default=["stage3", "stage4"])
    parser.add_argument("--bank", type=int, default=50_000, help="training patches kept (seeded random subset)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    dataset = load_dataset(args.dataset)
    backbone = load_backbone().eval()
    train = patch_features(backbone, dataset.train, args.size, args.stages)
    bank = train.permute(0, 2, 3, 1).reshape(-1, train.shape[1])
    bank = bank[torch.randperm(len(bank), generator=torch.Generator().manual_seed(args.seed))[: args.bank]]
    scores = []
    for start in range(0, len(dataset.test), 16):
        test = patch_features(backbone, dataset.test[start:start + 16], args.size, args.stages)
        for patches in test.permute(0, 2, 3, 1).reshape(len(test), -1, test.shape[1]):
            scores.append(float(torch.cdist(patches, bank).min(dim=1).values.max()))
    labels = np.array([s.is_defect for s in dataset.test])
    scores = np.array(scores)
    sources = np.array([s.source or "" for s in dataset.test])
    print(f"{args.dataset}: {len(dataset.train)} train, {len(labels)} test, features {args.stages} at {args.size} px")
    print(f"  image AUROC, all test images: {metrics.image_auroc(labels, scores):.4f}")
    for source in sorted(set(sources[~labels])):
        chosen = labels | (sources == source)
        print(f"  image AUROC, defects vs the {(~labels & chosen).sum()} good images from {source or '?'}: "
              f"{metrics.image_auroc(labels[chosen], scores[chosen]):.4f}  (mean good score {scores[~labels & chosen].mean():.2f})")
    print(f"  mean defect score {scores[labels].mean():.2f}; {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
