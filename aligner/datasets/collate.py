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
