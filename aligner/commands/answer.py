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

import sys
from pathlib import Path

from aligner.config import AnswerConfig
from aligner.errors import Plan, run_command
from aligner.inference import answering
from aligner.inference.answering import AnswerError, check, run


def prepare(config: AnswerConfig) -> Plan[AnswerConfig, answering.Plan]:
    """The flags, then every check that needs no model; nothing is written."""
    if Path(config.input).resolve() == Path(config.output).resolve():
        raise AnswerError("--input, --output must be different files")
    return Plan(config, check(config))


def execute(plan: Plan[AnswerConfig, answering.Plan]) -> int:
    return run(plan.config, plan.found)


def main(argv: list[str]) -> int:
    return run_command(
        "aligner answer",
        argv,
        AnswerConfig.parse,
        prepare,
        execute,
        interrupted="interrupted; run the same command again to resume",
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
