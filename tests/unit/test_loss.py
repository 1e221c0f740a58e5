"""The correction loss: the LM head on target positions only equals the plain full-logits loss;
evaluation computes it without loading DeepSpeed."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from aligner.constants import IGNORE_INDEX
from aligner.loss import CorrectionLM, target_positions
from aligner.tiny import FAMILIES


def tiny_config() -> LlamaConfig:
    return LlamaConfig(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
    )


@pytest.fixture(scope="module")
def lm() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_config()).eval()


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(3, 300, (3, 12), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 9:] = 0
    labels = input_ids.clone()
    labels[:, :6] = IGNORE_INDEX  # the prompt
    labels[attention_mask == 0] = IGNORE_INDEX
    labels[2, :] = IGNORE_INDEX  # a sample with nothing to learn contributes nothing
    return input_ids, attention_mask, labels


def test_target_positions_shift_by_one() -> None:
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 7, 8]])
    mask, targets = target_positions(labels)
    assert mask.tolist() == [[False, True, True]]
    assert targets.tolist() == [7, 8]


def test_head_on_targets_only_equals_the_full_logits_loss(lm: LlamaForCausalLM) -> None:
    input_ids, attention_mask, labels = _batch()
    fast = CorrectionLM(lm)(input_ids, attention_mask, labels)
    full = CorrectionLM(lm, head_on_targets_only=False)(input_ids, attention_mask, labels)
    torch.testing.assert_close(fast.loss_sum, full.loss_sum, rtol=1e-6, atol=1e-5)
    assert fast.correct == full.correct and fast.tokens == full.tokens


def test_loss_sum_matches_the_model_own_mean_loss(lm: LlamaForCausalLM) -> None:
    input_ids, attention_mask, labels = _batch()
    ours = CorrectionLM(lm)(input_ids, attention_mask, labels)
    reference = lm(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    assert int(ours.tokens) == int((labels[:, 1:] != IGNORE_INDEX).sum())
    torch.testing.assert_close(ours.loss_sum / ours.tokens, reference, rtol=1e-5, atol=1e-6)


def test_gradients_agree_between_the_two_paths(lm: LlamaForCausalLM) -> None:
    input_ids, attention_mask, labels = _batch()
    grads = []
    for head_on_targets_only in (True, False):
        lm.zero_grad()
        out = CorrectionLM(lm, head_on_targets_only=head_on_targets_only)(
            input_ids, attention_mask, labels
        )
        out.loss_sum.backward()
        grads.append([p.grad.clone() for p in lm.parameters()])
    for fast, full in zip(*grads, strict=True):
        torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-6)


def test_an_all_masked_batch_gives_zero_not_nan(lm: LlamaForCausalLM) -> None:
    input_ids, attention_mask, _ = _batch()
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    out = CorrectionLM(lm)(input_ids, attention_mask, labels)
    assert out.loss_sum.item() == 0.0 and out.tokens.item() == 0


def test_no_labels_returns_the_logits(lm: LlamaForCausalLM) -> None:
    input_ids, attention_mask, _ = _batch()
    logits = CorrectionLM(lm)(input_ids, attention_mask)
    assert logits.shape == (3, 12, 300)


@pytest.mark.parametrize("family", FAMILIES)
def test_activation_checkpointing_keeps_the_gradients(tiny_model, family: str) -> None:
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tiny_model(family), dtype=torch.float32)
    checkpointed = AutoModelForCausalLM.from_pretrained(tiny_model(family), dtype=torch.float32)
    wrapped = CorrectionLM(checkpointed)
    wrapped.enable_activation_checkpointing()
    input_ids, attention_mask, labels = _batch()
    for model in (CorrectionLM(plain), wrapped):
        model.train()
        model(input_ids, attention_mask, labels).loss_sum.backward()
    assert checkpointed.get_decoder().gradient_checkpointing
    for a, b in zip(plain.parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)


def test_the_loss_and_evaluation_load_no_deepspeed() -> None:
    code = (
        "import sys, aligner.loss, aligner.inference.reporting; print('deepspeed' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
