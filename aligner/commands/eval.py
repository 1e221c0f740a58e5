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

import sys
from dataclasses import replace
from pathlib import Path

from aligner.config import EvalConfig
from aligner.datasets.base import DataError
from aligner.errors import Plan, run_command
from aligner.files import check_writable
from aligner.inference import judge
from aligner.inference.reporting import beside, run, scoring_requested
from aligner.runtime import Ranks


def check_args(args: EvalConfig) -> None:
    wants_loss = bool(args.model_name_or_path or args.eval_datasets)
    judging = bool(args.judge_url or args.judge_model)
    if (scoring_requested(args) or judging) and not args.predictions:
        raise DataError("the scorers and the judge rate a corrected file: pass it as --predictions")
    if not args.predictions and not wants_loss:
        raise DataError("nothing to evaluate: pass --predictions and/or --eval_datasets")
    if wants_loss and not (args.model_name_or_path and args.eval_datasets):
        raise DataError("the eval loss needs both --model_name_or_path and --eval_datasets")
    if judging:
        judge.load_prompt(args.judge_prompt)  # a bad prompt file fails now, not after scoring
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


def with_default_outputs(args: EvalConfig) -> EvalConfig:
    """``args`` with the per-record score and verdict files beside ``--predictions`` where the
    flags name none."""
    if not args.predictions:
        return args
    scores = args.scores_output or str(beside(args.predictions, "scores"))
    verdicts = args.judge_output or str(beside(args.predictions, "judge"))
    return replace(
        args,
        scoring=replace(args.scoring, scores_output=scores),
        judging=replace(args.judging, judge_output=verdicts),
    )


def prepare(args: EvalConfig) -> Plan[EvalConfig, None]:
    """Every check of the flags and paths; the inputs are read as the work begins."""
    args = with_default_outputs(args)
    check_args(args)
    return Plan(args, None)


def execute(plan: Plan[EvalConfig, None]) -> int:
    return run(plan.config)


def main(argv: list[str]) -> int:
    return run_command(
        "aligner eval",
        argv,
        EvalConfig.parse,
        prepare,
        execute,
        interrupted="interrupted; run the same command again to resume",
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
