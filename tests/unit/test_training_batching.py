"""Global batches are fixed by the seed; splitting them covers each sample exactly once."""

from __future__ import annotations

import numpy as np
import pytest

from aligner.training.batching import epoch_order, global_batches, rank_micro_batches, split_evenly


def test_epoch_order_depends_only_on_seed_and_epoch() -> None:
    assert np.array_equal(epoch_order(50, 42, 0), epoch_order(50, 42, 0))
    assert not np.array_equal(epoch_order(50, 42, 0), epoch_order(50, 42, 1))
    assert sorted(epoch_order(50, 42, 3)) == list(range(50))


def test_global_batches_keep_a_short_last_batch() -> None:
    batches = global_batches(np.arange(10), 4)
    assert [len(b) for b in batches] == [4, 4, 2]


@pytest.mark.parametrize(
    ("micro", "accumulation", "world"), [(4, 1, 1), (2, 2, 1), (2, 1, 2), (1, 2, 2), (3, 1, 3)]
)
def test_slots_cover_the_global_batch_exactly_once(micro: int, accumulation: int, world: int):
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 50, size=40).tolist()
    batch = epoch_order(40, 1, 0)[: micro * accumulation * world]
    taken = []
    for rank in range(world):
        slots = rank_micro_batches(
            batch,
            lengths,
            micro_batch_size=micro,
            accumulation_steps=accumulation,
            world_size=world,
            rank=rank,
        )
        assert len(slots) == accumulation
        assert all(len(slot) == micro for slot in slots)
        taken += [index for slot in slots for index in slot]
    assert sorted(taken) == sorted(batch.tolist())


def test_short_batch_leaves_empty_slots_but_every_rank_keeps_its_micro_steps() -> None:
    lengths = [10] * 5
    slots = [
        rank_micro_batches(
            np.arange(5), lengths, micro_batch_size=2, accumulation_steps=2, world_size=2, rank=rank
        )
        for rank in range(2)
    ]
    assert [len(s) for s in slots[0]] == [2, 1]
    assert [len(s) for s in slots[1]] == [2, 0]


def test_micro_batches_group_similar_lengths() -> None:
    lengths = [1, 100, 2, 99]
    (first, second) = rank_micro_batches(
        np.arange(4), lengths, micro_batch_size=2, accumulation_steps=2, world_size=1, rank=0
    )
    assert sorted(first) == [0, 2] and sorted(second) == [1, 3]


def test_evaluation_split_gives_every_rank_the_same_number_of_batches() -> None:
    per_rank = [split_evenly(7, 2, 3, rank) for rank in range(3)]
    assert {len(batches) for batches in per_rank} == {2}
    seen = sorted(i for batches in per_rank for batch in batches for i in batch)
    assert seen == list(range(7))
