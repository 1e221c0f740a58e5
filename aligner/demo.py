"""The embedded demo: a seeded generator of learnable correction records, its assets, its scores.

The upstream answers carry systematic, checkable errors that a correction fixes: a wrong
capital from a fixed table, a sum off by one or two, a sentence left without its capital
letter and full stop. About a quarter of the answers are already right and the correction
copies them, as Aligner's residual "copy and correct" data does. The same generator with
another seed gives a held-out split for measuring correction accuracy: ``report`` scores the
corrections a trained aligner made of it, against the upstream answers.

Usage:
    python -m aligner.demo prepare DIR        # tiny random Llama + real tokenizer in DIR/model
    python -m aligner.demo generate FILE [--num N] [--seed S]
    python -m aligner.demo report CORRECTED [--output JSON]   # before/after accuracy, copy rates
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypedDict

from aligner.inference.metrics import exact_match, is_copy

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
MAX_ADDEND = 5
"""Sums are of 1..5: a table of 25 that the training set covers many times over (with 1..9,
held-out sums are often ones never seen, and a tiny model does not learn addition from the
~170 sums of the training set)."""
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
    a, b = rng.randint(1, MAX_ADDEND), rng.randint(1, MAX_ADDEND)
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


def error_kind(question: str) -> str:
    """Which kind of record a demo question belongs to (the generators' question forms)."""
    if question.startswith("What is the capital of "):
        return "capital"
    if " plus " in question:
        return "sum"
    return "sentence"


def score_corrections(
    records: list[dict[str, str]], kind_of: Callable[[str], str] = error_kind
) -> dict[str, dict[str, float | None]]:
    """Before/after accuracy and copy rates of corrected demo records, per kind (``kind_of``
    a question) and in all.

    Each record is an ``aligner correct`` output line: ``answer`` (upstream), ``correction``
    (the aligner's) and ``reference_correction`` (the right answer). Accuracy is exact match
    with the reference, before (the upstream answer) and after (the correction); the copy rate
    is the share of answers returned unchanged, apart for answers that were already right
    (copying them is right) and wrong ones (copying them keeps the error); None where a kind
    has no such answers.
    """
    # Imported here: aligner.inference.correcting loads transformers, which the launcher's
    # look-ups of the demo's file names do not need.
    from aligner.inference.correcting import REFERENCE_FIELD

    groups: dict[str, list[dict[str, str]]] = {"all": records}
    for record in records:
        groups.setdefault(kind_of(record["question"]), []).append(record)
    scores = {}
    for kind, group in groups.items():
        right = [r for r in group if exact_match(r["answer"], r[REFERENCE_FIELD])]
        wrong = [r for r in group if not exact_match(r["answer"], r[REFERENCE_FIELD])]
        scores[kind] = {
            "answers": len(group),
            "accuracy_before": len(right) / len(group),
            "accuracy_after": _share(
                group, lambda r: exact_match(r["correction"], r[REFERENCE_FIELD])
            ),
            "copy_rate_right": _share(right, lambda r: is_copy(r["correction"], r["answer"])),
            "copy_rate_wrong": _share(wrong, lambda r: is_copy(r["correction"], r["answer"])),
        }
    return scores


def _share(records: list[dict[str, str]], test: Callable[[dict[str, str]], bool]) -> float | None:
    """The share of ``records`` that pass ``test``; None when there are none to count."""
    return sum(map(test, records)) / len(records) if records else None


def _percent(share: float | None, width: int) -> str:
    return f"{'-' if share is None else f'{share:.0%}':>{width}}"


def format_scores(scores: dict[str, dict[str, float | None]]) -> str:
    """The scores as a table: one row per kind of record, then all of them."""
    header = (
        f"{'kind':<9} {'answers':>7} {'accuracy before':>15} {'accuracy after':>14} "
        f"{'copied (right)':>14} {'copied (wrong)':>14}"
    )
    lines = [header]
    for kind in sorted(scores, key=lambda k: (k == "all", k)):
        row = scores[kind]
        lines.append(
            f"{kind:<9} {row['answers']:>7} {_percent(row['accuracy_before'], 15)} "
            f"{_percent(row['accuracy_after'], 14)} {_percent(row['copy_rate_right'], 14)} "
            f"{_percent(row['copy_rate_wrong'], 14)}"
        )
    return "\n".join(lines)


def report(
    corrected: str | Path,
    output: str | Path | None = None,
    kind_of: Callable[[str], str] = error_kind,
) -> str:
    """Score a file of corrected demo records; also write the scores as JSON to ``output``."""
    lines = Path(corrected).read_text(encoding="utf-8").splitlines()
    scores = score_corrections([json.loads(line) for line in lines if line.strip()], kind_of)
    if output is not None:
        Path(output).write_text(json.dumps(scores, indent=2) + "\n", encoding="utf-8")
    return format_scores(scores)


def prepare(directory: str | Path) -> Path:
    """Write the demo's tiny model (random Llama, real 32k tokenizer) into ``directory/model``."""
    from aligner.tiny import write_tiny_llama

    model_dir = Path(directory) / "model"
    if not (model_dir / "config.json").is_file():
        # Width 128 learns the copying and the lookups in ~200 steps where width 64 does not.
        write_tiny_llama(
            model_dir, hidden_size=128, num_layers=2, num_heads=4, intermediate_size=256
        )
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
    rep = commands.add_parser("report", help="score corrected demo records (aligner correct)")
    rep.add_argument("corrected", help="the output of aligner correct on demo records")
    rep.add_argument("--output", default=None, help="also write the scores here as JSON")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        print(prepare(args.directory))
    elif args.command == "generate":
        print(write_demo_records(args.file, args.num, args.seed))
    else:
        print(report(args.corrected, args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
