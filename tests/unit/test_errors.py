"""What every command prints for a usage mistake (two lines), and the one-line error it reports."""

from __future__ import annotations

import errno
import runpy
import sys
from pathlib import Path

import pytest

from aligner import cli
from aligner.errors import one_line

from ..conftest import REPO_ROOT


@pytest.mark.parametrize(
    ("argv", "required"),
    [
        (
            ["train", "--lr", "1e-4"],
            "--model_name_or_path ... --train_datasets ... --output_dir ...",
        ),
        (["data", "--bogus"], "--model_name_or_path ... --train_datasets ..."),
        (["correct"], "--model_name_or_path ... --input ... --output ..."),
        (["eval", "--batch_size", "x"], ""),
    ],
)
def test_a_usage_mistake_is_one_usage_line_and_the_error(
    argv: list[str], required: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    usage, error = capsys.readouterr().err.splitlines()
    prog = f"aligner {argv[0]}"
    assert (
        usage == f"usage: {' '.join(filter(None, [prog, required]))} [options] (see {prog} --help)"
    )
    assert error.startswith(f"{prog}: error: ")


def test_help_still_lists_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--help"])
    assert exit_.value.code == 0
    assert "--adam_beta1" in capsys.readouterr().out


def test_one_line_drops_errno_numbers_and_extra_lines() -> None:
    full = OSError(errno.ENOSPC, "No space left on device", "/data/out.jsonl")
    assert one_line(full) == "/data/out.jsonl: No space left on device"
    assert one_line(ValueError("first line\n  details the user need not see")) == "first line"
    assert one_line(RuntimeError()) == "RuntimeError"


PACKAGE = Path(cli.__file__).parent
ENTRY_POINTS = [
    "aligner",  # aligner/__main__.py
    *sorted(
        ".".join(path.relative_to(folder.parent).with_suffix("").parts)
        for folder in (PACKAGE, REPO_ROOT / "benchmarks")
        for path in folder.rglob("*.py")
        if 'if __name__ == "__main__":' in path.read_text(encoding="utf-8")
    ),
]


def test_the_entry_points_include_every_command_and_tool() -> None:
    assert {
        "aligner.cli",
        "aligner.tiny",
        "aligner.demo",
        "aligner.commands.train",
        "benchmarks.train",
        "benchmarks.gpu_check",
    } <= set(ENTRY_POINTS)


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")
@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_every_module_entry_point_answers_help(
    module: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", [module, "--help"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module(module, run_name="__main__")  # as python -m MODULE --help runs it
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("usage:")


def test_a_bare_aligner_prints_usage_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("usage: aligner <command> [options]") and not captured.out
