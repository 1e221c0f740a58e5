"""Batching tokenized samples: right padding, with the attention mask built from lengths."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypedDict

import torch

from aligner.constants import IGNORE_INDEX


class Batch(TypedDict):
    input_ids: torch.LongTensor  # (B, L)
    attention_mask: torch.LongTensor  # (B, L)
    labels: torch.LongTensor  # (B, L)


class PaddingCollator:
    """Right-pads ``input_ids`` with the pad id and ``labels`` with IGNORE_INDEX.

    The attention mask comes from each sample's length, never from ``input_ids != pad_id``:
    the pad id may equal EOS or UNK, which also appear as real tokens.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None) -> None:
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, rows: Sequence[dict[str, Any]]) -> Batch:
        lengths = [len(row["input_ids"]) for row in rows]
        width = max(lengths)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (row, length) in enumerate(zip(rows, lengths, strict=True)):
            input_ids[i, :length] = torch.as_tensor(row["input_ids"], dtype=torch.long)
            labels[i, :length] = torch.as_tensor(row["labels"], dtype=torch.long)
            attention_mask[i, :length] = 1
        return Batch(input_ids=input_ids, attention_mask=attention_mask, labels=labels)


class PackedBatch(TypedDict):
    input_ids: torch.LongTensor  # (1, T), T = sum of the sample lengths
    labels: torch.LongTensor  # (1, T)
    position_ids: torch.LongTensor  # (1, T), restarting at 0 for every sample


class PackingCollator:
    """Concatenates samples into one padding-free row with per-sample ``position_ids``.

    The model must be called with ``attention_mask=None`` and ``use_cache=False``: transformers
    then derives a block-diagonal causal mask from the restarting positions (sdpa, eager) or
    variable-length kernels (flash-attention), so no sample attends to another. With a KV cache
    built, the samples silently attend to each other. Every sample starts with prompt tokens
    (label IGNORE_INDEX), so no loss term predicts one sample from the one before.
    """

    def __call__(self, rows: Sequence[dict[str, Any]]) -> PackedBatch:
        input_ids = [torch.as_tensor(row["input_ids"], dtype=torch.long) for row in rows]
        labels = [torch.as_tensor(row["labels"], dtype=torch.long) for row in rows]
        for label in labels:
            label[0] = IGNORE_INDEX  # the first token of a sample is never a prediction target
        positions = [torch.arange(len(ids), dtype=torch.long) for ids in input_ids]
        return PackedBatch(
            input_ids=torch.cat(input_ids).unsqueeze(0),
            labels=torch.cat(labels).unsqueeze(0),
            position_ids=torch.cat(positions).unsqueeze(0),
        )
