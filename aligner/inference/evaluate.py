"""The ``aligner eval`` command: whether corrections helped, and a checkpoint's loss.

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
import json
import math
import os
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
from aligner.errors import EXIT_FAILED, EXIT_REFUSED, EXIT_SIGINT, CommandParser, report
from aligner.inference import judge, scoring
from aligner.inference.chat_client import ChatClient, check_base_url
from aligner.inference.correct import CORRECTION_FIELD, REFERENCE_FIELD
from aligner.inference.distributed import Ranks
from aligner.inference.loading import add_model_arguments, checkpoint_template, load_model
from aligner.inference.metrics import correction_metrics
from aligner.inference.pairs import Pair, read_pairs
from aligner.inference.summary import summary_table
from aligner.loss import CorrectionLM
from aligner.tokenizer import load_tokenizer


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="aligner eval",
        description="Evaluate an aligner: whether its corrections helped, its loss on data.",
    )
    parser.add_argument("--output", default=None, help="also write the JSON report here")
    parser.add_argument(
        "--seed", type=int, default=42, help="seed of the bootstrap and the judge's A/B order"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
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
    loss.add_argument(
        "--eval_datasets",
        nargs="+",
        default=None,
        metavar="NAME[:PROPORTION[:PATH]]",
        help="correction datasets (question, answer, correction), as for training",
    )
    loss.add_argument(
        "--template",
        "--prompt_template",
        dest="template",
        default=None,
        help="prompt template; default: the checkpoint's own",
    )
    loss.add_argument(
        "--system_prompt",
        default=None,
        help="the aligner's system message with a chat template; default: the checkpoint's",
    )
    loss.add_argument(
        "--max_length",
        type=int,
        default=2048,
        help="tokens per sample, truncated as in training (%(default)s)",
    )
    loss.add_argument(
        "--batch_size",
        type=int,
        default=8,
        help="samples per forward pass, for the loss and the scorers (%(default)s)",
    )
    loss.add_argument(
        "--dataset_module",
        action="append",
        default=[],
        metavar="MODULE",
        help="a module registering dataset classes, as for training; repeatable",
    )
    loss.add_argument("--lenient_data", action="store_true", help="skip invalid records")
    loss.add_argument("--data_cache_dir", default=None, help="tokenized data cache folder")
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
    group = parser.add_argument_group("LLM judge (on --predictions)")
    group.add_argument(
        "--judge_url",
        default=None,
        help="base URL of an OpenAI-compatible server, e.g. http://localhost:8000/v1",
    )
    group.add_argument("--judge_model", default=None, help="the model name the server serves")
    group.add_argument(
        "--judge_api_key_env",
        default="OPENAI_API_KEY",
        help="environment variable holding the API key, sent as a bearer token (%(default)s)",
    )
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
        "--judge_concurrency", type=int, default=8, help="requests at once (%(default)s)"
    )
    group.add_argument(
        "--judge_timeout",
        type=float,
        default=120.0,
        help="seconds a request waits to connect or for data (%(default)s)",
    )
    group.add_argument(
        "--judge_retries",
        type=int,
        default=5,
        help="retries after a 429, 5xx, timeout or malformed reply (%(default)s)",
    )
    group.add_argument(
        "--judge_backoff",
        type=float,
        default=1.0,
        help="seconds before the first retry, doubled for each further one (%(default)s)",
    )
    group.add_argument(
        "--judge_max_tokens", type=int, default=1024, help="most tokens per verdict (%(default)s)"
    )
    group.add_argument(
        "--judge_temperature", type=float, default=0.0, help="judge sampling (%(default)s)"
    )


def beside(predictions: str, kind: str) -> Path:
    """``corrected.jsonl`` -> ``corrected.KIND.jsonl``, in the same folder."""
    path = Path(predictions)
    stem = path.name if path.is_dir() else path.stem
    return path.with_name(f"{stem}.{kind}.jsonl")


def scoring_requested(args: argparse.Namespace) -> bool:
    return bool(args.reward_model or args.cost_model)


def check_args(args: argparse.Namespace) -> None:
    wants_loss = bool(args.model_name_or_path or args.eval_datasets)
    judging = bool(args.judge_url or args.judge_model)
    if (scoring_requested(args) or judging) and not args.predictions:
        raise DataError("the scorers and the judge rate a corrected file: pass it as --predictions")
    if not args.predictions and not wants_loss:
        raise DataError("nothing to evaluate: pass --predictions and/or --eval_datasets")
    if wants_loss and not (args.model_name_or_path and args.eval_datasets):
        raise DataError("the eval loss needs both --model_name_or_path and --eval_datasets")
    if judging and not (args.judge_url and args.judge_model):
        raise DataError("the judge needs both --judge_url and --judge_model")
    if args.judge_url:
        check_base_url(args.judge_url)
        judge.load_prompt(args.judge_prompt)  # a bad prompt file fails now, not after scoring
    for flag in ("batch_size", "bootstrap_samples", "judge_concurrency", "judge_max_tokens"):
        if getattr(args, flag) < 1:
            raise DataError(f"--{flag} must be at least 1")
    for flag in ("tie_margin", "judge_retries", "judge_backoff", "judge_temperature"):
        if getattr(args, flag) < 0:
            raise DataError(f"--{flag} must not be negative")
    if args.judge_timeout <= 0:
        raise DataError("--judge_timeout must be above 0")
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
    template = checkpoint_template(args.model_name_or_path, args.template, args.system_prompt)
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
    model = load_model(args)
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
    client = ChatClient(
        base_url=check_base_url(args.judge_url),
        model=args.judge_model,
        # Read here and kept in memory only: it reaches no file, log or report.
        api_key=os.environ.get(args.judge_api_key_env) or None,
        timeout=args.judge_timeout,
        retries=args.judge_retries,
        backoff=args.judge_backoff,
        max_tokens=args.judge_max_tokens,
        temperature=args.judge_temperature,
    )
    result = judge.judge_pairs(
        client,
        judge.load_prompt(args.judge_prompt),
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
    check_args(args)
    ranks = Ranks.from_env()
    if ranks.world_size > 1 and args.device_map:
        raise DataError(
            "--device_map auto spreads each model over the node's GPUs: run it without a launcher"
        )
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
        Path(args.output).write_text(text + "\n", encoding="utf-8")
    return 1 if failed else 0


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("aligner eval: interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_SIGINT
    except ValueError as error:
        # Bad records, templates, flags, paths, checkpoints and refused requests: one line.
        return report("aligner eval", error, EXIT_REFUSED)
    except OSError as error:
        return report("aligner eval", error, EXIT_FAILED)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
