"""The demo's correction generator: seeded, learnable errors, and the bundled files it wrote."""

from __future__ import annotations

import json

from aligner.demo import (
    CAPITALS,
    DEMO_EVAL_FILE,
    DEMO_EVAL_SEED,
    DEMO_EVAL_SIZE,
    DEMO_TRAIN_FILE,
    DEMO_TRAIN_SEED,
    DEMO_TRAIN_SIZE,
    make_demo_records,
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
        else:
            assert correction[0].isupper() and correction.endswith(".")


def test_bundled_files_are_the_generator_output() -> None:
    for path, size, seed in (
        (DEMO_TRAIN_FILE, DEMO_TRAIN_SIZE, DEMO_TRAIN_SEED),
        (DEMO_EVAL_FILE, DEMO_EVAL_SIZE, DEMO_EVAL_SEED),
    ):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert rows == make_demo_records(size, seed)
