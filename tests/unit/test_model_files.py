"""Where a model is read from: a name that can only be a missing folder is refused in one line
before transformers takes it for a Hub id."""

from __future__ import annotations

from pathlib import Path

import pytest

from aligner.errors import UserError
from aligner.model_files import check_source, load_failure
from aligner.tokenizer import load_tokenizer


@pytest.mark.parametrize(
    "name", ["./missing", "../missing", "/no/such/model", "~/missing", "a/b/c"]
)
def test_a_name_only_a_folder_can_have_is_refused_when_missing(name: str) -> None:
    with pytest.raises(UserError, match=f"^--model_name_or_path {name}: no such folder$"):
        check_source(name, "--model_name_or_path")


def test_a_file_is_not_a_model_folder(llama_tokenizer_dir: Path) -> None:
    file = llama_tokenizer_dir / "tokenizer.json"
    with pytest.raises(UserError, match=": is a file, not a model folder$"):
        check_source(str(file), "--upstream_tokenizer")


@pytest.mark.parametrize("name", ["org/model", "model-7b", "Org.Name/v1.0_x"])
def test_hub_ids_and_folders_go_through(name: str, llama_tokenizer_dir: Path) -> None:
    check_source(name, "--model_name_or_path")  # a Hub id: transformers resolves it
    check_source(str(llama_tokenizer_dir), "--model_name_or_path")


def test_a_hub_id_that_fails_also_says_no_folder_has_that_name(tmp_path: Path) -> None:
    error = OSError("We couldn't connect to 'https://huggingface.co' to load the files. More text")
    line = load_failure("output/sft", "--model_name_or_path", error, ("config.json",))
    assert line == (
        "--model_name_or_path output/sft: We couldn't connect to 'https://huggingface.co' to "
        "load the files (and no folder output/sft exists here)"
    )
    (tmp_path / "config.json").write_text("{}")
    assert "exists here" not in load_failure(str(tmp_path), "--model_name_or_path", error, ())


def test_a_folder_without_the_files_a_load_needs_says_so(tiny_llama_dir: Path, tmp_path: Path):
    import shutil

    from aligner.config import TrainConfig
    from aligner.training.model import plan_model

    with pytest.raises(
        UserError,
        match=r"^--model_name_or_path \S+: the folder holds no file it needs \(tokenizer.json, "
        r"tokenizer.model, tekken.json, vocab.json, vocab.txt\)$",
    ):
        load_tokenizer(str(tmp_path))
    weights_only = tmp_path / "weights-only"
    shutil.copytree(tiny_llama_dir, weights_only)
    (weights_only / "config.json").unlink()
    flags = ["--train_datasets", "d.jsonl", "--output_dir", "o"]
    config = TrainConfig.parse(["--model_name_or_path", str(weights_only), *flags])
    with pytest.raises(UserError, match=r": the folder holds no config.json$"):
        plan_model(config, tokenizer_size=1000)


def test_a_missing_tokenizer_folder_is_one_line() -> None:
    with pytest.raises(UserError, match=r"^--upstream_tokenizer \./gone: no such folder$"):
        load_tokenizer("./gone", flag="--upstream_tokenizer")


def test_truncated_weights_fail_the_training_load_in_one_line(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    import shutil

    import torch

    from aligner.config import TrainConfig
    from aligner.model_files import CheckpointError
    from aligner.training.model import load_model_to_train, plan_model

    model = tmp_path / "cut-short"
    shutil.copytree(tiny_llama_dir, model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    flags = ["--model_name_or_path", str(model), "--train_datasets", "d.jsonl", "--output_dir", "o"]
    config = TrainConfig.parse(flags)
    plan_model(config, tokenizer_size=1000)  # the config alone is sound
    with pytest.raises(CheckpointError, match=rf"^--model_name_or_path {model}: [^\n]+$"):
        load_model_to_train(config, torch.float32, local_rank=0, tokenizer_size=1000)
