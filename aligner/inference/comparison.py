"""Paired comparison of answers and corrections: means, a seeded bootstrap interval, win rates.

A difference is always ``correction - answer``. A win is a correction better than its answer by
more than the tie margin: a higher score for a reward model, a lower one for a cost model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

WIN, TIE, LOSE = 1, 0, -1

# Resampled in blocks of about this many drawn indices, so that memory stays bounded (32 MiB)
# whatever the number of records and bootstrap samples.
BOOTSTRAP_BLOCK = 1 << 22


def bootstrap_ci(
    values: Sequence[float], samples: int, seed: int, level: float = 0.95
) -> list[float]:
    """Percentile bootstrap interval ``[low, high]`` of the mean of ``values``.

    Written with numpy rather than taken from SciPy's ``stats.bootstrap``: it is a dozen lines,
    and the toolkit does not otherwise need SciPy.
    """
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        raise ValueError("a bootstrap interval needs at least one value")
    rng = np.random.default_rng(seed)
    means = np.empty(samples)
    block = max(1, BOOTSTRAP_BLOCK // data.size)
    for start in range(0, samples, block):
        count = min(block, samples - start)
        drawn = rng.integers(0, data.size, size=(count, data.size))  # (count, n)
        means[start : start + count] = data[drawn].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return [float(low), float(high)]


def outcomes(
    answer: Sequence[float],
    correction: Sequence[float],
    *,
    lower_is_better: bool = False,
    tie_margin: float = 0.0,
) -> np.ndarray:
    """WIN, TIE or LOSE per record: whether the correction beats its answer by the margin."""
    gain = np.asarray(correction, dtype=np.float64) - np.asarray(answer, dtype=np.float64)
    if lower_is_better:
        gain = -gain
    return np.where(gain > tie_margin, WIN, np.where(gain < -tie_margin, LOSE, TIE))


def rates(results: np.ndarray) -> dict[str, float]:
    count = max(len(results), 1)
    return {
        "win_rate": float(np.sum(results == WIN)) / count,
        "tie_rate": float(np.sum(results == TIE)) / count,
        "lose_rate": float(np.sum(results == LOSE)) / count,
    }


def paired_summary(
    answer: Sequence[float],
    correction: Sequence[float],
    *,
    lower_is_better: bool = False,
    tie_margin: float = 0.0,
    bootstrap_samples: int = 10_000,
    seed: int = 42,
) -> dict[str, object]:
    """Means of both, the mean difference with its 95% interval, and win/tie/lose rates."""
    if len(answer) != len(correction):
        raise ValueError(f"{len(answer)} answer scores but {len(correction)} correction scores")
    report: dict[str, object] = {"num_records": len(answer)}
    if not answer:
        return report
    difference = np.asarray(correction, dtype=np.float64) - np.asarray(answer, dtype=np.float64)
    results = outcomes(answer, correction, lower_is_better=lower_is_better, tie_margin=tie_margin)
    report.update(
        answer_mean=float(np.mean(answer)),
        correction_mean=float(np.mean(correction)),
        difference_mean=float(difference.mean()),
        difference_ci95=bootstrap_ci(difference, bootstrap_samples, seed),
        **rates(results),
    )
    return report
