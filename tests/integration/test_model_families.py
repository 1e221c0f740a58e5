"""Model families end to end: one 2-rank ZeRO-3 run with gradient checkpointing per family where
families differ (tied or untied embeddings, split or fused projections, soft-capping), each run
shared by every property below; and the refusals a user meets before any rank trains."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from aligner.tiny import FAMILIES
from tests.conftest import saved_tensors
from tests.integration.conftest import Run, assert_probe_matches
from tests.integration.test_training import _assert_succeeded
from tests.integration.test_training_efficiency import LORA

pytestmark = pytest.mark.integration

ZERO3 = (
    "--zero_stage 3 --per_device_train_batch_size 4 --gradient_accumulation_steps 1 "
    "--gradient_checkpointing True"
).split()
BF16 = ["--bf16", "True"]
FAMILY_RUNS = {
    # Tied embeddings of the 131k Tekken BPE with 64 spare rows, q/k/v biases; fp32.
    "qwen2": [],
    # Tied, soft-capped logits and attention, sliding window, eager attention, packed rows; bf16,
    # saved in bf16 (the default); 100 embedding rows short of the tokenizer, grown.
    "gemma2": [*BF16, "--packing", "--packing_max_tokens", "128", "--resize_embeddings"],
    # The Tekken BPE, fused query_key_value and dense_h_to_4h, parallel residual, untied
    # embed_out: LoRA on the family's default targets in bf16, the adapter saved alone from the
    # fp32 master weights.
    "gpt_neox": [*LORA, *BF16, "--save_fp32"],
}
"""Phi-3's fused projections train on 2 ranks in test_training_efficiency's LoRA test; the other
families run in one process, in the unit tests: a 2-rank run costs half a minute to a minute."""
TIED = [family for family in FAMILY_RUNS if FAMILIES[family].tie_word_embeddings]
RESIZED = [family for family, flags in FAMILY_RUNS.items() if "--resize_embeddings" in flags]
SHORT_ROWS = 100


def _short_embedding_copy(model_dir: Path, work: Path) -> Path:
    """``model_dir`` with SHORT_ROWS fewer embedding rows than its tokenizer has tokens."""
    import shutil

    from transformers import AutoConfig, AutoModelForCausalLM

    copy = work / f"{model_dir.name}-short-embeddings"
    shutil.copytree(model_dir, copy)
    config = AutoConfig.from_pretrained(copy)
    config.vocab_size -= SHORT_ROWS
    AutoModelForCausalLM.from_config(config).save_pretrained(copy)
    return copy


@pytest.fixture(scope="module")
def family_run(train, tiny_model, tmp_path_factory: pytest.TempPathFactory):
    """``family_run(family)``: that family's shared 2-rank run."""

    def run(family: str) -> Run:
        model = tiny_model(family)
        if family in RESIZED:
            model = _short_embedding_copy(model, tmp_path_factory.mktemp("short"))
        return train(f"family-{family}", *ZERO3, *FAMILY_RUNS[family], model=model)

    return run


def _reload(run: Run, family: str):
    """The saved folder loaded as a user would, in the precision the engine trained in (a
    --save_fp32 folder holds fp32 master weights, which round to the engine's bf16 ones)."""
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if "--bf16" in FAMILY_RUNS[family] else torch.float32
    return AutoModelForCausalLM.from_pretrained(run.output_dir, dtype=dtype).eval()


@pytest.mark.timeout(900)
@pytest.mark.parametrize("family", FAMILY_RUNS)
def test_zero3_run_saves_a_folder_that_reloads_with_the_engine_logits(
    family_run, family: str
) -> None:
    run = family_run(family)
    _assert_succeeded(run)
    losses = run.losses()
    assert len(losses) == 5 and all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0] - 0.05
    arguments = json.loads((run.output_dir / "training_args.json").read_text())
    assert arguments["gradient_checkpointing"] is True and arguments["zero_stage"] == 3
    if "--packing" in FAMILY_RUNS[family]:
        assert all(row["padding_share"] == 0 for row in run.metrics() if "train_loss" in row)
    # Equal weights: fp32 logits agree to rounding, bf16 ones to one bf16 step (2**-7 relative)
    # where the engine's reduction order differs from the reloaded model's.
    tolerance = 1e-2 if "--bf16" in FAMILY_RUNS[family] else 1e-5
    assert_probe_matches(run, _reload(run, family), tolerance=tolerance)


