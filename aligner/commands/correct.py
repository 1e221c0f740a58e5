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

import argparse
import math
import sys
from pathlib import Path

from aligner.config import DataArgs
from aligner.errors import CommandParser, Plan, UserError, run_command
from aligner.inference import correcting
from aligner.inference.correcting import REFERENCE_FIELD, CorrectionError, check, run
from aligner.inference.endpoint import add_endpoint_arguments, endpoint_from_args
from aligner.inference.model_loading import add_model_arguments
from aligner.inference.preference import FORMATS
from aligner.options import add_bool, add_options


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="aligner correct",
        description="Correct upstream answers with a trained aligner.",
    )
    io = parser.add_argument_group("input and output")
    io.add_argument("--model_name_or_path", required=True, help="the trained aligner checkpoint")
    io.add_argument(
        "--input",
        required=True,
        help="records with question and answer: JSON, JSONL, Parquet, CSV or a save_to_disk "
        "folder, read and checked as for training",
    )
    io.add_argument(
        "--output",
        required=True,
        help="JSONL written (and resumed) here: each input record plus its correction; an "
        f"input's own correction field is kept as {REFERENCE_FIELD}",
    )
    add_bool(
        io,
        "--overwrite",
        default=False,
        help="replace an existing --output (and --preference_output) instead of resuming it; "
        "without it, a file this command did not write is refused",
    )
    add_options(
        io,
        DataArgs,
        only=("prompt_template", "system_prompt"),
        defaults={"prompt_template": None},
        helps={
            "prompt_template": "prompt template name (correction, aligner-v1, chat) or file; "
            "default: the checkpoint's prompt_template.json",
            "system_prompt": "the aligner's system message with a chat template; default: the "
            "checkpoint's",
        },
    )
    io.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="correct each correction again, N rounds in all; a record stops early once a "
        "round returns it unchanged",
    )
    io.add_argument(
        "--preference_output",
        default=None,
        help="also write DPO pairs (prompt=question, chosen=correction, rejected=answer)",
    )
    io.add_argument(
        "--upstream_tokenizer",
        default=None,
        metavar="PATH",
        help="the upstream model's tokenizer: its chat template writes standard-format "
        "preference prompts exactly as that model is prompted (default: the question and a "
        "blank line)",
    )
    io.add_argument(
        "--preference_format",
        choices=FORMATS,
        default="standard",
        help="TRL's standard (strings) or conversational (message lists) preference records",
    )
    add_generation_arguments(parser.add_argument_group("generation"))
    add_endpoint_arguments(
        parser,
        "aligner",
        "the aligner on a vLLM or SGLang server, instead of loaded here",
    )
    # The deepspeed launcher passes --local_rank; the rank is read from the environment.
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def add_generation_arguments(gen: argparse._ArgumentGroup) -> None:
    """Decoding: greedy by default, sampled with --do_sample; where and how the model loads."""
    gen.add_argument(
        "--batch_size",
        type=int,
        default=8,
        help="records per generate call, or per round of requests to --aligner_url (%(default)s)",
    )
    gen.add_argument(
        "--max_new_tokens", type=int, default=512, help="most tokens per correction (%(default)s)"
    )
    add_bool(gen, "--do_sample", default=False, help="sample instead of greedy decoding")
    sampled = "with --do_sample; default: the checkpoint's generation_config"
    gen.add_argument("--temperature", type=float, default=None, help=sampled)
    gen.add_argument("--top_p", type=float, default=None, help=sampled)
    gen.add_argument("--top_k", type=int, default=None, help=f"{sampled}; 0 disables it")
    gen.add_argument("--seed", type=int, default=42, help="seed of sampling (%(default)s)")
    add_model_arguments(gen)


def check_generation_args(args: argparse.Namespace) -> None:
    """The flags of ``add_generation_arguments``, checked."""
    for flag in ("batch_size", "max_new_tokens"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag} must be at least 1")
    sampling = [f"--{f}" for f in ("temperature", "top_p", "top_k") if getattr(args, f) is not None]
    if sampling and not args.do_sample:
        raise UserError(f"{', '.join(sampling)} take effect only with --do_sample")
    if args.temperature is not None and not 0 < args.temperature < math.inf:
        raise UserError(
            "--temperature must be a finite number above 0 (greedy decoding is the default)"
        )
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise UserError("--top_p must be in (0, 1]")
    if args.top_k is not None and args.top_k < 0:
        raise UserError("--top_k must be at least 0 (0 disables it)")


def check_args(args: argparse.Namespace) -> None:
    endpoint_from_args(args, "aligner")  # its flags checked before any work
    if args.rounds < 1:
        raise CorrectionError("--rounds must be at least 1")
    check_generation_args(args)
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


def prepare(args: argparse.Namespace) -> Plan[argparse.Namespace, correcting.Plan]:
    """The flags, then every check that needs no model; nothing is written."""
    check_args(args)
    return Plan(args, check(args))


def execute(plan: Plan[argparse.Namespace, correcting.Plan]) -> int:
    return run(plan.config, plan.found)


def main(argv: list[str]) -> int:
    return run_command(
        "aligner correct",
        argv,
        build_parser().parse_args,
        prepare,
        execute,
        interrupted="interrupted; run the same command again to resume",
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
