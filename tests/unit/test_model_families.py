"""Every model family in one process, without DeepSpeed: the attention kernel, embedding rows, and
a save that keeps tied embeddings tied, reloads with the same logits and corrects."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from aligner.config import ArgumentError, TrainConfig
from aligner.errors import UserError
from aligner.model_files import CheckpointError
from aligner.tiny import FAMILIES
from aligner.training.model import load_model_to_train, plan_model
from tests.conftest import saved_tensors, with_corrupt_bin_weights

REFUSES_SDPA = {"gemma2"}
"""transformers has no sdpa path for Gemma 2 (its attention logits are soft-capped)."""


def _args(model_dir: Path, *flags: str):
    required = ["--train_datasets", "d.jsonl", "--output_dir", "o"]
    return TrainConfig.parse(["--model_name_or_path", str(model_dir), *required, *flags])


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
    with pytest.raises(UserError) as error:
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


@pytest.fixture(scope="module")
def saved(tiny_model, tiny_tokenizer, tmp_path_factory: pytest.TempPathFactory):
    """``saved(family, dtype)``: the family's tiny model, in ``dtype``, written by save_model
    as training writes it (once per module); returns the model and the folder."""
    from transformers import AutoModelForCausalLM

    from aligner.prompts import get_template
    from aligner.training.export import save_model

    folders: dict[tuple[str, torch.dtype], tuple] = {}

    def save(family: str, dtype: torch.dtype):
        if (family, dtype) not in folders:
            model_dir = tiny_model(family)
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
            out = save_model(
                model,
                tmp_path_factory.mktemp(f"saved-{family}") / "model",
                tokenizer=tiny_tokenizer(family),
                template=get_template(),
                training_args={},
                fp32_master=False,
                rank=0,
            )
            folders[family, dtype] = model, out
        return folders[family, dtype]

    return save


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("family", FAMILIES)
def test_saved_model_reloads_tied_in_its_dtype_with_the_same_logits(
    saved, tiny_model, family: str, dtype: torch.dtype
) -> None:
    from transformers import AutoModelForCausalLM

    model, out = saved(family, dtype)
    tensors = saved_tensors(out)
    assert tensors.keys() == saved_tensors(tiny_model(family)).keys()
    assert {kind for kind, _ in tensors.values()} == {"BF16" if dtype == torch.bfloat16 else "F32"}
    # A tied model's file holds its embedding matrix once; an untied one's input and output.
    tied = FAMILIES[family].tie_word_embeddings
    vocab_rows = model.get_input_embeddings().num_embeddings
    assert sum(rows == vocab_rows for _, rows in tensors.values()) == (1 if tied else 2)
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert reloaded.dtype == dtype
    output_rows = reloaded.get_output_embeddings().weight
    input_rows = reloaded.get_input_embeddings().weight
    assert (output_rows is input_rows) == tied
    assert torch.equal(output_rows, input_rows) == tied
    ids = torch.tensor([[1, 20, 30, 40, 50, 60]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_correct_generates_from_the_saved_folder(saved, family: str, tmp_path: Path) -> None:
    from aligner.commands import correct

    _, out = saved(family, torch.float32)
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"question": "What is 2 + 2?", "answer": "5."}) + "\n")
    corrected = tmp_path / "out.jsonl"
    flags = ["--input", str(source), "--output", str(corrected), "--max_new_tokens", "4"]
    assert correct.main(["--model_name_or_path", str(out), *flags]) == 0
    (record,) = [json.loads(line) for line in corrected.read_text().splitlines()]
    assert isinstance(record["correction"], str) and record["answer"] == "5."


# Random bytes seeded so that torch's weights-only unpickler fails in each of the ways it can:
# UnpicklingError (seed 0), IndexError (2), KeyError (20), UnicodeDecodeError (195).
@pytest.mark.parametrize("kind", ["random-0", "random-2", "random-20", "random-195", "code"])
def test_corrupt_pickled_weights_are_one_line_and_never_run(
    tiny_model, tiny_tokenizer, tmp_path: Path, kind: str
) -> None:
    marker = tmp_path / "the-payload-ran"
    model_dir = with_corrupt_bin_weights(tiny_model("llama"), tmp_path / "model", kind, marker)
    with pytest.raises(CheckpointError) as error:
        load_model_to_train(_args(model_dir), torch.float32, 0, len(tiny_tokenizer("llama")))
    assert str(error.value) == (
        f"--model_name_or_path {model_dir}: {model_dir / 'pytorch_model.bin'} does not load as "
        "PyTorch weights (corrupt, or a pickle holding code, which was not run)"
    )
    assert not marker.exists()
