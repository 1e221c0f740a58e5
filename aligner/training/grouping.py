"""Length-grouped epoch order: global batches of similar lengths, in a seeded order.

The megabatch scheme: shuffle the epoch, cut the order into megabatches of ``megabatch_size``
global batches, sort each megabatch by length, cut it into global batches, then shuffle the
batch order. Batches hold samples of similar length (little padding) while the sequence of
lengths over an epoch stays random. The result depends only on the lengths, seed, epoch and
stream, so a run resumed at step ``k`` of an epoch trains on the same batches as an
uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from aligner.training.batching import epoch_order, global_batches

MEGABATCH_SIZE = 50
"""Global batches per megabatch: larger groups lengths more tightly but orders them less
randomly."""


def grouped_epoch_order(
    lengths: Sequence[int],
    seed: int,
    epoch: int,
    global_batch_size: int,
    *,
    stream: int = 0,
    megabatch_size: int = MEGABATCH_SIZE,
) -> np.ndarray:
    """A permutation of the samples whose cut into global batches groups similar lengths.

    Cutting the result with :func:`~aligner.training.batching.global_batches` gives the grouped
    batches. The batch holding the longest sample comes first, so a run that would run out of
    memory does so at once; a short last batch stays last.
    """
    lengths = np.asarray(lengths)
    order = epoch_order(len(lengths), seed, epoch, stream)
    span = global_batch_size * megabatch_size
    grouped = []
    for start in range(0, len(order), span):
        megabatch = order[start : start + span]
        # Longest first; the stable sort keeps the shuffled order among equal lengths.
        grouped.append(megabatch[np.argsort(-lengths[megabatch], kind="stable")])
    batches = global_batches(np.concatenate(grouped) if grouped else order, global_batch_size)
    full = [batch for batch in batches if len(batch) == global_batch_size]
    short = batches[len(full) :]
    # The batch order has its own seeded stream, apart from the sample permutation's.
    rng = np.random.default_rng([seed, stream, epoch, 1])
    full = [full[i] for i in rng.permutation(len(full))]
    if full:
        longest = max(range(len(full)), key=lambda i: lengths[full[i]].max())
        full.insert(0, full.pop(longest))
    return np.concatenate([*full, *short]) if batches else order
