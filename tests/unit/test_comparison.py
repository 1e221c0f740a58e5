"""Paired comparison statistics against hand-computed cases: the bootstrap interval and rates."""

from __future__ import annotations

import numpy as np
import pytest

from aligner.inference import comparison
from aligner.inference.comparison import bootstrap_ci, outcomes, paired_summary


def test_bootstrap_interval_of_two_values_spans_both() -> None:
    # A resample of [0, 1] has mean 0, 0.5 or 1 with chances 1/4, 1/2, 1/4: the 2.5th
    # percentile of the means is 0 and the 97.5th is 1.
    assert bootstrap_ci([0.0, 1.0], samples=10_000, seed=0) == [0.0, 1.0]


def test_bootstrap_interval_of_a_rare_value() -> None:
    # Resampling [0, 0, 0, 1]: the mean is k/4 with k ~ Binomial(4, 1/4);
    # P(k = 0) = 0.316 > 0.025, so the low end is 0; P(k <= 2) = 0.949 < 0.975 <= P(k <= 3)
    # = 0.996, so the high end is 3/4.
    assert bootstrap_ci([0.0, 0.0, 0.0, 1.0], samples=10_000, seed=1) == [0.0, 0.75]


def test_bootstrap_interval_of_a_constant_is_that_constant() -> None:
    assert bootstrap_ci([2.5] * 7, samples=500, seed=3) == [2.5, 2.5]


def test_bootstrap_interval_matches_the_normal_approximation() -> None:
    values = np.random.default_rng(0).normal(1.0, 2.0, size=2000)
    low, high = bootstrap_ci(values, samples=4000, seed=0)
    half_width = 1.96 * values.std() / np.sqrt(values.size)
    assert low < values.mean() < high
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.1)


def test_bootstrap_is_seeded_and_independent_of_the_block_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    values = np.random.default_rng(5).normal(size=50)
    first = bootstrap_ci(values, samples=1000, seed=7)
    assert bootstrap_ci(values, samples=1000, seed=7) == first
    assert bootstrap_ci(values, samples=1000, seed=8) != first
    monkeypatch.setattr(comparison, "BOOTSTRAP_BLOCK", 50 * 3)  # three resamples per block
    assert bootstrap_ci(values, samples=1000, seed=7) == first


def test_rates_count_wins_ties_and_losses_by_the_margin() -> None:
    answer = [0.0] * 5
    correction = [1.0, 0.05, 0.0, -0.05, -1.0]
    assert outcomes(answer, correction).tolist() == [1, 1, 0, -1, -1]
    assert outcomes(answer, correction, tie_margin=0.1).tolist() == [1, 0, 0, 0, -1]
    # For a cost, lower is better: the signs turn over.
    assert outcomes(answer, correction, lower_is_better=True).tolist() == [-1, -1, 0, 1, 1]


def test_paired_summary_of_a_hand_computed_case() -> None:
    answer = [1.0, 2.0, 3.0, 4.0]
    correction = [2.0, 2.0, 1.0, 4.5]  # differences +1, 0, -2, +0.5
    summary = paired_summary(answer, correction, tie_margin=0.25, bootstrap_samples=2000, seed=0)
    assert summary["num_records"] == 4
    assert summary["answer_mean"] == pytest.approx(2.5)
    assert summary["correction_mean"] == pytest.approx(2.375)
    assert summary["difference_mean"] == pytest.approx(-0.125)
    assert (summary["win_rate"], summary["tie_rate"], summary["lose_rate"]) == (0.5, 0.25, 0.25)
    low, high = summary["difference_ci95"]
    # The interval lies within the extreme resample means (all -2, all +1) and holds the mean.
    assert -2.0 <= low < -0.125 < high <= 1.0
    assert summary["difference_ci95"] == bootstrap_ci([1.0, 0.0, -2.0, 0.5], 2000, 0)


def test_identical_scores_are_all_ties() -> None:
    summary = paired_summary([0.3, -1.2], [0.3, -1.2], bootstrap_samples=100, seed=0)
    assert (summary["win_rate"], summary["tie_rate"], summary["lose_rate"]) == (0.0, 1.0, 0.0)
    assert summary["difference_ci95"] == [0.0, 0.0]
