"""Which samples each rank trains on at each step: seeded global batches split into micro-batches.

The global batch is drawn first (a seeded permutation per epoch, cut into runs of
micro-batch x accumulation x ranks), then split, so the same seed gives the same global batches
however the work is divided. Within a global batch, samples are sorted by length before the
split: the loss is a global-batch mean, so the order inside it changes nothing but padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def epoch_order(num_samples: int, seed: int, epoch: int, stream: int = 0) -> np.ndarray:
    """The sample order of one epoch: a permutation fixed by seed, epoch and ``stream`` (one
    stream per dataset trained on in turn)."""
    return np.random.default_rng([seed, stream, epoch]).permutation(num_samples)


def global_batches(order: np.ndarray, global_batch_size: int) -> list[np.ndarray]:
    """Cut an epoch's order into global batches; the last one may be short."""
    return [order[i : i + global_batch_size] for i in range(0, len(order), global_batch_size)]


def rank_micro_batches(
    batch: np.ndarray,
    lengths: Sequence[int],
    *,
    micro_batch_size: int,
    accumulation_steps: int,
    world_size: int,
    rank: int,
) -> list[list[int]]:
    """This rank's ``accumulation_steps`` micro-batches of one global batch.

    Slot ``step * world_size + rank`` takes the next ``micro_batch_size`` samples of the
    length-sorted batch. A short last batch leaves some slots empty (``[]``); every rank still
    runs every micro-step so that the collectives stay matched.
    """
    ordered = sorted(batch.tolist(), key=lambda index: (lengths[index], index))
    slots = []
    for step in range(accumulation_steps):
        start = (step * world_size + rank) * micro_batch_size
        slots.append(ordered[start : start + micro_batch_size])
    return slots


def split_evenly(num_samples: int, batch_size: int, world_size: int, rank: int) -> list[list[int]]:
    """Evaluation batches of this rank: every rank gets the same number of (maybe empty) batches."""
    indices = list(range(rank, num_samples, world_size))
    rounds = -(-num_samples // (batch_size * world_size))
    return [indices[i * batch_size : (i + 1) * batch_size] for i in range(rounds)]
