"""``aligner data``: validate the training data, print what training would see, dump samples.

Usage:
    aligner data --train_datasets data/train.jsonl --model_name_or_path MODEL \
        [--max_length 2048] [--prompt_template correction] [--dump samples.jsonl [--overwrite]]
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasets import Dataset

from aligner.config import DataConfig
from aligner.datasets.base import DataError
from aligner.datasets.pipeline import DataReport, template_for, training_sets
from aligner.datasets.spec import parse_dataset_spec
from aligner.errors import Plan, run_command
from aligner.files import atomic_writer, check_writable
from aligner.prompts import Template
from aligner.tokenizer import load_tokenizer

NAME_WIDTH = 40
"""Characters of a dataset's name in the table; longer names lose their middle."""


def padding_share(lengths: np.ndarray, batch_size: int, order: np.ndarray) -> float:
    """The share of batch tokens that are padding when ``order`` is cut into batches."""
    padded = real = 0
    for start in range(0, len(order), batch_size):
        batch = lengths[order[start : start + batch_size]]
        padded += int(batch.max()) * len(batch)
        real += int(batch.sum())
    return 1 - real / padded if padded else 0.0


def format_report(report: DataReport, train, batch_size: int, seed: int) -> str:
    lines = ["records"]
    counts = f"{'read':>8} {'invalid':>8} {'truncated':>9} {'too long':>9} {'kept':>8}"
    lines.append(f"  {'dataset':<{NAME_WIDTH}} {counts}")
    for s in report.train.sources:
        kept = s.read - s.invalid - s.dropped_too_long
        lines.append(
            f"  {shorten(s.spec, NAME_WIDTH):<{NAME_WIDTH}} {s.read:>8} {s.invalid:>8} "
            f"{s.truncated:>9} {s.dropped_too_long:>9} {kept:>8}"
        )
        if s.first_invalid:
            lines.append(f"    first invalid: {s.first_invalid}")
        if s.truncated:
            lines.append(
                f"    truncated: {s.turns_dropped} lost their oldest turns, "
                f"{s.answer_shortened} a shortened answer, "
                f"{s.question_shortened} a shortened question"
            )
        if s.selected != kept:
            lines.append(f"    proportion: {kept} kept -> {s.selected} selected")
        if s.split_boundary:
            lines.append(f"    {s.split_boundary} samples tokenized as prompt + correction parts")
        lines.append(
            f"    tokenized data {'loaded from cache' if s.from_cache else 'written to cache'}"
        )
    if report.eval_split:
        lines.append(f"  held out for evaluation (--eval_split_ratio): {report.eval_split}")
    lengths = np.asarray(train["length"])
    prompt = np.asarray(train["prompt_length"])
    columns = {"prompt": prompt, "target": lengths - prompt, "total": lengths}
    lines += ["", f"tokens per sample ({len(lengths)} training samples)"]
    lines.append(f"  {'':<8}" + "".join(f"{n:>8}" for n in ("mean", "p50", "p90", "p99", "max")))
    for name, values in columns.items():
        stats = [values.mean(), *np.percentile(values, [50, 90, 99]), values.max()]
        lines.append(f"  {name:<8}" + "".join(f"{v:>8.0f}" for v in stats))
    target_share = columns["target"].sum() / lengths.sum()
    lines.append(f"  target tokens: {target_share:.1%} of real tokens")
    shuffled = np.random.default_rng(seed).permutation(len(lengths))
    grouped = np.argsort(lengths, kind="stable")
    lines += [
        "",
        f"padding share at batch size {batch_size}: "
        f"random order {padding_share(lengths, batch_size, shuffled):.1%}, "
        f"length-grouped {padding_share(lengths, batch_size, grouped):.1%}",
    ]
    return "\n".join(lines)


def shorten(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters in the middle, where an ellipsis marks the cut, so
    that both the dataset's name and the end of its path stay readable."""
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return f"{text[:head]}…{text[len(text) - (width - 1 - head) :]}"


def input_paths(args: DataConfig) -> list[Path]:
    """The files and folders the data flags read."""
    specs = [*args.train_datasets, *(args.eval_datasets or [])]
    paths = [parse_dataset_spec(spec).path for spec in specs]
    return [Path(path).resolve() for path in paths if path]


def check_dump(args: DataConfig) -> None:
    """Refuse a --dump path that is an input, inside an input folder, or (unless --overwrite)
    any existing file; and one that cannot be written."""
    dump = Path(args.dump).resolve()
    for source in input_paths(args):
        if dump == source or source in dump.parents:
            raise DataError(f"--dump {args.dump}: is an input of this command ({source})")
    check_writable(args.dump, "--dump")
    if dump.exists() and not args.overwrite:
        raise DataError(
            f"--dump {args.dump} already exists: choose another file, or pass --overwrite"
        )


def dump_samples(train, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path) as handle:
        for batch in train.select_columns(["input_ids", "labels"]).iter(batch_size=1000):
            for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True):
                handle.write(json.dumps({"input_ids": ids, "labels": labels}) + "\n")


@dataclass(frozen=True)
class Samples:
    """What the data command's checks found: the template and the tokenized training set."""

    template: Template
    train: Dataset
    report: DataReport


def prepare(args: DataConfig) -> Plan[DataConfig, Samples]:
    """Check the flags and the dump path, then read, check and tokenize every record."""
    data = args.data
    if args.dump:
        check_dump(args)
    tokenizer = load_tokenizer(args.model_name_or_path, trust_remote_code=args.trust_remote_code)
    template = template_for(data, tokenizer, args.model_name_or_path)
    train, _, data_report = training_sets(data, tokenizer, template)
    return Plan(args, Samples(template, train, data_report))


def execute(plan: Plan[DataConfig, Samples]) -> int:
    args, template, train = plan.config, plan.found.template, plan.found.train
    print(f"prompt template: {template.name} ({template.kind})")
    print(format_report(plan.found.report, train, args.per_device_train_batch_size, args.seed))
    if args.dump:
        dump_samples(train, Path(args.dump))
        print(f"\nwrote {len(train)} samples to {args.dump}")
    return 0


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    return run_command("aligner data", arguments, DataConfig.parse, prepare, execute)


if __name__ == "__main__":
    sys.exit(main())
