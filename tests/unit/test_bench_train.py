"""The training benchmark's --modes and --model: parsed, and refused in one line before any work."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from benchmarks import train


def test_modes_are_parsed_in_the_order_given() -> None:
    assert train.parse_modes(" trl  padded, aligner padded,") == ["trl padded", "aligner padded"]


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--modes", "aligner padded,aligner sorted"], "unknown mode 'aligner sorted'"),
        (["--modes", "naive padded, naive padded"], "name each mode once"),
        (["--modes", "trl padded", "--skip_trl"], "--skip_trl"),
        (["--model", "no-such-folder"], "--model no-such-folder: no config.json"),
    ],
)
def test_a_bad_option_is_refused_in_one_line(
    argv: list[str], named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "work"
    assert train.main([*argv, "--work", str(work)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("bench-train: error: ") and named in line
    assert not work.exists()  # refused before any work


def test_real_names_the_cached_smollm2_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALIGNER_MODEL_CACHE", str(tmp_path))
    args = argparse.Namespace(model="real", modes="aligner padded", skip_trl=False)
    checked = train.check_options(args)
    assert checked.model == tmp_path / "SmolLM2-135M-Instruct" and checked.build_model
    assert checked.modes == ["aligner padded"]
    assert not (tmp_path / "SmolLM2-135M-Instruct").exists()  # built by the run, not the check


def test_without_modes_every_mode_runs_but_those_left_out() -> None:
    args = argparse.Namespace(model=None, modes=None, skip_trl=True)
    assert train.check_options(args).modes == [m for m in train.MODES if not m.startswith("trl")]
