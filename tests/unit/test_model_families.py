"""Every model family in one process, without DeepSpeed: the attention kernel and the embedding
rows, checked before any rank trains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from aligner.tiny import FAMILIES
from aligner.training.arguments import ArgumentError, parse_arguments
from aligner.training.model import load_model_to_train, plan_model

REFUSES_SDPA = {"gemma2"}
"""transformers has no sdpa path for Gemma 2 (its attention logits are soft-capped)."""


def _args(model_dir: Path, *flags: str):
    required = ["--train_datasets", "d.jsonl", "--output_dir", "o"]
    return parse_arguments(["--model_name_or_path", str(model_dir), *required, *flags])


@pytest.mark.parametrize("kernel", [None, "sdpa", "eager"])
@pytest.mark.parametrize("family", FAMILIES)
def test_attention_kernel_is_the_family_choice_or_a_one_line_error(
    tiny_model, tiny_tokenizer, family: str, kernel: str | None
) -> None:
    model_dir = tiny_model(family)
    flags = [] if kernel is None else ["--attn_implementation", kernel]
    args = _args(model_dir, *flags)
    if kernel == "sdpa" and family in REFUSES_SDPA:
        with pytest.raises(ArgumentError) as error:
            plan_model(args, len(tiny_tokenizer(family)))
        message = str(error.value)
        assert message.startswith("--attn_implementation sdpa: ") and "\n" not in message
        assert "leave the flag out" in message
        return
    plan = plan_model(args, len(tiny_tokenizer(family)))
    expected = kernel or ("eager" if family in REFUSES_SDPA else "sdpa")
    assert plan.attn_implementation == expected
    assert (
        plan.architecture == json.loads((model_dir / "config.json").read_text())["architectures"][0]
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_more_tokens_than_embedding_rows_is_refused_unless_resized(
    tiny_model, tiny_tokenizer, family: str
) -> None:
    model_dir = tiny_model(family)
    fits = plan_model(_args(model_dir), len(tiny_tokenizer(family)))
    rows, spare = fits.embedding_rows, FAMILIES[family].spare_rows
    # More rows than tokens is fine: Phi-3 and Qwen ship spare rows.
    assert rows == fits.tokenizer_size + spare and not fits.resizes
    size = rows + 3  # a tokenizer with 3 tokens more than the model has rows
    with pytest.raises(ArgumentError) as error:
        plan_model(_args(model_dir), size)
    message = str(error.value)
    assert f"the tokenizer has {size} tokens but the model only {rows} embedding rows" in message
    assert "--resize_embeddings" in message and "\n" not in message

    args = _args(model_dir, "--resize_embeddings")
    assert plan_model(args, size).resizes
    lm = load_model_to_train(args, torch.float32, 0, size).lm
    grown = -(-size // 64) * 64
    assert lm.get_input_embeddings().num_embeddings == grown == lm.config.vocab_size
    assert lm.get_output_embeddings().weight.shape[0] == grown
    tied = lm.get_output_embeddings().weight is lm.get_input_embeddings().weight
    assert tied == FAMILIES[family].tie_word_embeddings
    ids = torch.tensor([[5, size - 1, size - 2, 7]])  # the new tokens go through the model
    with torch.no_grad():
        assert torch.isfinite(lm(ids).logits).all()
