"""Paired tests between methods: the tie rule on constructed methods, the power estimate against a simulation."""
from __future__ import annotations

import numpy as np
import pytest

from impeller_bench.evaluation import significance


def bootstrap_means(per_unit: np.ndarray, samples: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap replicates of each row's mean over its units (columns), the same resamples for every row."""
    units = per_unit.shape[-1]
    picks = rng.integers(0, units, (samples, units))
    return per_unit[..., picks].mean(axis=-1)  # rows x samples


def test_interval_and_verdict_are_the_percentiles_of_the_paired_differences():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, 400)
    b = a + 0.5 + rng.normal(0, 0.1, 400)
    low, high = significance.difference_interval(a, b)
    assert (low, high) == tuple(np.percentile(b - a, [2.5, 97.5]))
    assert significance.verdict(a, b) == "B better" and significance.verdict(b, a) == "A better"
    assert significance.verdict(a, a + rng.normal(0, 0.1, 400)) == "no clear difference"
    with pytest.raises(ValueError, match="equally long"):
        significance.difference_interval(a, b[:-1])


def test_equal_methods_share_a_rank_and_a_clearly_better_one_does_not():
    rng = np.random.default_rng(1)
    units = rng.normal(0.7, 0.1, 60)  # one value per photo group, shared by two equal methods (plus noise)
    methods = np.stack([units + rng.normal(0, 0.02, 60), units + rng.normal(0, 0.02, 60),
                        units + 0.1 + rng.normal(0, 0.02, 60), units - 0.1 + rng.normal(0, 0.02, 60)])
    replicates = list(bootstrap_means(methods, 1000, rng))
    assert significance.tied_ranks(replicates) == [2, 2, 1, 4]
    # Nothing beats anything when the difference is lost in the noise: all share rank 1.
    noisy = units + rng.normal(0, 0.3, (3, 60))
    assert significance.tied_ranks(list(bootstrap_means(noisy, 1000, rng))) == [1, 1, 1]


def test_the_detectable_difference_is_detected_80_percent_of_the_time():
    """Simulated splits with a known effect equal to the estimated detectable difference: the paired test at 5%
    detects it in about 80% of them, and a zero effect in about 5%."""
    rng = np.random.default_rng(2)
    units, noise = 50, 1.0

    def split(effect: float) -> tuple[np.ndarray, np.ndarray]:
        shared = rng.normal(0, 2, units)  # what both methods see alike (the photo group's difficulty)
        return shared + rng.normal(0, noise, units), shared + effect + rng.normal(0, noise, units)

    a, b = bootstrap_means(np.stack(split(0.0)), 2000, rng)
    effect = significance.detectable_difference(a, b)
    # The truth: the difference of means has standard deviation sqrt(2) noise / sqrt(units).
    assert effect == pytest.approx(2.8016 * np.sqrt(2) * noise / np.sqrt(units), rel=0.15)

    def detection_rate(true_effect: float, trials: int = 300) -> float:
        hits = 0
        for _ in range(trials):
            a, b = bootstrap_means(np.stack(split(true_effect)), 400, rng)
            hits += significance.beats(b, a)
        return hits / trials

    assert 0.70 <= detection_rate(effect) <= 0.90
    assert detection_rate(0.0) <= 0.06  # one-sided half of a 5% two-sided test


def test_a_tracks_detectable_difference_is_the_median_over_its_pairs():
    rng = np.random.default_rng(3)
    replicates = list(rng.normal(0, [[0.01], [0.02], [0.04]], (3, 500)))
    pairs = [significance.detectable_difference(replicates[i], replicates[j]) for i, j in ((0, 1), (0, 2), (1, 2))]
    assert significance.track_detectable_difference(replicates) == pytest.approx(np.median(pairs))
    assert significance.track_detectable_difference(replicates[:1]) is None


def test_the_seed_and_group_interval_widens_with_the_spread_between_seeds():
    rng = np.random.default_rng(4)
    groups = rng.normal(0, 0.02, 1000)  # the shared resampled-groups part of every replicate
    a = 0.70 + groups + rng.normal(0, 0.002, (3, 1000))
    steady = a + 0.05 + rng.normal(0, 0.002, (3, 1000))
    low, high = significance.seeds_and_groups_interval(a, steady)
    assert 0.04 < low < 0.05 < high < 0.06
    spread = steady + np.array([[-0.08], [0.0], [0.08]])  # same mean effect, seeds far apart
    wide = significance.seeds_and_groups_interval(a, spread)
    assert wide[0] < 0 < 0.05 < wide[1] and wide[1] - wide[0] > 5 * (high - low)
    assert significance.seeds_and_groups_interval(a, spread) == wide  # seeded
