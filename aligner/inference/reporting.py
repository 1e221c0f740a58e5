"""The report of ``aligner eval``: whether an aligner's corrections helped, and a checkpoint's
loss on data; and the short table printed beside it.

The metrics of generated corrections (``inference.metrics``: copy rate, edit distance, exact
match and ROUGE-L against references), reward- and cost-model scores (``inference.scoring``),
an LLM judge's verdicts (``inference.judge``), and the mean loss per target token with perplexity
(``inference.checkpoint_loss``); all in one JSON report. The command is
``aligner.commands.eval``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import datasets

from aligner.config import EvalConfig
from aligner.datasets.base import DataError
from aligner.datasets.loading import load_records
from aligner.files import write_atomically
from aligner.inference import judge, scoring
from aligner.inference.checkpoint_loss import checkpoint_loss
from aligner.inference.endpoint import endpoint_from_args
from aligner.inference.metrics import correction_metrics
from aligner.inference.pairs import Pair, read_pairs
from aligner.inference.records import CORRECTION_FIELD, REFERENCE_FIELD
from aligner.runtime import Ranks


def beside(predictions: str, kind: str) -> Path:
    """``corrected.jsonl`` -> ``corrected.KIND.jsonl``, in the same folder."""
    path = Path(predictions)
    stem = path.name if path.is_dir() else path.stem
    return path.with_name(f"{stem}.{kind}.jsonl")


def scoring_requested(args: EvalConfig) -> bool:
    return bool(args.reward_model or args.cost_model)


def prediction_metrics(
    records: datasets.Dataset, path: str, reference_field: str | None
) -> dict[str, Any]:
    """Metrics of a file of corrected records; ``reference_field`` None takes the default."""
    if CORRECTION_FIELD not in records.column_names:
        raise DataError(f"{path}: the records have no {CORRECTION_FIELD!r} field")
    corrections = list(records[CORRECTION_FIELD])
    for row, correction in enumerate(corrections):
        if not isinstance(correction, str):
            raise DataError(f"{path}: row {row}: field {CORRECTION_FIELD!r} must be a string")
    field = reference_field or REFERENCE_FIELD
    references = None
    if field in records.column_names:
        references = list(records[field])
        for row, reference in enumerate(references):
            if reference is not None and not isinstance(reference, str):
                raise DataError(f"{path}: row {row}: field {field!r} must be a string")
    # The default field is optional; a field the user named must be there, or its metrics
    # would be left out without a word.
    if reference_field is not None and all(r is None for r in references or [None]):
        raise DataError(f"{path}: no record has the field {field!r} named by --reference_field")
    report = correction_metrics(list(records["answer"]), corrections, references)
    return {"file": path, "reference_field": field, **report}


def score_predictions(args: EvalConfig, pairs: list[Pair], ranks: Ranks) -> dict[str, Any] | None:
    """The ``reward`` and ``cost`` sections (on the main rank; None on the others)."""
    models = {"reward": args.reward_model, "cost": args.cost_model}
    options = scoring.ScoringOptions(
        models={kind: path for kind, path in models.items() if path},
        output=Path(args.scores_output),
        source=args.predictions,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        device_map=args.device_map,
        trust_remote_code=args.trust_remote_code,
        overwrite=args.overwrite,
    )
    lines = scoring.score_pairs(options, pairs, ranks)
    if lines is None:
        return None
    report = scoring.summarise(
        lines,
        options.models,
        tie_margin=args.tie_margin,
        bootstrap_samples=args.bootstrap_samples,
        seed=args.seed,
    )
    return {**report, "scores_output": args.scores_output}


def judge_predictions(args: EvalConfig, pairs: list[Pair]) -> tuple[dict[str, Any], int]:
    """The ``judge`` section, and how many records got no verdict."""
    judge_ = judge.Judge(
        endpoint_from_args(args, "judge"),
        judge.load_prompt(args.judge_prompt),
        max_tokens=args.judge_max_tokens,
        temperature=args.judge_temperature,
    )
    result = judge.judge_pairs(
        judge_,
        pairs,
        Path(args.judge_output),
        seed=args.seed,
        concurrency=args.judge_concurrency,
        overwrite=args.overwrite,
    )
    section = judge.summarise(result, args.judge_model, len(pairs))
    return {**section, "judge_output": args.judge_output}, len(result.failed)


def evaluate(args: EvalConfig, ranks: Ranks) -> tuple[dict[str, Any], int] | None:
    """The report and the count of records the judge could not rate; None off the main rank."""
    report: dict[str, Any] = {}
    pairs = None
    if args.predictions:
        # Every rank reads and checks the file: a bad record stops them all before any model.
        records = load_records(args.predictions, fields=("answer",))
        report["predictions"] = prediction_metrics(records, args.predictions, args.reference_field)
        if scoring_requested(args) or args.judge_url:
            pairs = read_pairs(records.to_list(), args.predictions)
    if scoring_requested(args):
        sections = score_predictions(args, pairs, ranks)
        if sections is None:
            return None
        report.update(sections)
    if not ranks.is_main:
        return None
    failed = 0
    if args.judge_url:
        report["judge"], failed = judge_predictions(args, pairs)
    if args.eval_datasets:
        report["eval_loss"] = checkpoint_loss(args)
    return report, failed


def run(args: EvalConfig) -> int:
    """Evaluate what the checked flags ask for; print (and with --output, write) the report."""
    ranks = Ranks.from_env()
    with ranks.group():
        result = evaluate(args, ranks)
    if result is None:
        return 0
    report, failed = result
    text = json.dumps(report, indent=2, ensure_ascii=False)
    print(text)
    print(summary_table(report), file=sys.stderr)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        write_atomically(args.output, text + "\n")
    return 1 if failed else 0


HEADER = f"{'':<22}{'answer':>9}{'correction':>12}  {'difference [95% CI]':<28}"
HEADER += f"{'win':>7}{'tie':>7}{'lose':>7}"


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def rates(section: dict[str, Any]) -> str:
    return "".join(
        f"{percent(section.get(name)):>7}" for name in ("win_rate", "tie_rate", "lose_rate")
    )


def score_row(label: str, section: dict[str, Any]) -> str:
    if "answer_mean" not in section:
        return f"{label:<22}(no records)"
    low, high = section["difference_ci95"]
    interval = f"{section['difference_mean']:+.4f} [{low:+.4f}, {high:+.4f}]"
    means = f"{section['answer_mean']:>9.4f}{section['correction_mean']:>12.4f}"
    return f"{label:<22}{means}  {interval:<28}{rates(section)}"


def summary_table(report: dict[str, Any]) -> str:
    """The short table ``aligner eval`` prints: the report's headline figures, one row per
    measure."""
    lines = []
    if "reward" in report or "cost" in report or "judge" in report:
        lines.append(HEADER)
    if "reward" in report:
        lines.append(score_row("reward (higher better)", report["reward"]))
    if "cost" in report:
        lines.append(score_row("cost (lower better)", report["cost"]))
        if "better_and_not_more_harmful" in report["cost"]:
            share = percent(report["cost"]["better_and_not_more_harmful"])
            lines.append(f"  better and not more harmful: {share}")
    if "judge" in report:
        judged = report["judge"]
        label = f"judge ({judged['judged']} valid, {judged['invalid']} invalid)"
        lines.append(f"{label:<73}{rates(judged)}")
        if judged["failed"]:
            lines.append(f"  {judged['failed']} records got no verdict: run again to ask for them")
    if "predictions" in report and "copy_rate" in report["predictions"]:
        metrics = report["predictions"]
        lines.append(
            f"copy rate {percent(metrics['copy_rate'])}, mean edit distance "
            f"{metrics['mean_edit_distance']:.2f} words ({metrics['num_records']} records)"
        )
        lines.append(
            f"mean length {metrics['mean_answer_words']:.1f} words answered, "
            f"{metrics['mean_correction_words']:.1f} corrected; "
            f"{percent(metrics['longer_rate'])} of corrections longer"
        )
    if "eval_loss" in report:
        loss = report["eval_loss"]
        lines.append(f"eval loss {loss['loss']:.4f} (perplexity {loss['perplexity']:.2f})")
    return "\n".join(lines)
