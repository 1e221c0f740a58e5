"""``aligner answer``: the upstream model answers the questions, the first step of the loop.

Usage:
    aligner answer --model_name_or_path UPSTREAM --input questions.jsonl --output answers.jsonl
        [--batch_size 8] [--max_new_tokens 512] [--do_sample --temperature 0.7]
    aligner answer --upstream_url http://localhost:8000/v1 --upstream_model NAME \\
        --input questions.jsonl --output answers.jsonl [--upstream_concurrency 8]

Each output line is an input record (``question`` or ``messages``) plus ``answer`` and
``answer_source`` (the model and its sampling settings), and ``id`` where the input had none;
an input's own ``answer`` is kept as ``reference_answer``. The output is what ``aligner
correct`` reads. Re-running with the same ``--output`` asks only for what is missing; a file
this command did not write is never resumed into or replaced without ``--overwrite``.

A local model answers in its own chat template; under a launcher the records are spread over
the ranks, one GPU each:
    torchrun --nproc_per_node 8 -m aligner.cli answer ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aligner.commands.correct import add_generation_arguments, check_generation_args
from aligner.errors import CommandParser, Plan, run_command
from aligner.inference import answering
from aligner.inference.answering import REFERENCE_FIELD, AnswerError, check, run
from aligner.inference.endpoint import add_endpoint_arguments
from aligner.options import add_bool


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="aligner answer",
        description="Answer questions with the upstream model, locally or through an endpoint.",
    )
    io = parser.add_argument_group("input and output")
    io.add_argument(
        "--model_name_or_path",
        default=None,
        help="the upstream chat model, run locally (or give --upstream_url)",
    )
    io.add_argument(
        "--input",
        required=True,
        help="records with question or messages: JSON, JSONL, Parquet, CSV or a save_to_disk "
        "folder, read and checked as for training",
    )
    io.add_argument(
        "--output",
        required=True,
        help="JSONL written (and resumed) here: each input record plus its answer; an input's "
        f"own answer field is kept as {REFERENCE_FIELD}",
    )
    add_bool(
        io,
        "--overwrite",
        default=False,
        help="replace an existing --output instead of resuming it; without it, a file this "
        "command did not write is refused",
    )
    add_generation_arguments(parser.add_argument_group("generation"))
    add_endpoint_arguments(
        parser,
        "upstream",
        "upstream model (instead of --model_name_or_path)",
        api_key_env="OPENAI_API_KEY",
    )
    # The deepspeed launcher passes --local_rank; the rank is read from the environment.
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def prepare(args: argparse.Namespace) -> Plan[argparse.Namespace, answering.Plan]:
    """The flags, then every check that needs no model; nothing is written."""
    check_generation_args(args)
    if Path(args.input).resolve() == Path(args.output).resolve():
        raise AnswerError("--input, --output must be different files")
    return Plan(args, check(args))


def execute(plan: Plan[argparse.Namespace, answering.Plan]) -> int:
    return run(plan.config, plan.found)


def main(argv: list[str]) -> int:
    return run_command(
        "aligner answer",
        argv,
        build_parser().parse_args,
        prepare,
        execute,
        interrupted="interrupted; run the same command again to resume",
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
