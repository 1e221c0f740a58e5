"""``aligner data``: what it refuses before any work, and the one line it prints for each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aligner.commands.data import main as data_main
from aligner.commands.data import shorten
from tests.conftest import TEMPLATE_DATASET


@pytest.fixture
def run_data(llama_tokenizer_dir: Path, capsys: pytest.CaptureFixture[str]):
    """``run_data(*flags)`` runs ``aligner data`` on the tiny tokenizer: (exit code, stderr)."""

    def run(*flags: str | Path, train: str | Path = TEMPLATE_DATASET) -> tuple[int, str]:
        argv = ["--model_name_or_path", llama_tokenizer_dir, "--train_datasets", train, *flags]
        code = data_main([str(flag) for flag in argv])
        return code, capsys.readouterr().err.strip()

    return run


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_dump_never_replaces_an_input(run_data, tmp_path: Path) -> None:
    train = tmp_path / "train.json"
    train.write_bytes(TEMPLATE_DATASET.read_bytes())
    evaluation = tmp_path / "eval.json"
    evaluation.write_bytes(TEMPLATE_DATASET.read_bytes())
    before = _files(tmp_path)
    for dump in (train, evaluation):
        code, error = run_data(
            "--eval_datasets", f"correction-json::{evaluation}", "--dump", dump, "--overwrite",
            train=train,
        )  # fmt: skip
        assert code == 2
        assert error == (
            f"aligner data: error: --dump {dump}: is an input of this command ({dump.resolve()})"
        )
    assert _files(tmp_path) == before


def test_dump_replaces_an_existing_file_only_with_overwrite(run_data, tmp_path: Path) -> None:
    dump = tmp_path / "out" / "notes.jsonl"
    dump.parent.mkdir()
    dump.write_text("my notes\n")
    code, error = run_data("--dump", dump)
    assert code == 2
    assert error == (
        f"aligner data: error: --dump {dump} already exists: choose another file, or pass "
        "--overwrite"
    )
    assert dump.read_text() == "my notes\n"
    assert run_data("--dump", dump, "--overwrite")[0] == 0
    assert all("input_ids" in json.loads(line) for line in dump.read_text().splitlines())
    assert [p.name for p in dump.parent.iterdir()] == ["notes.jsonl"]  # no temporary file


def test_dump_to_a_folder_or_below_a_file_is_one_line(run_data, tmp_path: Path) -> None:
    folder = tmp_path / "samples"
    folder.mkdir()
    assert run_data("--dump", folder) == (
        2,
        f"aligner data: error: --dump {folder}: is a folder, not a file",
    )
    a_file = tmp_path / "notes.txt"
    a_file.write_text("notes")
    below = a_file / "samples.jsonl"
    assert run_data("--dump", below) == (
        2,
        f"aligner data: error: --dump {below}: {a_file} is not a folder",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "samples"]
    assert not list(folder.iterdir())


def test_unreadable_data_file_is_named_as_such(run_data, tmp_path: Path) -> None:
    # Reading /proc/self/mem at offset 0 fails with EIO for every user, root included, where
    # permission bits would not stop root.
    unreadable = tmp_path / "train.jsonl"
    unreadable.symlink_to("/proc/self/mem")
    assert run_data(train=unreadable) == (
        2,
        f"aligner data: error: {unreadable}: cannot read: Input/output error",
    )


def test_missing_data_file_says_no_such_file(run_data, tmp_path: Path) -> None:
    missing = tmp_path / "nosuch.jsonl"
    assert run_data(train=missing) == (
        2,
        f"aligner data: error: {missing}: no such file or folder (nor a registered dataset of "
        "that name)",
    )


@pytest.mark.parametrize(
    ("proportion", "message"),
    [
        ("0.1", "a proportion of 0.1 of 3 samples is 0 samples"),
        ("1e-9", "a proportion of 1e-09 of 3 samples is 0 samples"),
        ("inf", "the proportion must be a positive finite number, got 'inf'"),
    ],
)
def test_a_proportion_that_selects_nothing_is_one_line(
    run_data, tmp_path: Path, proportion: str, message: str
) -> None:
    three = tmp_path / "three-records.jsonl"
    record = {"question": "q", "answer": "a", "correction": "c"}
    three.write_text("".join(json.dumps(record) + "\n" for _ in range(3)))
    code, error = run_data(train=f"correction-json:{proportion}:{three}")
    assert code == 2
    assert error.startswith("aligner data: error: dataset spec ") and message in error
    assert len(error.splitlines()) == 1


def test_long_dataset_names_lose_their_middle() -> None:
    name = "correction-json:1:/data/projects/aligner/corrections/2026/train.jsonl"
    short = shorten(name, 40)
    assert len(short) == 40 and short.count("…") == 1
    assert short.startswith("correction-json:1:") and short.endswith("2026/train.jsonl")
    assert shorten("train.jsonl", 40) == "train.jsonl"


def test_the_table_shows_a_long_name_shortened(
    llama_tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    deep = tmp_path / ("x" * 60) / "train.json"
    deep.parent.mkdir()
    deep.write_bytes(TEMPLATE_DATASET.read_bytes())
    argv = ["--model_name_or_path", str(llama_tokenizer_dir), "--train_datasets", str(deep)]
    assert data_main(argv) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "…" in line]
    assert len(rows) == 1
    assert rows[0].split()[0] == shorten(f"correction-json:1:{deep}", 40)
