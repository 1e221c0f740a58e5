"""The real demo: the aligner's whole loop on a real pretrained chat model, offline.

SmolLM2-135M-Instruct (``aligner.real_model``) is the upstream. It is asked for the first or
the last word of a short list of words, a task whose answer can be checked and that it often
gets wrong ("The last word of this list is "stone."" of a list ending in "lamp"). Its answers
(``aligner answer``) become correction records: a finished answer that names the right word,
and no other word of the list, is right and kept as it is; in a wrong one the right word
replaces the wrong one, or the answer is rewritten as the sentence the model usually writes.
An aligner is trained from the same model on these, then corrects the answers to held-out
questions, scored as ``aligner.demo`` scores its own.

Usage (``bash scripts/sft-correction.sh --demo real`` runs all of it):
    python -m aligner.real_demo prepare DIR      # the model, DIR/demo-questions.jsonl
    python -m aligner.real_demo split DIR        # DIR/demo-answers.jsonl -> train, held out
    python -m aligner.real_demo report CORRECTED [--output JSON]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path
from typing import Any

from aligner.demo import report

TRAIN_SIZE = 192
HELDOUT_SIZE = 256
"""About a third of the upstream's answers are right: 256 questions give about 90 right ones,
enough to measure the share that comes back unchanged to within a few points (with 64, one
answer moves it by 5)."""
TRAIN_SEED = 0
HELDOUT_SEED = 1
LIST_LENGTH = 4
WORDS = (
    "apple river stone cloud tiger lamp honey green music paper candle forest ocean pencil "
    "garden window silver bread mountain rabbit orange winter butter violin"
).split()
POSITIONS = ("first", "last")
QUESTIONS_FILE = "demo-questions.jsonl"
ANSWERS_FILE = "demo-answers.jsonl"
TRAIN_FILE = "demo-train.jsonl"
HELDOUT_FILE = "demo-heldout.jsonl"
FINISHED = re.compile(r'\w([.!]"?|"[.!]?)\s*$')
"""How a finished reply ends: a word, then a full stop and or a closing quote."""
SENTENCE = re.compile(r'The (first|last) word of this list is "(\w+)("\.|\."|")')
"""The model's usual reply: the word in quotes, the full stop inside or outside them."""
QUESTION = re.compile(r"What is the (\w+) word of this list: (.*)\? Reply with the word only\.")


def make_questions(num: int, seed: int, split: str) -> list[dict[str, Any]]:
    """``num`` questions; the same arguments always give the same list."""
    rng = random.Random(seed)
    records = []
    for index in range(num):
        position = rng.choice(POSITIONS)
        words = rng.sample(WORDS, LIST_LENGTH)
        question = (
            f"What is the {position} word of this list: {', '.join(words)}? "
            "Reply with the word only."
        )
        records.append({"id": f"{split}-{index}", "split": split, "question": question})
    return records


def parse(question: str) -> tuple[str, list[str]]:
    """The position asked for and the list of a demo question."""
    match = QUESTION.fullmatch(question)
    if match is None:
        raise ValueError(f"not a real-demo question: {question!r}")
    return match.group(1), match.group(2).split(", ")


def truth(question: str) -> str:
    position, words = parse(question)
    return words[0] if position == "first" else words[-1]


def is_right(question: str, answer: str) -> bool:
    """Whether the answer names the right word of the list, no other word of it, and ends as
    a finished reply does (not cut off by the token limit in the middle of a sentence)."""
    _, words = parse(question)
    named = [word for word in re.findall(r"[a-z]+", answer.lower()) if word in words]
    finished = answer.strip().lower() == truth(question) or FINISHED.search(answer) is not None
    return named == [truth(question)] and finished


def correction(question: str, answer: str) -> str:
    """The answer itself when it is right. A wrong one in the model's usual sentence gets the
    right word in place of the wrong one, its punctuation kept; any other, that sentence."""
    if is_right(question, answer):
        return answer
    position, _ = parse(question)
    sentence = SENTENCE.fullmatch(answer.strip())
    if sentence is not None and sentence.group(1) == position:
        return f"{sentence.group(0)[: sentence.start(2)]}{truth(question)}{sentence.group(3)}"
    return f'The {position} word of this list is "{truth(question)}."'


def kind(question: str) -> str:
    return parse(question)[0]


def prepare(directory: str | Path) -> Path:
    """Build (or find) the model; write the questions into ``directory``; the model's path."""
    from aligner.real_model import ensure_model

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    questions = make_questions(TRAIN_SIZE, TRAIN_SEED, "train")
    questions += make_questions(HELDOUT_SIZE, HELDOUT_SEED, "heldout")
    write_jsonl(directory / QUESTIONS_FILE, questions)
    return ensure_model()


def split(directory: str | Path) -> tuple[Path, Path]:
    """Turn the upstream's answers into training records and held-out records to correct."""
    directory = Path(directory)
    answers = [json.loads(line) for line in (directory / ANSWERS_FILE).open(encoding="utf-8")]
    parts: dict[str, list[dict[str, Any]]] = {"train": [], "heldout": []}
    for record in answers:
        question, answer = record["question"], record["answer"]
        parts[record["split"]].append(
            {
                "id": record["id"],
                "question": question,
                "answer": answer,
                "correction": correction(question, answer),
            }
        )
    return (
        write_jsonl(directory / TRAIN_FILE, parts["train"]),
        write_jsonl(directory / HELDOUT_FILE, parts["heldout"]),
    )


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    path.write_text(lines, encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aligner.real_demo", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    prep = commands.add_parser("prepare", help="build the model, write DIR/" + QUESTIONS_FILE)
    prep.add_argument("directory")
    cut = commands.add_parser("split", help=f"DIR/{ANSWERS_FILE} into training and held out")
    cut.add_argument("directory")
    rep = commands.add_parser("report", help="score the corrected held-out records")
    rep.add_argument("corrected", help="the output of aligner correct on " + HELDOUT_FILE)
    rep.add_argument("--output", default=None, help="also write the scores here as JSON")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        print(prepare(args.directory))
    elif args.command == "split":
        print(*split(args.directory))
    else:
        print(report(args.corrected, args.output, kind_of=kind))
    return 0


if __name__ == "__main__":
    sys.exit(main())
