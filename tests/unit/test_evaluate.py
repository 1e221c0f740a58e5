"""``aligner eval``: the target loss of a checkpoint and the metrics of a corrected file."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import datasets
import pytest
import torch

from aligner.commands import eval as eval_command
from aligner.config import EvalConfig
from aligner.constants import IGNORE_INDEX
from aligner.inference.checkpoint_loss import target_loss
from aligner.prompts import get_template
from aligner.tokenizer import load_tokenizer

CORRECTIONS = [
    {"question": "What is two plus two?", "answer": "Five.", "correction": "Four."},
    {"question": "Capital of France?", "answer": "Lyon.", "correction": "Paris, on the Seine."},
    {"question": "Is the sky green?", "answer": "Yes.", "correction": "No, usually it is blue."},
]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def model(tiny_checkpoint_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_checkpoint_dir).eval()


def test_target_loss_is_the_mean_over_every_target_token(model) -> None:
    # Two samples with different prompt and target lengths.
    samples = [([1, 10, 11, 12, 13, 2], 3), ([1, 20, 21, 22, 23, 24, 25, 26, 2], 6)]
    rows = {
        "input_ids": [ids for ids, _ in samples],
        "labels": [[IGNORE_INDEX] * n + ids[n:] for ids, n in samples],
        "length": [len(ids) for ids, _ in samples],
    }
    dataset = datasets.Dataset.from_dict(rows)
    # Reference: transformers' own per-sample loss, a mean over that sample's targets.
    total, count = 0.0, 0
    for ids, labels in zip(rows["input_ids"], rows["labels"], strict=True):
        with torch.no_grad():
            loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
        targets = sum(label != IGNORE_INDEX for label in labels[1:])
        total, count = total + loss.item() * targets, count + targets
    for batch_size in (1, 2):
        report = target_loss(model, dataset, pad_token_id=0, batch_size=batch_size)
        assert report["num_target_tokens"] == count == 3 + 3
        assert report["loss"] == pytest.approx(total / count, rel=1e-5)
        assert report["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)


def test_eval_reports_the_metrics_of_a_corrected_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = [
        {
            "id": 0,
            "question": "q",
            "answer": "the sky is green",
            "correction": "the sky is blue",
            "reference_correction": "the sky is blue",
        },
        {
            "id": 1,
            "question": "q",
            "answer": "a b c",
            "correction": "a b c",
            "reference_correction": "a c",
        },
        {"id": 2, "question": "q", "answer": "x", "correction": "", "reference_correction": None},
    ]
    predictions = write_jsonl(tmp_path / "corrected.jsonl", records)
    output = tmp_path / "report" / "eval.json"
    assert eval_command.main(["--predictions", str(predictions), "--output", str(output)]) == 0
    report = json.loads(output.read_text())["predictions"]
    assert report["num_records"] == 3
    assert report["copy_rate"] == pytest.approx(1 / 3)
    assert report["mean_edit_distance"] == pytest.approx((1 + 0 + 1) / 3)
    assert report["num_references"] == 2
    assert report["exact_match"] == pytest.approx(0.5)
    assert report["rouge_l"] == pytest.approx((1.0 + 0.8) / 2)
    # Answers of 4, 3 and 1 words, corrections of 4, 3 and 0: none longer.
    assert (report["mean_answer_words"], report["mean_correction_words"]) == (8 / 3, 7 / 3)
    assert report["longer_rate"] == 0.0
    assert "mean length 2.7 words answered, 2.3 corrected" in capsys.readouterr().err


def test_eval_reports_the_loss_of_a_checkpoint(tiny_checkpoint_dir: Path, tmp_path: Path) -> None:
    from aligner.datasets.encode import SampleEncoder

    data = write_jsonl(tmp_path / "test.jsonl", CORRECTIONS)
    output = tmp_path / "eval.json"
    argv = ["--model_name_or_path", str(tiny_checkpoint_dir), "--eval_datasets", str(data)]
    assert eval_command.main([*argv, "--output", str(output), "--batch_size", "2"]) == 0
    report = json.loads(output.read_text())["eval_loss"]
    tokenizer = load_tokenizer(str(tiny_checkpoint_dir))
    columns = {key: [r[key] for r in CORRECTIONS] for key in CORRECTIONS[0]}
    labels = SampleEncoder(tokenizer, get_template(), max_length=2048)(columns)["labels"]
    assert report["num_samples"] == len(CORRECTIONS)
    assert report["num_target_tokens"] == sum(
        sum(label != IGNORE_INDEX for label in row) for row in labels
    )
    # A random model over a 32k vocabulary is close to uniform: loss near log(32000).
    assert 0.5 * math.log(32000) < report["loss"] < 2 * math.log(32000)
    assert report["perplexity"] == pytest.approx(math.exp(report["loss"]))
    assert report["template"] == "correction"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "nothing to evaluate"),
        (["--eval_datasets", "x.jsonl"], "needs both --model_name_or_path and --eval_datasets"),
        (["--predictions", "missing.jsonl"], "missing.jsonl: no such file"),
        (["--reward_model", "rm"], "pass it as --predictions"),
        (["--predictions", "p.jsonl", "--judge_url", "http://h/v1"], "both --judge_url and"),
        (
            ["--predictions", "p.jsonl", "--judge_model", "m", "--judge_url", "http://u:pw@h/v1"],
            "must not hold credentials",
        ),
        (["--predictions", "p.jsonl", "--judge_model", "m", "--judge_url", "h:80"], "base URL"),
        (
            ["--predictions", "p.jsonl", "--reward_model", "rm", "--scores_output", "p.jsonl"],
            "must be different files",
        ),
        (["--predictions", "p.jsonl", "--tie_margin", "-1"], "--tie_margin must not be negative"),
        (["--predictions", "p.jsonl", "--output", "/dev/null"], "is not a regular file"),
        (
            ["--model_name_or_path", "m", "--eval_datasets", "e.jsonl", "--max_length", "1"],
            "--max_length must be at least 2, got 1",
        ),
    ],
)
def test_eval_user_errors_are_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert eval_command.main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("aligner eval: error:") and message in error
    assert len(error.splitlines()) == 1


def test_a_reference_field_no_record_has_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = [{"id": 0, "question": "q", "answer": "a", "correction": "b", "gold": None}]
    predictions = write_jsonl(tmp_path / "corrected.jsonl", records)
    for field in ("golden", "gold"):  # absent from the file, and present but null everywhere
        argv = ["--predictions", str(predictions), "--reference_field", field]
        assert eval_command.main(argv) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith("aligner eval: error:") and len(error.splitlines()) == 1
        assert str(predictions) in error and repr(field) in error and "--reference_field" in error
    # Without the flag, records without references are fine: the default field is optional.
    assert eval_command.main(["--predictions", str(predictions)]) == 0


def test_eval_fills_in_its_default_outputs_without_changing_the_parsed_config(
    tmp_path: Path,
) -> None:
    predictions = tmp_path / "p.jsonl"
    config = EvalConfig.parse(["--predictions", str(predictions), "--reward_model", "rm"])
    plan = eval_command.prepare(config)
    assert plan.config.scores_output == str(tmp_path / "p.scores.jsonl")
    assert config.scores_output is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.scoring.scores_output = "elsewhere.jsonl"
