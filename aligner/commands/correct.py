"""``aligner correct``: apply a trained aligner to (question, answer) records.

Usage:
    aligner correct --model_name_or_path CKPT --input answers.jsonl --output corrected.jsonl
        [--rounds N] [--preference_output pairs.jsonl] [--batch_size 8] [--max_new_tokens 512]
        [--aligner_url http://localhost:8000/v1 --aligner_model NAME]

With ``--aligner_url`` the corrections come from an OpenAI-compatible completions server that
serves the checkpoint (``vllm serve CKPT``); the folder is still read for its tokenizer and
template, and the prompt is sent as token ids.

Each output line is an input record plus ``correction`` (and ``id`` where the input had none);
an input's own ``correction`` (a test split's reference) is kept as ``reference_correction``.
Re-running with the same ``--output`` skips the records already written; a crash loses at most
the batch in flight. When done, the output is in input order. An existing file this command did
not write is never resumed into or replaced without ``--overwrite``.

Under a launcher the records are spread over the ranks, one GPU each:
    torchrun --nproc_per_node 8 -m aligner.cli correct ...
    deepspeed --num_gpus 8 --module aligner.commands.correct ...
"""

from __future__ import annotations

import sys
from pathlib import Path

from aligner.config import CorrectConfig
from aligner.errors import Plan, run_command
from aligner.inference import correcting
from aligner.inference.correcting import CorrectionError, check, run


def check_args(args: CorrectConfig) -> None:
    if args.upstream_tokenizer and (
        not args.preference_output or args.preference_format != "standard"
    ):
        raise CorrectionError(
            "--upstream_tokenizer writes standard-format preference prompts: it needs "
            "--preference_output with --preference_format standard"
        )
    paths = {"--input": args.input, "--output": args.output}
    if args.preference_output:
        paths["--preference_output"] = args.preference_output
    resolved = {flag: Path(path).resolve() for flag, path in paths.items()}
    if len(set(resolved.values())) < len(resolved):
        raise CorrectionError(f"{', '.join(paths)} must be different files")


def prepare(args: CorrectConfig) -> Plan[CorrectConfig, correcting.Plan]:
    """The flags, then every check that needs no model; nothing is written."""
    check_args(args)
    return Plan(args, check(args))


def execute(plan: Plan[CorrectConfig, correcting.Plan]) -> int:
    return run(plan.config, plan.found)


def main(argv: list[str]) -> int:
    return run_command(
        "aligner correct",
        argv,
        CorrectConfig.parse,
        prepare,
        execute,
        interrupted="interrupted; run the same command again to resume",
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
