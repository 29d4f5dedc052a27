"""Where the same-photo rule of registration.py comes from: the two modes of registered pairs on real photos.

    python benchmarks/registration_rule.py --annotated ../shared/data/casting-supervisely \\
        --kaggle ../shared/data/casting-kaggle-300 [--photos 20] [--candidates 12] [--seed 0]

For a seeded sample of annotated photos, the Kaggle images of the same label
are ranked by fingerprint match score and the best ``--candidates`` are
registered. Variants of one photo and other parts fall into two modes; the
script prints both (correlation, fine-detail correlation, residual grey
levels), how many pairs fall between them, and how the rule
(``registration.is_same_photo``) splits them.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from impeller_bench.common.imageio import read_gray
from impeller_bench.data import grouping, registration
from impeller_bench.data.sources import kaggle, supervisely


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotated", required=True)
    parser.add_argument("--kaggle", required=True)
    parser.add_argument("--photos", type=int, default=20)
    parser.add_argument("--candidates", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    annotated = supervisely.read(args.annotated)[0]
    pool = kaggle.read(args.kaggle)[0]
    fingerprints = {r.relpath: grouping.fingerprint(read_gray(r.path)) for r in pool}
    rng = np.random.default_rng(args.seed)
    rows = []
    for original in [annotated[k] for k in rng.choice(len(annotated), args.photos, replace=False)]:
        source = registration.Prepared(read_gray(original.path))
        same_label = [r for r in pool if r.label == original.label]
        scores = [grouping.match_score(source.fingerprint, fingerprints[r.relpath]) for r in same_label]
        for k in np.argsort(scores)[::-1][: args.candidates]:
            candidate = same_label[k]
            fit = registration.register(source, registration.Prepared(read_gray(candidate.path), fingerprints[candidate.relpath]))
            rows.append((fit.correlation, fit.detail_correlation, fit.residual_rms, registration.is_same_photo(fit)))
    table = np.array([r[:3] for r in rows])
    same = np.array([r[3] for r in rows])
    print(f"{len(rows)} registrations of {args.photos} annotated photos onto their best {args.candidates} Kaggle "
          f"candidates ({time.perf_counter() - started:.0f} s)")
    for name, chosen in (("one photo (rule)", same), ("other photos", ~same)):
        if chosen.any():
            c, d, rms = table[chosen].T
            print(f"  {name:<17} {chosen.sum():5d} pairs: correlation {c.min():.4f}-{c.max():.4f} (median {np.median(c):.4f}), "
                  f"fine detail {d.min():.3f}-{d.max():.3f}, residual {np.median(rms):.2f} grey levels (median)")
    between = ((table[:, 0] > 0.99) & (table[:, 0] < registration.SAME_PHOTO_MIN_CORRELATION)).sum()
    print(f"  pairs with correlation between 0.99 and the rule's {registration.SAME_PHOTO_MIN_CORRELATION}: {between}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
