"""Length-grouped order: seeded, every sample once per epoch, batches of similar lengths."""

from __future__ import annotations

import numpy as np

from aligner.training.batching import epoch_order, global_batches, rank_micro_batches
from aligner.training.grouping import grouped_epoch_order

LENGTHS = np.random.default_rng(0).lognormal(5.5, 0.6, size=1000).astype(int).tolist()


def _padding_share(order: np.ndarray) -> float:
    """Pad tokens / all tokens of the trainer's micro-batches (4 samples, 2 ranks x 8 steps)."""
    lengths = np.asarray(LENGTHS)
    real = padded = 0
    for batch in global_batches(order, 64):
        for rank in range(2):
            for micro in rank_micro_batches(
                batch, LENGTHS, micro_batch_size=4, accumulation_steps=8, world_size=2, rank=rank
            ):
                if micro:
                    real += lengths[micro].sum()
                    padded += lengths[micro].max() * len(micro)
    return 1 - real / padded


def test_grouping_is_deterministic_per_seed_and_epoch() -> None:
    first = grouped_epoch_order(LENGTHS, 42, 0, 16)
    assert np.array_equal(first, grouped_epoch_order(LENGTHS, 42, 0, 16))
    assert not np.array_equal(first, grouped_epoch_order(LENGTHS, 42, 1, 16))
    assert not np.array_equal(first, grouped_epoch_order(LENGTHS, 43, 0, 16))
    assert not np.array_equal(first, grouped_epoch_order(LENGTHS, 42, 0, 16, stream=1))


def test_every_sample_appears_exactly_once_per_epoch() -> None:
    for epoch in range(3):
        order = grouped_epoch_order(LENGTHS, 7, epoch, 24)
        assert sorted(order.tolist()) == list(range(len(LENGTHS)))


def test_grouped_batches_have_little_padding() -> None:
    grouped = _padding_share(grouped_epoch_order(LENGTHS, 1, 0, 64))
    shuffled = _padding_share(epoch_order(len(LENGTHS), 1, 0))
    assert shuffled > 0.06
    assert grouped < 0.02


def test_longest_sample_comes_first_and_a_short_batch_stays_last() -> None:
    order = grouped_epoch_order(LENGTHS, 3, 0, 64)  # 1000 = 15 x 64 + 40
    batches = global_batches(order, 64)
    assert int(np.argmax(LENGTHS)) in batches[0].tolist()
    assert [len(b) for b in batches] == [64] * 15 + [40]


def test_batch_order_is_still_random_over_the_epoch() -> None:
    order = grouped_epoch_order(LENGTHS, 5, 0, 16)
    maxima = [max(LENGTHS[i] for i in b) for b in global_batches(order, 16)][1:-1]
    assert maxima != sorted(maxima) and maxima != sorted(maxima, reverse=True)


def test_an_empty_dataset_gives_an_empty_order() -> None:
    assert len(grouped_epoch_order([], 0, 0, 8)) == 0