@pytest.mark.timeout(900)
@pytest.mark.parametrize(("family", "saved_dtype"), [("gemma2", "BF16"), ("gpt_neox", "F32")])
def test_bf16_run_saves_bf16_unless_fp32_master_weights_are_asked_for(
    family_run, family: str, saved_dtype: str
) -> None:
    from safetensors.torch import load_file

    run = family_run(family)
    _assert_succeeded(run)
    assert {dtype for dtype, _ in saved_tensors(run.output_dir).values()} == {saved_dtype}
    config = run.output_dir / "config.json"  # an adapter's folder has none
    if config.is_file():
        expected = {"BF16": "bfloat16", "F32": "float32"}[saved_dtype]
        assert json.loads(config.read_text())["dtype"] == expected
    if saved_dtype == "F32":  # the optimizer's master weights, not bf16 weights widened
        (weights,) = [load_file(path) for path in run.output_dir.glob("*.safetensors")]
        assert any(not torch.equal(w, w.bfloat16().float()) for w in weights.values())


@pytest.mark.timeout(900)
@pytest.mark.parametrize("family", TIED)
def test_tied_embeddings_stay_tied_after_the_zero3_save(family_run, family: str) -> None:
    run = family_run(family)
    _assert_succeeded(run)
    model = _reload(run, family)
    rows = model.get_input_embeddings().num_embeddings
    assert sum(count == rows for _, count in saved_tensors(run.output_dir).values()) == 1
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert model.config.tie_word_embeddings


@pytest.mark.timeout(900)
@pytest.mark.parametrize("family", FAMILY_RUNS)
def test_correct_generates_from_the_saved_folder(family_run, family: str, tmp_path: Path) -> None:
    from aligner.commands import correct

    run = family_run(family)
    _assert_succeeded(run)
    flags = FAMILY_RUNS[family]
    is_adapter = (run.output_dir / "adapter_config.json").is_file()
    assert is_adapter == ("--lora_r" in flags and "--lora_merge" not in flags)
    source = tmp_path / "in.jsonl"
    records = [{"question": "What is 2 + 2?", "answer": "5."}, {"question": "Hi", "answer": ""}]
    source.write_text("".join(json.dumps(record) + "\n" for record in records))
    corrected = tmp_path / "out.jsonl"
    flags = ["--input", str(source), "--output", str(corrected), "--max_new_tokens", "4"]
    assert correct.main(["--model_name_or_path", str(run.output_dir), *flags]) == 0
    lines = [json.loads(line) for line in corrected.read_text().splitlines()]
    assert [line["answer"] for line in lines] == ["5.", ""]
    assert all(isinstance(line["correction"], str) for line in lines)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("family", RESIZED)
def test_embeddings_grown_under_zero3_cover_the_tokenizer(family_run, family: str) -> None:
    run = family_run(family)
    _assert_succeeded(run)
    tokens = len(_tokenizer(run.output_dir))
    rows = tokens - SHORT_ROWS
    grown = -(-tokens // 64) * 64
    assert f"{rows} embedding rows for {tokens} tokens, resized to {grown}" in run.output
    model = _reload(run, family)
    assert model.get_input_embeddings().num_embeddings == grown == model.config.vocab_size
    assert model.get_output_embeddings().weight.shape[0] == grown


def _tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("family", "case", "message"),
    [
        (
            "gemma2",
            ["--attn_implementation", "sdpa"],
            "--attn_implementation sdpa: Gemma2ForCausalLM does not support an attention "
            "implementation through torch.nn.functional.scaled_dot_product_attention yet; leave "
            "the flag out",
        ),
        ("llama", ["short-embeddings"], "the tokenizer has 32000 tokens but the model only 31900"),
    ],
)
def test_a_model_that_cannot_train_as_asked_is_one_line_before_any_rank_trains(
    tiny_model,
    train_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    family: str,
    case: list[str],
    message: str,
) -> None:
    from aligner.commands.train import main

    model_dir = tiny_model(family)
    flags = case
    if case == ["short-embeddings"]:
        model_dir, flags = _short_embedding_copy(model_dir, tmp_path), []
    one_rank = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    for name, value in {**one_rank, "MASTER_PORT": "29555"}.items():
        monkeypatch.setenv(name, value)  # no process group is joined before the check
    paths = ["--train_datasets", str(train_file), "--output_dir", str(tmp_path / "out")]
    capsys.readouterr()
    status = main(["--model_name_or_path", str(model_dir), *paths, *flags])
    assert status == 2
    output = capsys.readouterr()
    assert "Traceback" not in output.err + output.out
    errors = [line for line in output.err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("aligner train: error: "), errors
    assert message in errors[0]
    assert not (tmp_path / "out" / "config.json").exists()
