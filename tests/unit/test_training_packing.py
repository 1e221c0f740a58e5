"""Packing plans keep every sample whole and once; on every model family, a packed micro-batch
gives the padded loss, gradients and hidden states."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aligner.constants import IGNORE_INDEX
from aligner.datasets.collate import PackingCollator, PaddingCollator
from aligner.tiny import FAMILIES
from aligner.training.packing import pack_balanced, rank_packed_micro_batches


def test_packing_respects_the_budget_and_keeps_samples_whole() -> None:
    lengths = np.random.default_rng(0).integers(10, 300, size=60).tolist()
    bins = pack_balanced(range(60), lengths, 512)
    assert sorted(i for b in bins for i in b) == list(range(60))
    assert all(sum(lengths[i] for i in b) <= 512 for b in bins)
    # Close to the fewest bins the tokens need, far below one bin per sample.
    assert len(bins) <= -(-sum(lengths) // 512) * 5 // 4 + 1
    loads = [sum(lengths[i] for i in b) for b in bins]
    assert max(loads) - min(loads) <= max(lengths)


def test_a_sample_over_the_budget_gets_a_bin_of_its_own() -> None:
    bins = pack_balanced([0, 1, 2], [900, 100, 100], 512)
    assert [0] in bins and sorted(i for b in bins for i in b) == [0, 1, 2]


def test_bins_come_in_multiples_of_the_ranks() -> None:
    assert len(pack_balanced(range(3), [10, 10, 10], 100, bins_multiple=2)) == 2
    assert pack_balanced([], [], 100, bins_multiple=2) == [[], []]


@pytest.mark.parametrize(("world", "budget"), [(1, 400), (2, 400), (2, 2048), (3, 300)])
def test_ranks_share_the_global_batch_with_matching_micro_steps(world: int, budget: int) -> None:
    lengths = np.random.default_rng(1).integers(5, 250, size=50).tolist()
    batch = np.random.default_rng(2).permutation(50)[:37]
    plans = [
        rank_packed_micro_batches(batch, lengths, max_tokens=budget, world_size=world, rank=rank)
        for rank in range(world)
    ]
    assert len({len(plan) for plan in plans}) == 1
    taken = [i for plan in plans for micro in plan for i in micro]
    assert sorted(taken) == sorted(batch.tolist())
    assert all(sum(lengths[i] for i in micro) <= budget for plan in plans for micro in plan)
    loads = [sum(lengths[i] for micro in plan for i in micro) for plan in plans]
    assert max(loads) - min(loads) <= max(lengths)


def _rows(count: int, seed: int) -> list[dict]:
    """Correction-shaped rows: a prompt (masked) then a target, of varied lengths, some longer
    than the tiny models' 32-token attention windows."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(count):
        prompt, target = int(rng.integers(3, 50)), int(rng.integers(1, 30))
        ids = rng.integers(3, 1000, size=prompt + target).tolist()
        rows.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    return rows


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_loss_and_gradients_equal_the_padded_batch(tiny_model, family: str) -> None:
    from transformers import AutoModelForCausalLM

    from aligner.loss import CorrectionLM

    lm = AutoModelForCausalLM.from_pretrained(tiny_model(family), dtype=torch.float32)
    model = CorrectionLM(lm).train()
    rows = _rows(5, seed=3)

    def loss_and_grads(batch: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        out = model(**batch)
        (out.loss_sum / out.tokens).backward()
        return out.loss_sum.detach() / out.tokens, [p.grad.clone() for p in model.parameters()]

    padded = PaddingCollator(pad_token_id=0)(rows)
    packed = PackingCollator()(rows)
    assert "attention_mask" not in packed
    padded_loss, padded_grads = loss_and_grads(padded)
    packed_loss, packed_grads = loss_and_grads(packed)
    torch.testing.assert_close(packed_loss, padded_loss, rtol=1e-5, atol=1e-6)
    for packed_grad, padded_grad in zip(packed_grads, padded_grads, strict=True):
        torch.testing.assert_close(packed_grad, padded_grad, rtol=1e-4, atol=1e-6)
    # Every position's hidden state agrees; the guard: without restarting positions samples
    # attend to each other, which moves them far outside that tolerance.
    decoder = lm.get_decoder()
    with torch.no_grad():
        by_sample = decoder(**_without_labels(padded), use_cache=False).last_hidden_state
        by_sample = torch.cat([by_sample[i, : len(r["input_ids"])] for i, r in enumerate(rows)])
        in_one_row = decoder(**_without_labels(packed), use_cache=False).last_hidden_state[0]
        crossing = decoder(input_ids=packed["input_ids"], use_cache=False).last_hidden_state[0]
    torch.testing.assert_close(in_one_row, by_sample, rtol=1e-5, atol=1e-5)
    assert (crossing - in_one_row).abs().max() > 0.1


def _without_labels(batch: dict) -> dict:
    return {key: value for key, value in batch.items() if key != "labels"}
