"""The data flags shared by ``aligner data`` and training, and building datasets from them."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import datasets
import numpy as np
from transformers import PreTrainedTokenizerBase

from aligner.datasets.base import DataError, load_dataset_modules
from aligner.datasets.pipeline import DataStats, build_dataset
from aligner.prompts import DEFAULT_TEMPLATE, Template, get_template, resolve_template

RECORD_FIELDS = ("question", "messages", "answer", "correction")


def _column_pair(text: str) -> tuple[str, str]:
    field, equals, column = text.partition("=")
    if not equals or field not in RECORD_FIELDS or not column:
        raise argparse.ArgumentTypeError(
            f"expected FIELD=COLUMN with FIELD one of {', '.join(RECORD_FIELDS)}, got {text!r}"
        )
    return field, column


def add_data_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    group = parser.add_argument_group("data")
    group.add_argument(
        "--train_datasets",
        nargs="+",
        required=True,
        metavar="NAME[:PROPORTION[:PATH]]",
        help="datasets to train on: a registered name with an optional proportion and path "
        "(correction-json::data/train.jsonl, correction-json:0.5:data/train.jsonl, "
        "my-data:1000/-1), or simply a record file",
    )
    group.add_argument(
        "--eval_datasets",
        nargs="*",
        default=None,
        metavar="NAME[:PROPORTION[:PATH]]",
        help="datasets to evaluate on (same form as --train_datasets)",
    )
    group.add_argument(
        "--eval_split_ratio",
        type=float,
        default=0.0,
        help="hold out this share of the training samples for evaluation (when no "
        "--eval_datasets are given)",
    )
    group.add_argument(
        "--column_map",
        nargs="+",
        default=None,
        metavar="FIELD=COLUMN",
        type=_column_pair,
        help="read a Hub dataset's COLUMN as the record FIELD (question, messages, answer, "
        "correction), e.g. question=prompt answer=response",
    )
    group.add_argument(
        "--dataset_module",
        action="append",
        default=[],
        metavar="MODULE",
        help="import a module (pkg.mod or path/to/file.py) that registers RawDataset classes; "
        "repeatable",
    )
    group.add_argument(
        "--prompt_template",
        default=DEFAULT_TEMPLATE,
        help="a template name (correction, aligner-v1, or chat: the tokenizer's own chat "
        "template) or a .json/.yaml template file",
    )
    group.add_argument(
        "--system_prompt",
        default=None,
        help="with --prompt_template chat: the aligner's system message (default: none)",
    )
    group.add_argument(
        "--max_length", type=int, default=2048, help="maximum tokens per sample (prompt + target)"
    )
    group.add_argument(
        "--identity_warmup_ratio",
        type=float,
        default=0.0,
        help="identity warm-up (residual correction): before the corrections, train on this "
        "share of the training records with their own answer as the target, i.e. "
        "(question, answer, answer)",
    )
    group.add_argument(
        "--lenient_data",
        action="store_true",
        help="skip and count invalid records instead of stopping at the first one",
    )
    group.add_argument(
        "--num_proc", type=int, default=1, help="processes used to tokenize the data"
    )
    group.add_argument(
        "--data_cache_dir",
        default=None,
        help="where tokenized data is cached (default: $ALIGNER_CACHE_DIR/data or "
        "~/.cache/aligner/data)",
    )
    return parser


def template_from_args(args: argparse.Namespace, tokenizer: PreTrainedTokenizerBase) -> Template:
    """The prompt template the data flags name, resolved against the tokenizer.

    The ``--dataset_module`` modules are imported first, so that one which edits a prompt
    constant (``aligner.constants.CORRECTION_INSTRUCTION``) changes the template.
    """
    load_dataset_modules(args.dataset_module)
    template = get_template(args.prompt_template, args.system_prompt)
    return resolve_template(template, tokenizer, args.model_name_or_path)


@dataclass
class DataReport:
    train: DataStats
    eval: DataStats | None
    eval_split: int = 0
    """Samples held out of the training set by ``--eval_split_ratio``."""


def check_data_flags(args: argparse.Namespace) -> None:
    """Refuse a data flag out of its range, naming the flag, before anything is read."""
    if args.max_length < 2:
        raise DataError(f"--max_length must be at least 2, got {args.max_length}")
    if args.num_proc < 1:
        raise DataError(f"--num_proc must be at least 1, got {args.num_proc}")
    ratios = {
        "--eval_split_ratio": (args.eval_split_ratio, "[0, 1)", lambda x: 0 <= x < 1),
        "--identity_warmup_ratio": (args.identity_warmup_ratio, "[0, 1]", lambda x: 0 <= x <= 1),
    }
    for flag, (value, interval, inside) in ratios.items():
        if not (math.isfinite(value) and inside(value)):
            raise DataError(f"{flag} must be in {interval}, got {value}")


def _pipeline_options(args: argparse.Namespace) -> dict[str, object]:
    return {
        "max_length": args.max_length,
        "seed": args.seed,
        "lenient": args.lenient_data,
        "num_proc": args.num_proc,
        "cache_dir": args.data_cache_dir,
        "dataset_modules": args.dataset_module,
        "column_map": dict(args.column_map or []),
    }


def build_datasets_from_args(
    args: argparse.Namespace, tokenizer: PreTrainedTokenizerBase, template: Template
) -> tuple[datasets.Dataset, datasets.Dataset | None, DataReport]:
    """The training set, the evaluation set (or None), and what happened to the records."""
    check_data_flags(args)
    common = _pipeline_options(args)
    train, train_stats = build_dataset(args.train_datasets, tokenizer, template, **common)
    if args.eval_datasets:
        evaluation, eval_stats = build_dataset(args.eval_datasets, tokenizer, template, **common)
        return train, evaluation, DataReport(train_stats, eval_stats)
    if args.eval_split_ratio > 0:
        order = np.random.default_rng(args.seed).permutation(len(train))
        held_out = max(1, round(len(train) * args.eval_split_ratio))
        if held_out >= len(train):
            raise DataError(
                f"--eval_split_ratio {args.eval_split_ratio} leaves no training sample "
                f"out of {len(train)}"
            )
        evaluation = train.select(np.sort(order[:held_out]))
        train = train.select(np.sort(order[held_out:]))
        return train, evaluation, DataReport(train_stats, None, eval_split=held_out)
    return train, None, DataReport(train_stats, None)


def build_warmup_from_args(
    args: argparse.Namespace, tokenizer: PreTrainedTokenizerBase, template: Template
) -> datasets.Dataset | None:
    """The identity warm-up set: a seeded ``--identity_warmup_ratio`` share of the training
    records, each with its answer as the target; None when the ratio is 0."""
    check_data_flags(args)
    ratio = args.identity_warmup_ratio
    if ratio == 0:
        return None
    identity, _ = build_dataset(
        args.train_datasets, tokenizer, template, identity=True, **_pipeline_options(args)
    )
    count = max(1, round(len(identity) * ratio))
    chosen = np.random.default_rng([args.seed, 1]).choice(len(identity), count, replace=False)
    return identity.select(np.sort(chosen))
