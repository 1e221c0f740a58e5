"""Hub datasets through ``datasets.load_dataset``, offline: a local folder laid out like a Hub
dataset repository (data files and a README whose ``configs`` name them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aligner.commands.data import main as data_main
from aligner.datasets import DataError, parse_dataset_spec
from aligner.datasets.correction import _root_cause
from aligner.datasets.pipeline import build_dataset
from aligner.prompts import get_template

CARD = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: "general/train.jsonl"
  - split: test
    path: "general/test.jsonl"
- config_name: empathy
  data_files:
  - split: train
    path: "empathy/train.jsonl"
---
# A correction dataset
"""


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def record(n: int, **extra) -> dict:
    return {"question": f"Q{n}?", "answer": f"wrong {n}", "correction": f"right {n}", **extra}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A Hub-style dataset repository in the aligner-20K schema."""
    folder = tmp_path / "aligner-like"
    (folder).mkdir()
    (folder / "README.md").write_text(CARD)
    write_jsonl(folder / "general" / "train.jsonl", [record(0), record(1)])
    write_jsonl(folder / "general" / "test.jsonl", [record(2)])
    conversation = {
        "messages": [{"role": "user", "content": "Hi"}],
        "answer": "Go away.",
        "correction": "Hello! How can I help?",
    }
    write_jsonl(folder / "empathy" / "train.jsonl", [conversation])
    return folder


def corrections(specs: list[str], tokenizer, **kwargs) -> list[str]:
    dataset, _ = build_dataset(specs, tokenizer, get_template(), max_length=128, **kwargs)
    texts = [
        tokenizer.decode(
            [t for t, lab in zip(r["input_ids"], r["labels"], strict=True) if lab != -100],
            skip_special_tokens=True,
        )
        for r in dataset
    ]
    return sorted(texts)


def test_a_bare_repository_folder_is_a_hub_dataset(repo: Path) -> None:
    spec = parse_dataset_spec(str(repo))
    assert (spec.name, spec.path) == ("correction-hub", str(repo))
    assert parse_dataset_spec("PKU-Alignment/aligner-20K@train").name == "correction-hub"
    assert parse_dataset_spec("correction-json::x.jsonl").name == "correction-json"


def test_splits_and_configs_are_selected(repo: Path, llama_tokenizer) -> None:
    assert corrections([str(repo)], llama_tokenizer) == ["right 0", "right 1"]
    assert corrections([f"correction-hub::{repo}@test"], llama_tokenizer) == ["right 2"]
    assert corrections([f"correction-hub::{repo}#empathy"], llama_tokenizer) == [
        "Hello! How can I help?"
    ]


def test_columns_are_mapped_onto_the_record_schema(tmp_path: Path, llama_tokenizer) -> None:
    folder = tmp_path / "other-schema"
    folder.mkdir()
    rows = [{"prompt": "Q?", "response": "no", "revised": "yes", "question": "unused"}]
    write_jsonl(folder / "data" / "train.jsonl", rows)
    mapping = {"question": "prompt", "answer": "response", "correction": "revised"}
    assert corrections([str(folder)], llama_tokenizer, column_map=mapping) == ["yes"]
    missing = r"missing column 'answer_text' \(mapped to 'answer'\); its columns: prompt,"
    with pytest.raises(DataError, match=missing):
        corrections([str(folder)], llama_tokenizer, column_map={"answer": "answer_text"})
    with pytest.raises(DataError, match=r"row 0 \(0-based\): missing field 'answer'"):
        corrections([str(folder)], llama_tokenizer)


@pytest.mark.parametrize(
    ("suffix", "message"),
    [("@validation", 'Unknown split "validation"'), ("#nope", "BuilderConfig 'nope' not found")],
)
def test_unknown_split_or_config_is_one_line(repo, llama_tokenizer, suffix, message) -> None:
    with pytest.raises(DataError, match=message) as error:
        corrections([f"correction-hub::{repo}{suffix}"], llama_tokenizer)
    assert "\n" not in str(error.value)


def test_data_command_reads_a_hub_folder_with_a_column_map(
    tmp_path: Path, llama_tokenizer_dir, capsys
) -> None:
    folder = tmp_path / "mapped"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [{"q": "Q?", "a": "no", "c": "yes"}])
    args = ["--train_datasets", str(folder), "--model_name_or_path", str(llama_tokenizer_dir)]
    args += ["--column_map", "question=q", "answer=a", "correction=c"]
    assert data_main(args) == 0
    assert "tokens per sample (1 training samples)" in capsys.readouterr().out


@pytest.mark.parametrize("files", [[], ["README.md"], ["README.md", ".git/config"]])
def test_a_folder_without_data_files_is_one_line_without_library_internals(
    tmp_path: Path, llama_tokenizer, files: list[str]
) -> None:
    folder = tmp_path / "no-data"
    folder.mkdir()
    for name in files:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("# a card\n")
    with pytest.raises(DataError) as error:
        corrections([f"correction-hub::{folder}"], llama_tokenizer)
    assert str(error.value) == (
        f"{folder}: no data file in this folder (a dataset folder holds .jsonl, .json, .csv or "
        ".parquet files, or a README.md whose configs name them)"
    )


def test_library_errors_lose_their_object_reprs_and_log_lines(
    tmp_path: Path, llama_tokenizer, capfd
) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"question": "q", broken\n')
    with pytest.raises(DataError, match=r"broken: cannot load: "):
        corrections([str(folder)], llama_tokenizer)
    assert "<class" not in capfd.readouterr().err
    resolver = "functools.partial(<function resolve_pattern at 0x7f8832930400>, base_path='/x')"
    error = FileNotFoundError(f"Couldn't resolve pattern ** with resolver {resolver}")
    try:
        raise RuntimeError("An error occurred while generating the dataset") from error
    except RuntimeError as wrapped:
        assert _root_cause(wrapped) == "Couldn't resolve pattern **"
