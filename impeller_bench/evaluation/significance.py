"""Paired tests between methods scored on one split: ranks with ties and the smallest detectable difference.

The evaluator's bootstrap is seeded and its resamples depend on the split alone (its test images or photo
groups, and their labels), so two entries' bootstrap replicates on one split come from the same resamples:
their replicate-by-replicate difference is a paired bootstrap of the difference between the two methods.
Every metric here is better when higher.

- B *beats* A when the 95% percentile interval of the paired replicates of B - A lies above zero.
- A method's rank is 1 + the number of methods that beat it, so methods that nothing beats share rank 1 and
  a rank says only what the split can tell apart (not the order of the point values).
- The *detectable difference* of a pair is the true difference that a paired test at the 5% level detects
  with 80% probability, (z_0.975 + z_0.80) x the bootstrap standard deviation of the pair's difference
  (the normal approximation); a track's is the median over its pairs of entries.
"""
from __future__ import annotations

from itertools import combinations

import numpy as np
from scipy.stats import norm

LEVEL = 0.05
POWER = 0.80


def percentile_interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The (1 - level) percentile interval of bootstrap replicates."""
    low, high = np.percentile(values, [100 * level / 2, 100 * (1 - level / 2)])
    return float(low), float(high)


def difference_interval(a: np.ndarray, b: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The (1 - level) percentile interval of B - A over paired bootstrap replicates ``a`` and ``b``."""
    a, b = _paired(a, b)
    return percentile_interval(b - a, level)


def beats(b: np.ndarray, a: np.ndarray, level: float = LEVEL) -> bool:
    """Whether B is better than A: the interval of B - A excludes zero from above."""
    return difference_interval(a, b, level)[0] > 0


def verdict(a: np.ndarray, b: np.ndarray, level: float = LEVEL) -> str:
    """'B better', 'A better' or 'no clear difference', by the paired interval of B - A."""
    low, high = difference_interval(a, b, level)
    return "B better" if low > 0 else "A better" if high < 0 else "no clear difference"


def tied_ranks(replicates: list[np.ndarray], level: float = LEVEL) -> list[int]:
    """Each method's rank: 1 + the number of the others that beat it (paired replicates of one metric)."""
    return [1 + sum(beats(other, mine, level) for j, other in enumerate(replicates) if j != i)
            for i, mine in enumerate(replicates)]


def detectable_difference(a: np.ndarray, b: np.ndarray, level: float = LEVEL, power: float = POWER) -> float:
    """The true difference B - A that a paired test at ``level`` detects with probability ``power``."""
    a, b = _paired(a, b)
    return float((norm.ppf(1 - level / 2) + norm.ppf(power)) * np.std(b - a, ddof=1))


def track_detectable_difference(replicates: list[np.ndarray], level: float = LEVEL,
                                power: float = POWER) -> float | None:
    """The median of :func:`detectable_difference` over every pair of methods (None for fewer than two)."""
    pairs = [detectable_difference(a, b, level, power) for a, b in combinations(replicates, 2)]
    return float(np.median(pairs)) if pairs else None


def seeds_and_groups_interval(a: np.ndarray, b: np.ndarray, seed: int = 0,
                              level: float = LEVEL) -> tuple[float, float]:
    """The (1 - level) interval of the mean over training seeds of B - A, resampling photo groups and seeds.

    ``a`` and ``b`` are seeds x replicates: row k holds the bootstrap replicates of the fit with training
    seed k (the same resampled groups in every column j, for every row of both). Replicate j of the
    difference is the mean of B - A over a resample of the seeds (drawn with replacement, seeded), taken
    at groups resample j: both sources of variation, the test set's and the training's, in one interval."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two seeds x replicates tables of one shape, got {a.shape} and {b.shape}")
    return seeds_and_groups_mean_interval(b - a, seed, level)


def seeds_and_groups_mean_interval(values: np.ndarray, seed: int = 0, level: float = LEVEL) -> tuple[float, float]:
    """The (1 - level) interval of the mean over training seeds of one seeds x replicates table (row k: the
    bootstrap replicates of seed k's fit), resampling photo groups (the columns) and seeds (seeded)."""
    values = np.asarray(values, np.float64)
    if values.ndim != 2:
        raise ValueError(f"expected a seeds x replicates table, got shape {values.shape}")
    seeds, replicates = values.shape
    picks = np.random.default_rng(seed).integers(0, seeds, (seeds, replicates))
    return percentile_interval(np.take_along_axis(values, picks, axis=0).mean(axis=0), level)


def _paired(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"paired replicates must be two equally long vectors, got shapes {a.shape} and {b.shape}")
    return a, b
