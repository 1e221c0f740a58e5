"""A chat aligner end to end: multi-turn records through the tokenizer's chat template on 2 CPU
ranks under ZeRO-3, on the 131k Tekken byte-level BPE, then ``aligner correct`` on the result."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.integration.conftest import COMMON_FLAGS, SCRIPT, clean_env, run_command

pytestmark = pytest.mark.integration

CONVERSATIONS = REPO_ROOT / "template-conversations.jsonl"
MARKERS = ("[INST]", "[/INST]", "</s>", "<s>")


@pytest.fixture(scope="module")
def tekken_model_dir(tekken_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny Llama over the Tekken vocabulary, with the tokenizer and its chat template."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from aligner.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(str(tekken_tokenizer_dir))
    config = AutoConfig.for_model(
        "llama",
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("tekken-llama")
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.mark.timeout(600)
def test_multi_turn_chat_run_trains_saves_and_corrects(tekken_model_dir: Path, tmp_path: Path):
    output_dir = tmp_path / "chat-run"
    command = ["bash", str(SCRIPT), "--num_gpus", "2", "--model_name_or_path"]
    command += [str(tekken_model_dir), "--train_datasets", str(CONVERSATIONS)]
    command += ["--output_dir", str(output_dir), *COMMON_FLAGS, "--prompt_template", "chat"]
    command += ["--system_prompt", "Correct the answer.", "--zero_stage", "3"]
    command += ["--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1"]
    run = run_command(command, clean_env(tmp_path), output_dir, timeout=540)
    assert run.returncode == 0, run.output[-4000:]
    assert "data: 4 training samples" in run.output
    losses = run.losses()
    assert len(losses) == 5 and losses[-1] < losses[0]

    from aligner.tokenizer import load_tokenizer

    saved = json.loads((output_dir / "prompt_template.json").read_text())
    assert saved["kind"] == "chat" and saved["system_prompt"] == "Correct the answer."
    assert saved["chat_template"] == load_tokenizer(str(tekken_model_dir)).chat_template

    corrected = tmp_path / "corrected.jsonl"
    command = [str(Path(sys.executable).parent / "aligner"), "correct"]
    command += ["--model_name_or_path", str(output_dir), "--input", str(CONVERSATIONS)]
    command += ["--output", str(corrected), "--max_new_tokens", "8"]
    result = run_command(command, clean_env(tmp_path), output_dir, timeout=300)
    assert result.returncode == 0, result.output[-4000:]
    records = [json.loads(line) for line in corrected.read_text().splitlines()]
    assert len(records) == 4 and sum("messages" in record for record in records) == 3
    for record in records:
        assert isinstance(record["correction"], str)
        assert not any(marker in record["correction"] for marker in MARKERS)

    # The eval loss renders the records through the checkpoint's chat template, as training did.
    report_file = tmp_path / "eval.json"
    command = [str(Path(sys.executable).parent / "aligner"), "eval", "--model_name_or_path"]
    command += [str(output_dir), "--eval_datasets", str(CONVERSATIONS), "--max_length", "128"]
    command += ["--output", str(report_file)]
    result = run_command(command, clean_env(tmp_path), output_dir, timeout=300)
    assert result.returncode == 0, result.output[-4000:]
    report = json.loads(report_file.read_text())["eval_loss"]
    assert report["template"] == "chat" and report["num_samples"] == 4
    assert 0 < report["loss"] < losses[0]
