"""``aligner eval``: whether corrections helped, and a checkpoint's loss.

Usage:
    aligner eval --predictions corrected.jsonl [--reference_field reference_correction]
    aligner eval --predictions corrected.jsonl --reward_model RM [--cost_model CM]
    aligner eval --predictions corrected.jsonl --judge_url http://host:8000/v1 --judge_model NAME
    aligner eval --model_name_or_path CKPT --eval_datasets test.jsonl [--max_length 2048]
    (any of them at once, with --output report.json to keep the JSON report)

``--predictions`` reads the output of ``aligner correct`` (or any records with ``answer`` and
``correction``) and reports the copy rate, the word-level edit distance from answer to
correction, and exact match and ROUGE-L against the references where the records have them.
``--reward_model`` and ``--cost_model`` score answer and correction with sequence-classification
models; ``--judge_url`` asks an LLM judge which of the two is better. Under a launcher
(``torchrun --nproc_per_node 8 -m aligner.cli eval ...``) the records are scored over the ranks.
``--eval_datasets`` reports the mean loss per target token (correction + EOS) and perplexity.
The report is printed as JSON (stdout) and as a short table (stderr).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aligner.config import DataArgs
from aligner.datasets.base import DataError
from aligner.errors import CommandParser, Plan, run_command
from aligner.files import check_writable
from aligner.inference import judge
from aligner.inference.correcting import REFERENCE_FIELD
from aligner.inference.endpoint import add_endpoint_arguments, endpoint_from_args
from aligner.inference.model_loading import add_model_arguments
from aligner.inference.reporting import beside, run, scoring_requested
from aligner.options import add_bool, add_options
from aligner.runtime import Ranks


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="aligner eval",
        description="Evaluate an aligner: whether its corrections helped, its loss on data.",
    )
    parser.add_argument("--output", default=None, help="also write the JSON report here")
    parser.add_argument(
        "--seed", type=int, default=42, help="seed of the bootstrap and the judge's A/B order"
    )
    add_bool(
        parser,
        "--overwrite",
        default=False,
        help="replace a --scores_output or --judge_output this command did not write, or start "
        "over one written with other settings",
    )
    generated = parser.add_argument_group("metrics of generated corrections")
    generated.add_argument(
        "--predictions", default=None, help="records with answer and correction (aligner correct)"
    )
    generated.add_argument(
        "--reference_field",
        default=None,
        help=f"field holding the reference correction (default: {REFERENCE_FIELD}, where a "
        "record has one); a field that no record has is an error",
    )
    add_scoring_arguments(parser)
    add_judge_arguments(parser)
    loss = parser.add_argument_group("loss of a checkpoint on correction data")
    loss.add_argument("--model_name_or_path", default=None, help="the trained aligner checkpoint")
    add_options(
        loss,
        DataArgs,
        only=(
            "eval_datasets",
            "prompt_template",
            "system_prompt",
            "max_length",
            "dataset_module",
            "lenient_data",
            "data_cache_dir",
        ),
        defaults={"prompt_template": None},
        helps={
            "eval_datasets": "correction datasets (question, answer, correction), as for training",
            "prompt_template": "prompt template; default: the checkpoint's own",
            "system_prompt": "the aligner's system message with a chat template; default: the "
            "checkpoint's",
        },
    )
    loss.add_argument(
        "--batch_size",
        type=int,
        default=8,
        help="samples per forward pass, for the loss and the scorers (%(default)s)",
    )
    add_model_arguments(loss)
    # The deepspeed launcher passes --local_rank; the rank is read from the environment.
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def add_scoring_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("reward and cost models (on --predictions)")
    group.add_argument(
        "--reward_model",
        default=None,
        help="sequence-classification checkpoint with one output: higher is more helpful",
    )
    group.add_argument("--cost_model", default=None, help="the same, where higher is more harmful")
    group.add_argument(
        "--scores_output",
        default=None,
        help="per-record scores (JSONL, resumed); default: PREDICTIONS.scores.jsonl beside it",
    )
    group.add_argument(
        "--device_map",
        choices=["auto"],
        default=None,
        help="auto: spread each scorer over every GPU of the node (accelerate), for models too "
        "large for one",
    )
    group.add_argument(
        "--tie_margin",
        type=float,
        default=0.0,
        help="score differences up to this are ties (%(default)s)",
    )
    group.add_argument(
        "--bootstrap_samples",
        type=int,
        default=10_000,
        help="resamples of the 95%% interval of the mean difference (%(default)s)",
    )


def add_judge_arguments(parser: argparse.ArgumentParser) -> None:
    add_endpoint_arguments(
        parser, "judge", "LLM judge (on --predictions)", api_key_env="OPENAI_API_KEY"
    )
    group = parser.add_argument_group("LLM judge: prompt and output")
    group.add_argument(
        "--judge_prompt",
        default=None,
        help="file with the judging prompt: {conversation}, {reply_a} and {reply_b}",
    )
    group.add_argument(
        "--judge_output",
        default=None,
        help="per-record verdicts (JSONL, resumed); default: PREDICTIONS.judge.jsonl beside it",
    )
    group.add_argument(
        "--judge_max_tokens", type=int, default=1024, help="most tokens per verdict (%(default)s)"
    )
    group.add_argument(
        "--judge_temperature", type=float, default=0.0, help="judge sampling (%(default)s)"
    )


def check_args(args: argparse.Namespace) -> None:
    wants_loss = bool(args.model_name_or_path or args.eval_datasets)
    judging = bool(args.judge_url or args.judge_model)
    if (scoring_requested(args) or judging) and not args.predictions:
        raise DataError("the scorers and the judge rate a corrected file: pass it as --predictions")
    if not args.predictions and not wants_loss:
        raise DataError("nothing to evaluate: pass --predictions and/or --eval_datasets")
    if wants_loss and not (args.model_name_or_path and args.eval_datasets):
        raise DataError("the eval loss needs both --model_name_or_path and --eval_datasets")
    if judging:
        endpoint_from_args(args, "judge")
        judge.load_prompt(args.judge_prompt)  # a bad prompt file fails now, not after scoring
    for flag in ("batch_size", "bootstrap_samples", "judge_max_tokens"):
        if getattr(args, flag) < 1:
            raise DataError(f"--{flag} must be at least 1")
    for flag in ("tie_margin", "judge_temperature"):
        if getattr(args, flag) < 0:
            raise DataError(f"--{flag} must not be negative")
    if args.predictions:
        args.scores_output = args.scores_output or str(beside(args.predictions, "scores"))
        args.judge_output = args.judge_output or str(beside(args.predictions, "judge"))
    paths = {"--predictions": args.predictions, "--output": args.output}
    if scoring_requested(args):
        paths["--scores_output"] = args.scores_output
    if judging:
        paths["--judge_output"] = args.judge_output
    resolved = {Path(path).resolve() for path in paths.values() if path}
    if len(resolved) < sum(1 for path in paths.values() if path):
        raise DataError(f"{', '.join(f for f, p in paths.items() if p)} must be different files")
    for flag, path in paths.items():
        if path and flag != "--predictions":
            check_writable(path, flag)
    if args.device_map and Ranks.from_env().world_size > 1:
        raise DataError(
            "--device_map auto spreads each model over the node's GPUs: run it without a launcher"
        )


def prepare(args: argparse.Namespace) -> Plan[argparse.Namespace, None]:
    """Every check of the flags and paths; the inputs are read as the work begins."""
    check_args(args)
    return Plan(args, None)


def execute(plan: Plan[argparse.Namespace, None]) -> int:
    return run(plan.config)


def main(argv: list[str]) -> int:
    return run_command(
        "aligner eval",
        argv,
        build_parser().parse_args,
        prepare,
        execute,
        interrupted="interrupted; run the same command again to resume",
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
