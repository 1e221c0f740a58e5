"""Evaluating an aligner: whether its corrections helped, and a checkpoint's loss on data.

The metrics of generated corrections (copy rate, edit distance, exact match and ROUGE-L against
references), reward- and cost-model scores, an LLM judge's verdicts, and the mean loss per
target token with perplexity; all in one JSON report. The command is ``aligner.commands.evaluate``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from tqdm import tqdm
from transformers import PreTrainedModel

from aligner.datasets.base import DataError
from aligner.datasets.collate import PaddingCollator
from aligner.datasets.loading import load_records
from aligner.datasets.pipeline import build_dataset
from aligner.files import write_atomically
from aligner.inference import judge, scoring
from aligner.inference.endpoint import endpoint_from_args
from aligner.inference.metrics import correction_metrics
from aligner.inference.model_loading import checkpoint_template, load_model
from aligner.inference.pairs import Pair, read_pairs
from aligner.inference.records import CORRECTION_FIELD, REFERENCE_FIELD
from aligner.inference.summary import summary_table
from aligner.loss import CorrectionLM
from aligner.runtime import Ranks
from aligner.tokenizer import load_tokenizer


def beside(predictions: str, kind: str) -> Path:
    """``corrected.jsonl`` -> ``corrected.KIND.jsonl``, in the same folder."""
    path = Path(predictions)
    stem = path.name if path.is_dir() else path.stem
    return path.with_name(f"{stem}.{kind}.jsonl")


def scoring_requested(args: argparse.Namespace) -> bool:
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


@torch.inference_mode()
def target_loss(
    model: PreTrainedModel, dataset: datasets.Dataset, pad_token_id: int, batch_size: int
) -> dict[str, float | int]:
    """Mean cross-entropy over every target token of ``dataset`` (not a mean of batch means),
    computed as training computes it."""
    collate = PaddingCollator(pad_token_id)
    correction_loss = CorrectionLM(model)
    # Longest first, so that each batch pads little and memory trouble shows up at once.
    order = np.argsort(-np.asarray(dataset["length"]), kind="stable")
    columns = dataset.select_columns(["input_ids", "labels"])
    total, count = 0.0, 0
    for start in tqdm(range(0, len(order), batch_size), desc="eval loss", unit="batch"):
        chunk = columns[order[start : start + batch_size].tolist()]
        pairs = zip(chunk["input_ids"], chunk["labels"], strict=True)
        batch = collate([{"input_ids": ids, "labels": labels} for ids, labels in pairs])
        out = correction_loss(**{key: value.to(model.device) for key, value in batch.items()})
        total += out.loss_sum.item()
        count += int(out.tokens)
    loss = total / count
    return {
        "num_samples": len(dataset),
        "num_target_tokens": count,
        "loss": loss,
        "perplexity": math.exp(loss),
    }


def checkpoint_loss(args: argparse.Namespace) -> dict[str, Any]:
    template = checkpoint_template(
        args.model_name_or_path, args.prompt_template, args.system_prompt
    )
    tokenizer = load_tokenizer(args.model_name_or_path, trust_remote_code=args.trust_remote_code)
    dataset, stats = build_dataset(
        args.eval_datasets,
        tokenizer,
        template,
        max_length=args.max_length,
        lenient=args.lenient_data,
        cache_dir=args.data_cache_dir,
        dataset_modules=args.dataset_module,
    )
    model = load_model(args, len(tokenizer))
    report = target_loss(model, dataset, tokenizer.pad_token_id, args.batch_size)
    return {
        "checkpoint": args.model_name_or_path,
        "template": template.name,
        **report,
        "data": stats.to_dict(),
    }


def score_predictions(
    args: argparse.Namespace, pairs: list[Pair], ranks: Ranks
) -> dict[str, Any] | None:
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


def judge_predictions(args: argparse.Namespace, pairs: list[Pair]) -> tuple[dict[str, Any], int]:
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


def evaluate(args: argparse.Namespace, ranks: Ranks) -> tuple[dict[str, Any], int] | None:
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


def run(args: argparse.Namespace) -> int:
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
