"""Every command's config: each group is checked once, when the command line is parsed, and the
result is frozen."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from aligner.commands.data import prepare as prepare_data
from aligner.config import (
    AnswerConfig,
    ArgumentError,
    CorrectConfig,
    DataArgs,
    DataConfig,
    EvalConfig,
    ServeConfig,
    TrainConfig,
)

from ..conftest import TEMPLATE_DATASET

CORRECT = ["--model_name_or_path", "m", "--input", "i.jsonl", "--output", "o.jsonl"]
ANSWER = ["--input", "i.jsonl", "--output", "o.jsonl", "--model_name_or_path", "m"]
SERVE = ["--model_name_or_path", "m", "--upstream_url", "http://x/v1", "--upstream_model", "u"]
DATA = ["--model_name_or_path", "m", "--train_datasets", "d.jsonl"]


@pytest.mark.parametrize(
    ("config", "argv", "message"),
    [
        (CorrectConfig, [*CORRECT, "--rounds", "0"], "--rounds must be at least 1"),
        (CorrectConfig, [*CORRECT, "--top_p", "0.5"], "--top_p take effect only with --do_sample"),
        (
            CorrectConfig,
            [*CORRECT, "--aligner_url", "http://x/v1"],
            "give both --aligner_url and --aligner_model, or neither",
        ),
        (
            CorrectConfig,
            [
                *CORRECT,
                "--aligner_url",
                "http://x/v1",
                "--aligner_model",
                "a",
                "--aligner_timeout",
                "inf",
            ],
            "--aligner_timeout must be a finite number above 0",
        ),
        (AnswerConfig, [*ANSWER, "--max_new_tokens", "0"], "--max_new_tokens must be at least 1"),
        (
            AnswerConfig,
            [*ANSWER, "--upstream_model", "u", "--upstream_concurrency", "0"],
            "give both --upstream_url and --upstream_model",
        ),
        (ServeConfig, [*SERVE, "--max_messages", "0"], "--max_messages must be at least 1"),
        (
            ServeConfig,
            [*SERVE, "--upstream_retries", "-1"],
            "--upstream_retries must be a finite number, at least 0",
        ),
        (EvalConfig, ["--predictions", "p", "--tie_margin", "nan"], "--tie_margin must not be"),
        (EvalConfig, ["--predictions", "p", "--bootstrap_samples", "0"], "--bootstrap_samples"),
        (EvalConfig, ["--predictions", "p", "--judge_temperature", "-1"], "--judge_temperature"),
        (
            EvalConfig,
            ["--predictions", "p", "--max_length", "1"],
            "--max_length must be at least 2",
        ),
        (
            EvalConfig,
            ["--predictions", "p", "--batch_size", "0"],
            "--batch_size must be at least 1",
        ),
        (
            DataConfig,
            [*DATA, "--identity_warmup_ratio", "1.5"],
            "--identity_warmup_ratio must be in",
        ),
        (
            DataConfig,
            [*DATA, "--column_map", "question=q", "question=p"],
            "--column_map names field 'question' twice",
        ),
    ],
)
def test_a_bad_flag_is_refused_while_parsing(config, argv: list[str], message: str) -> None:
    with pytest.raises(ArgumentError, match=message):
        config.parse(argv)


def test_serve_retries_its_upstream_once_and_answer_five_times() -> None:
    assert ServeConfig.parse(SERVE).upstream.retries == 1
    assert AnswerConfig.parse(ANSWER).upstream.retries == 5


def test_each_command_config_is_frozen() -> None:
    config = CorrectConfig.parse(CORRECT)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.correction.rounds = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.generation = None


def test_the_data_flags_are_checked_once(
    llama_tokenizer_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    checks = []
    check = DataArgs.check
    monkeypatch.setattr(DataArgs, "check", lambda self: (checks.append(self), check(self))[1])
    data = ["--train_datasets", str(TEMPLATE_DATASET), "--data_cache_dir", str(tmp_path)]
    model = ["--model_name_or_path", str(llama_tokenizer_dir)]
    prepare_data(DataConfig.parse([*model, *data]))
    assert len(checks) == 1
    checks.clear()
    TrainConfig.parse([*model, *data, "--output_dir", str(tmp_path / "out")])
    assert len(checks) == 1
