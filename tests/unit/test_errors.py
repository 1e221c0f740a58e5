"""What every command prints for a usage mistake (two lines), and the one-line error it reports."""

from __future__ import annotations

import errno

import pytest

from aligner import cli
from aligner.errors import one_line


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
