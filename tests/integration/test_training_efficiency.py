"""Packing, length grouping, resume and LoRA through scripts/sft-correction.sh on 2 CPU ranks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.integration.conftest import assert_probe_matches
from tests.integration.test_resume import (  # the resume tests' launcher and checks
    RUN_TIMEOUT,
    _assert_same_training,
    _succeeded,
    setup,  # noqa: F401 (a fixture)
)
from tests.integration.test_training import LOSS_RTOL, RUNS, _assert_succeeded

pytestmark = pytest.mark.integration

# 8 records, global batch 8: a budget of one max_length (128) per packed micro-batch splits
# the batch into more micro-steps than the padded run's single one.
PACKED = ["--packing", "--packing_max_tokens", "128", "--group_by_length"]
LORA = ["--lora_r", "8", "--lora_alpha", "16", "--lora_dropout", "0", "--lr", "2e-2"]


@pytest.mark.timeout(900)
def test_packed_and_grouped_run_gives_the_padded_losses(train) -> None:
    padded = train("zero1", *RUNS["zero1"])
    packed = train("zero1-packed", *RUNS["zero1"], *PACKED)
    _assert_succeeded(padded)
    _assert_succeeded(packed)
    rows = [row for row in packed.metrics() if "train_loss" in row]
    assert all(row["padding_share"] == 0 for row in rows)
    assert all(row["padding_share"] > 0 for row in padded.metrics() if "train_loss" in row)
    np.testing.assert_allclose(packed.losses(), padded.losses(), rtol=LOSS_RTOL)


@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    ("family", "stage", "merge"),
    # Phi-3's LoRA sits on its fused qkv_proj and gate_up_proj (the family's default targets).
    [("llama", 2, False), ("phi3", 3, True)],
)
def test_lora_run_saves_an_adapter_or_merged_model_that_reloads(
    train, tiny_model, family: str, stage: int, merge: bool
) -> None:
    from transformers import AutoModelForCausalLM

    base_dir = tiny_model(family)
    flags = [*LORA, "--zero_stage", str(stage), "--lora_merge", str(merge)]
    run = train(f"lora-{family}-zero{stage}", *flags, model=base_dir)
    _assert_succeeded(run)
    losses = run.losses()
    assert losses[-1] < losses[0] - 0.05

    files = {path.name for path in run.output_dir.iterdir()}
    if merge:
        assert {"config.json", "model.safetensors"} <= files and "adapter_config.json" not in files
    else:
        assert {"adapter_config.json", "adapter_model.safetensors"} <= files
        assert "model.safetensors" not in files
        saved = json.loads((run.output_dir / "adapter_config.json").read_text())
        assert saved["r"] == 8 and saved["base_model_name_or_path"] == str(base_dir)
    model = AutoModelForCausalLM.from_pretrained(run.output_dir, dtype=torch.float32).eval()
    assert_probe_matches(run, model)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    probe = torch.load(run.output_dir / "probe-logits.pt", weights_only=True)
    with torch.no_grad():
        before = base(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"]).logits
    assert not torch.allclose(before, probe["logits"], atol=1e-3)


@pytest.mark.timeout(3 * RUN_TIMEOUT + 60)
def test_packed_and_grouped_run_resumes_to_the_uninterrupted_losses_and_weights(
    setup,  # noqa: F811 (the fixture imported above, requested by name)
) -> None:
    # Global batch 4 of samples <= 128 tokens: 2 packed bins, one micro-step per rank where
    # padding takes the 2 accumulation steps.
    work, launch = setup
    flags = ("--packing", "--packing_max_tokens", "256", "--group_by_length")
    reference = _succeeded(launch(work / "packed-reference", *flags))
    output_dir = work / "packed-resumed"
    resume = (*flags, "--resume_from_checkpoint", "auto")
    killed = launch(output_dir, *resume, env={"ALIGNER_FAULT_KILL": "1:7"})
    assert killed.returncode != 0
    finished = _succeeded(launch(output_dir, *resume))
    assert "after step 6" in finished.output
    _assert_same_training(output_dir, reference)
