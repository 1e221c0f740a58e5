"""How a global batch becomes this rank's micro-batches: padded or packed, shuffled or grouped.

The global batches themselves depend only on the seed, the epoch and (when grouping) the sample
lengths, never on the layout, so padded and packed runs train on the same batches and, the loss
being a global-batch mean, give the same losses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from aligner.config import LayoutArgs
from aligner.datasets.collate import Batch, PackedBatch, PackingCollator, PaddingCollator
from aligner.training.batching import epoch_order, rank_micro_batches
from aligner.training.grouping import grouped_epoch_order
from aligner.training.packing import rank_packed_micro_batches


@dataclass(frozen=True)
class BatchLayout:
    """The layout flags of one rank; ``max_tokens`` is the packed micro-batch's token budget."""

    micro_batch_size: int
    accumulation_steps: int
    world_size: int
    rank: int
    pad_token_id: int
    packing: bool = False
    max_tokens: int = 0
    group_by_length: bool = False

    @classmethod
    def from_flags(
        cls, flags: LayoutArgs, *, world_size: int, rank: int, pad_token_id: int
    ) -> BatchLayout:
        """The layout the batch-layout flags give one rank of ``world_size``."""
        return cls(
            micro_batch_size=flags.per_device_train_batch_size,
            accumulation_steps=flags.gradient_accumulation_steps,
            world_size=world_size,
            rank=rank,
            pad_token_id=pad_token_id,
            packing=flags.packing,
            max_tokens=flags.packing_max_tokens,
            group_by_length=flags.group_by_length,
        )

    @property
    def global_batch_size(self) -> int:
        return self.micro_batch_size * self.accumulation_steps * self.world_size

    def epoch_order(
        self, lengths: Sequence[int], seed: int, epoch: int, stream: int = 0
    ) -> np.ndarray:
        """The sample order of one epoch, to be cut into global batches."""
        if self.group_by_length:
            return grouped_epoch_order(lengths, seed, epoch, self.global_batch_size, stream=stream)
        return epoch_order(len(lengths), seed, epoch, stream)

    def micro_batches(self, batch: np.ndarray, lengths: Sequence[int]) -> list[list[int]]:
        """This rank's micro-batches of a global batch; as many on every rank (some maybe
        empty), so that the collectives stay matched."""
        if self.packing:
            return rank_packed_micro_batches(
                batch,
                lengths,
                max_tokens=self.max_tokens,
                world_size=self.world_size,
                rank=self.rank,
            )
        return rank_micro_batches(
            batch,
            lengths,
            micro_batch_size=self.micro_batch_size,
            accumulation_steps=self.accumulation_steps,
            world_size=self.world_size,
            rank=self.rank,
        )

    def collate(self, rows: Sequence[dict[str, Any]]) -> Batch | PackedBatch:
        if self.packing:
            return PackingCollator()(rows)
        return PaddingCollator(pad_token_id=self.pad_token_id)(rows)


def real_tokens(batch: Batch | PackedBatch) -> int:
    """Tokens that are not padding: a packed row has none."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return batch["input_ids"].numel()
