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


def _token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-target-token cross-entropy with the causal shift, over the target positions only."""
    logits, labels = logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten()
    keep = labels != IGNORE_INDEX
    return torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="none")


def test_packed_forward_equals_separate_forwards(tiny_llama_dir, llama_tokenizer) -> None:
    from transformers import AutoModelForCausalLM

    from aligner.datasets.collate import PackingCollator
    from aligner.datasets.encode import SampleEncoder
    from aligner.prompts import get_template

    encoder = SampleEncoder(llama_tokenizer, get_template(), 512)
    out = encoder(
        {
            "question": ["What is 2+2?", "Say hi", "你好吗？"],
            "answer": ["5", "go away", "不好"],
            "correction": ["4", "Hello! 😀", "我很好，谢谢。"],
        }
    )
    rows = [
        {"input_ids": i, "labels": lab}
        for i, lab in zip(out["input_ids"], out["labels"], strict=True)
    ]
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation="sdpa").eval()
    with torch.no_grad():
        packed = PackingCollator()(rows)
        assert packed["input_ids"].shape == (1, sum(len(r["input_ids"]) for r in rows))
        logits = model(
            input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False
        ).logits
        packed_losses = _token_losses(logits, packed["labels"])
        separate = PaddingCollator(pad_token_id=llama_tokenizer.pad_token_id)(rows)
        logits = model(
            input_ids=separate["input_ids"], attention_mask=separate["attention_mask"]
        ).logits
        separate_losses = _token_losses(logits, separate["labels"])
    assert packed_losses.shape == separate_losses.shape and len(packed_losses) > 10
    torch.testing.assert_close(packed_losses, separate_losses, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(packed_losses.mean(), separate_losses.mean(), rtol=1e-6, atol=1e-6)
