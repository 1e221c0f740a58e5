"""The embedded demo: a seeded generator of learnable correction records and the demo's assets.

The upstream answers carry systematic, checkable errors that a correction fixes: a wrong
capital from a fixed table, a sum off by one or two, a sentence left without its capital
letter and full stop. About a quarter of the answers are already right and the correction
copies them, as Aligner's residual "copy and correct" data does. The same generator with
another seed gives a held-out split for measuring correction accuracy.

Usage:
    python -m aligner.demo prepare DIR        # tiny random Llama + real tokenizer in DIR/model
    python -m aligner.demo generate FILE [--num N] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import TypedDict

DATA_DIR = Path(__file__).parent / "data"
DEMO_TRAIN_FILE = DATA_DIR / "demo-corrections-train.jsonl"
DEMO_EVAL_FILE = DATA_DIR / "demo-corrections-eval.jsonl"
DEMO_TRAIN_SEED = 0
DEMO_EVAL_SEED = 1
DEMO_TRAIN_SIZE = 512
DEMO_EVAL_SIZE = 64
COPY_RATE = 0.25
"""Share of upstream answers that are already right (the correction copies them)."""

CAPITALS = {
    "France": "Paris",
    "Italy": "Rome",
    "Japan": "Tokyo",
    "Egypt": "Cairo",
    "Kenya": "Nairobi",
    "Peru": "Lima",
    "Canada": "Ottawa",
    "Norway": "Oslo",
    "Chile": "Santiago",
    "Spain": "Madrid",
    "India": "New Delhi",
    "Greece": "Athens",
}
STATEMENTS = (
    "the sun is a star",
    "water boils at one hundred degrees",
    "cats like to sleep in the sun",
    "the moon orbits the earth",
    "bees make honey from nectar",
    "trees need light to grow",
    "the river flows to the sea",
    "snow melts when it is warm",
    "birds build nests in spring",
    "a week has seven days",
)


class CorrectionRecord(TypedDict):
    question: str
    answer: str
    correction: str


def _capital(rng: random.Random, right: bool) -> CorrectionRecord:
    country = rng.choice(sorted(CAPITALS))
    capital = CAPITALS[country]
    given = capital if right else rng.choice([c for c in CAPITALS.values() if c != capital])
    return CorrectionRecord(
        question=f"What is the capital of {country}?",
        answer=f"The capital of {country} is {given}.",
        correction=f"The capital of {country} is {capital}.",
    )


def _sum(rng: random.Random, right: bool) -> CorrectionRecord:
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    given = a + b if right else a + b + rng.choice((-2, -1, 1, 2))
    return CorrectionRecord(
        question=f"What is {a} plus {b}?",
        answer=f"{a} plus {b} is {given}.",
        correction=f"{a} plus {b} is {a + b}.",
    )


def _sentence(rng: random.Random, right: bool) -> CorrectionRecord:
    text = rng.choice(STATEMENTS)
    fixed = text[0].upper() + text[1:] + "."
    return CorrectionRecord(
        question=f"Repeat this as a proper sentence: {text}",
        answer=fixed if right else text,
        correction=fixed,
    )


KINDS = (_capital, _sum, _sentence)


def make_demo_records(num: int, seed: int) -> list[CorrectionRecord]:
    """``num`` correction records; the same ``num`` and ``seed`` always give the same list."""
    rng = random.Random(seed)
    return [rng.choice(KINDS)(rng, rng.random() < COPY_RATE) for _ in range(num)]


def write_demo_records(path: str | Path, num: int, seed: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (json.dumps(record, ensure_ascii=False) for record in make_demo_records(num, seed))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def prepare(directory: str | Path) -> Path:
    """Write the demo's tiny model (random Llama, real 32k tokenizer) into ``directory/model``."""
    from aligner.tiny import write_tiny_llama

    model_dir = Path(directory) / "model"
    if not (model_dir / "config.json").is_file():
        write_tiny_llama(model_dir, hidden_size=64, num_layers=2, num_heads=4)
    return model_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aligner.demo", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    prep = commands.add_parser("prepare", help="write the tiny demo model into DIR/model")
    prep.add_argument("directory")
    gen = commands.add_parser("generate", help="write demo correction records as JSON lines")
    gen.add_argument("file")
    gen.add_argument("--num", type=int, default=DEMO_TRAIN_SIZE)
    gen.add_argument("--seed", type=int, default=DEMO_TRAIN_SEED)
    args = parser.parse_args(argv)
    if args.command == "prepare":
        print(prepare(args.directory))
    else:
        print(write_demo_records(args.file, args.num, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
