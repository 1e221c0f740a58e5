"""Right-padding collation with the attention mask taken from lengths."""

from __future__ import annotations

import torch

from aligner.constants import IGNORE_INDEX
from aligner.datasets.collate import PaddingCollator


def test_mask_comes_from_lengths_even_when_pad_equals_eos() -> None:
    eos = 2
    rows = [
        {"input_ids": [1, 5, 6, eos], "labels": [IGNORE_INDEX, IGNORE_INDEX, 6, eos]},
        {"input_ids": [1, eos, 7, 8, 9, eos], "labels": [IGNORE_INDEX] * 3 + [8, 9, eos]},
    ]
    batch = PaddingCollator(pad_token_id=eos)(rows)
    assert batch["input_ids"].tolist() == [[1, 5, 6, eos, eos, eos], [1, eos, 7, 8, 9, eos]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0], [1] * 6]
    assert batch["labels"].tolist()[0] == [
        IGNORE_INDEX,
        IGNORE_INDEX,
        6,
        eos,
        IGNORE_INDEX,
        IGNORE_INDEX,
    ]
    assert all(t.dtype == torch.long for t in batch.values())


def test_pad_to_multiple_of() -> None:
    rows = [{"input_ids": [1, 2, 3], "labels": [IGNORE_INDEX, 2, 3]}]
    batch = PaddingCollator(pad_token_id=0, pad_to_multiple_of=8)(rows)
    assert batch["input_ids"].shape == (1, 8) and batch["attention_mask"].sum() == 3
    assert (batch["labels"][0, 3:] == IGNORE_INDEX).all()
