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

from impeller_bench.common.backbones import imagenet_tensor, load_backbone
from impeller_bench.data.dataset import load_dataset
from impeller_bench.evaluation.evaluate import (
    EvaluationInputs,
    breakdown,
    point_metrics,
)


def patch_features(backbone, samples, size, stages):
    chunks = [imagenet_tensor([s.load_image() for s in samples[k:k + 16]], size) for k in range(0, len(samples), 16)]
    with torch.no_grad():
        return torch.cat([backbone.patch_features(x, stages) for x in chunks])


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
    inputs = EvaluationInputs([s.id for s in dataset.test], labels, scores, None, sources=[s.source for s in dataset.test])
    print(f"{args.dataset}: {len(dataset.train)} train, {len(labels)} test, features {args.stages} at {args.size} px")
    print(f"  image AUROC, all test images: {point_metrics(inputs)['image_auroc']:.4f}")
    for name, row in breakdown(inputs).items():
        print(f"  image AUROC, {name} ({row['good_images']} good images): {row['image_auroc']:.4f}")
    for source in sorted({s.source or "?" for s in dataset.test}):
        chosen = np.array([(s.source or "?") == source for s in dataset.test])
        print(f"  mean score of {source}: good {scores[chosen & ~labels].mean():.2f}, defect "
              f"{scores[chosen & labels].mean() if (chosen & labels).any() else float('nan'):.2f}")
    print(f"  {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
