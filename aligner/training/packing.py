"""Padding-free packing plan: a global batch's samples laid out as token-budget micro-batches.

The whole global batch is packed into as few bins of at most ``max_tokens`` tokens as the
ranks can share evenly (a sample is never split), with the tokens spread evenly over the bins,
and bin ``k`` goes to rank ``k % world_size``. Every rank computes the same plan from the
lengths alone, so no collective is needed to agree on it, and the global batch (hence the loss,
a mean over its target tokens) is the same as when padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pack_balanced(
    indices: Sequence[int], lengths: Sequence[int], max_tokens: int, bins_multiple: int = 1
) -> list[list[int]]:
    """Bins of ``indices`` whose lengths sum to at most ``max_tokens``, with even token loads.

    The number of bins is the smallest multiple of ``bins_multiple`` for which longest-first
    placement into the least-loaded bin fits the budget; a sample longer than ``max_tokens``
    gets a bin of its own. Ties go to the lower index, so the plan depends only on its inputs.
    """
    ordered = sorted(indices, key=lambda i: (-lengths[i], i))
    lower_bound = -(-sum(lengths[i] for i in ordered) // max_tokens)
    count = max(1, -(-lower_bound // bins_multiple)) * bins_multiple
    while True:
        bins: list[list[int]] = [[] for _ in range(count)]
        loads = [0] * count
        for index in ordered:
            target = min(range(count), key=lambda b: (loads[b], b))
            if bins[target] and loads[target] + lengths[index] > max_tokens:
                break
            bins[target].append(index)
            loads[target] += lengths[index]
        else:
            return bins
        count += bins_multiple


def rank_packed_micro_batches(
    batch: np.ndarray,
    lengths: Sequence[int],
    *,
    max_tokens: int,
    world_size: int,
    rank: int,
) -> list[list[int]]:
    """This rank's packed micro-batches of one global batch; every rank gets as many (some
    maybe empty, ``[]``) so that the collectives stay matched."""
    bins = pack_balanced([int(i) for i in batch], lengths, max_tokens, bins_multiple=world_size)
    return bins[rank::world_size]
