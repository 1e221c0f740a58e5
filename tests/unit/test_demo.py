"""The demo's correction generator: seeded, learnable errors, and the bundled files it wrote."""

from __future__ import annotations

import json

import pytest

from aligner.demo import (
    CAPITALS,
    DEMO_EVAL_FILE,
    DEMO_EVAL_SEED,
    DEMO_EVAL_SIZE,
    DEMO_TRAIN_FILE,
    DEMO_TRAIN_SEED,
    DEMO_TRAIN_SIZE,
    MAX_ADDEND,
    main,
    make_demo_records,
    score_corrections,
)


def test_same_seed_same_records_other_seed_other_records() -> None:
    assert make_demo_records(50, 3) == make_demo_records(50, 3)
    assert make_demo_records(50, 3) != make_demo_records(50, 4)


def test_corrections_are_right_and_some_answers_are_copied() -> None:
    records = make_demo_records(400, 0)
    copied = sum(r["answer"] == r["correction"] for r in records)
    assert 0.15 < copied / len(records) < 0.35
    for record in records:
        question, correction = record["question"], record["correction"]
        if question.startswith("What is the capital of "):
            country = question.removeprefix("What is the capital of ").rstrip("?")
            assert correction == f"The capital of {country} is {CAPITALS[country]}."
        elif " plus " in question:
            a, b = (int(x) for x in question.removeprefix("What is ").rstrip("?").split(" plus "))
            assert correction == f"{a} plus {b} is {a + b}."
            assert 1 <= a <= MAX_ADDEND and 1 <= b <= MAX_ADDEND
        else:
            assert correction[0].isupper() and correction.endswith(".")


def test_bundled_files_are_the_generator_output() -> None:
    for path, size, seed in (
        (DEMO_TRAIN_FILE, DEMO_TRAIN_SIZE, DEMO_TRAIN_SEED),
        (DEMO_EVAL_FILE, DEMO_EVAL_SIZE, DEMO_EVAL_SEED),
    ):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert rows == make_demo_records(size, seed)


def corrected(question: str, answer: str, correction: str, reference: str) -> dict[str, str]:
    return {
        "question": question,
        "answer": answer,
        "correction": correction,
        "reference_correction": reference,
    }


CORRECTED = [
    # A wrong capital fixed, a right one copied, a wrong sum copied, a sentence fixed.
    corrected(
        "What is the capital of Peru?",
        "The capital of Peru is Oslo.",
        "The capital of Peru is Lima.",
        "The capital of Peru is Lima.",
    ),
    corrected(
        "What is the capital of Peru?",
        "The capital of Peru is Lima.",
        "The capital of Peru is Lima.",
        "The capital of Peru is Lima.",
    ),
    corrected("What is 2 plus 3?", "2 plus 3 is 6.", "2 plus 3 is 6.", "2 plus 3 is 5."),
    corrected(
        "Repeat this as a proper sentence: the sun is a star",
        "the sun is a star",
        "The sun is a star.",
        "The sun is a star.",
    ),
]


def test_scores_count_accuracy_before_and_after_and_copies_apart() -> None:
    scores = score_corrections(CORRECTED)
    assert scores["all"] == {
        "answers": 4,
        "accuracy_before": 0.25,
        "accuracy_after": 0.75,
        "copy_rate_right": 1.0,
        "copy_rate_wrong": 1 / 3,
    }
    assert scores["capital"]["accuracy_before"] == 0.5
    assert scores["capital"]["accuracy_after"] == 1.0
    assert scores["sum"]["accuracy_after"] == 0.0 and scores["sum"]["copy_rate_wrong"] == 1.0
    assert scores["sentence"]["accuracy_after"] == 1.0


def test_report_prints_a_table_and_writes_the_scores(
    tmp_path, capsys: pytest.CaptureFixture
) -> None:
    path = tmp_path / "corrected.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in CORRECTED))
    assert main(["report", str(path), "--output", str(tmp_path / "scores.json")]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].split()[:3] == ["kind", "answers", "accuracy"]
    assert rows[-1].split() == ["all", "4", "25%", "75%", "100%", "33%"]
    assert json.loads((tmp_path / "scores.json").read_text()) == score_corrections(CORRECTED)
