"""From dataset specs to one tokenized training set: load, validate, tokenize (cached), mix."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets
import numpy as np
import pyarrow.compute as pc
from filelock import FileLock
from transformers import PreTrainedTokenizerBase

from aligner.config import DataArgs
from aligner.datasets.base import DataError, RawDataset, get_dataset_class, load_dataset_modules
from aligner.datasets.encode import (
    ANSWER_SHORTENED,
    DROPPED,
    QUESTION_SHORTENED,
    TRUNCATED,
    TURNS_DROPPED,
    UNRENDERABLE,
    SampleEncoder,
)
from aligner.datasets.spec import DatasetSpec, parse_dataset_spec, sample_indices
from aligner.datasets.validation import record_columns
from aligner.files import write_atomically
from aligner.prompts import Template, get_template, resolve_template
from aligner.tokenizer import tokenizer_fingerprint

PIPELINE_VERSION = "3"
"""Part of every cache key: bump it when the encoding of a sample changes."""


PROGRESS_MIN_RECORDS = 10_000
"""Tokenizing this many records shows a progress bar."""


def default_cache_dir() -> Path:
    root = os.environ.get("ALIGNER_CACHE_DIR") or Path.home() / ".cache" / "aligner"
    return Path(root) / "data"


@dataclass
class SourceStats:
    """What happened to the records of one dataset spec."""

    spec: str
    read: int = 0
    """Records read, valid or not."""
    invalid: int = 0
    """Records skipped as invalid (lenient mode)."""
    truncated: int = 0
    """Samples whose prompt was shortened to fit ``max_length``."""
    turns_dropped: int = 0
    """Of those, samples that lost their conversation's oldest exchanges."""
    answer_shortened: int = 0
    """Of those, samples whose upstream answer was shortened."""
    question_shortened: int = 0
    """Of those, samples whose question (the last user turn, or the input) was shortened."""
    dropped_too_long: int = 0
    """Samples dropped because the correction + EOS alone does not fit."""
    split_boundary: int = 0
    """Samples whose prompt and correction were tokenized as two parts."""
    selected: int = 0
    """Samples taken after the proportion (upsampled or subsampled)."""
    from_cache: bool = False
    """Whether the tokenized data came from the cache."""
    first_invalid: str | None = None


@dataclass
class DataStats:
    sources: list[SourceStats] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(s.selected for s in self.sources)

    def to_dict(self) -> dict[str, object]:
        return {"sources": [asdict(s) for s in self.sources], "total": self.total}


def _content_key(dataset: datasets.Dataset) -> str:
    digest = hashlib.sha256()
    for batch in dataset.with_format("arrow").iter(batch_size=10_000):
        for column in batch.columns:
            digest.update(json.dumps(column.to_pylist(), ensure_ascii=False).encode())
    return digest.hexdigest()


def identity_records(raw: datasets.Dataset, source: str) -> datasets.Dataset:
    """The records with their answer as the target: (question, answer, answer)."""
    columns = record_columns(raw.column_names, ("question", "answer"))
    table = raw.select_columns(columns).with_format("arrow")[:]
    answers = table.column("answer")
    usable = pc.fill_null(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(answers)), 0), False)
    table = table.filter(usable)
    if table.num_rows == 0:
        raise DataError(f"dataset {source}: no record has a non-empty answer to copy")
    return datasets.Dataset(table.append_column("correction", table.column("answer")))


def _instantiate(spec: DatasetSpec, column_map: dict[str, str] | None) -> RawDataset:
    cls = get_dataset_class(spec.name)
    if column_map and not cls.COLUMN_MAP:
        raise DataError(
            f"dataset {spec}: --column_map does not apply to {cls.__name__}, which builds its "
            "own samples; it applies to record files and Hub datasets"
        )
    extra = {"column_map": column_map} if cls.COLUMN_MAP else {}
    try:
        return cls(spec.path, **extra) if spec.path is not None else cls(**extra)
    except DataError:
        raise
    except Exception as error:  # a user's dataset class failing in its constructor
        raise DataError(f"dataset {spec}: {type(error).__name__}: {error}") from None


def _read_source(
    source: RawDataset, spec: DatasetSpec, *, lenient: bool, cache_dir: Path, identity: bool
) -> tuple[datasets.Dataset, list[str], str]:
    """One source's valid records (as identity records with ``identity``), a line for each
    record skipped, and the key its tokenized form is cached under."""
    raw, skipped = source.to_hf_dataset(lenient=lenient, cache_dir=str(cache_dir / "raw"))
    source_key = source.cache_key() or _content_key(raw)
    if identity:
        raw, source_key = identity_records(raw, str(spec)), f"identity:{source_key}"
    return raw, skipped, source_key


def tokenize_source(
    raw: datasets.Dataset,
    dataset_name: str,
    source_key: str,
    encoder: SampleEncoder,
    tokenizer_id: str,
    cache_dir: Path,
    num_proc: int,
) -> tuple[datasets.Dataset, bool]:
    """Tokenize one source, or load it from the cache; safe to run on many ranks at once."""
    key_material = {
        "dataset": dataset_name,
        "source": source_key,
        "tokenizer": tokenizer_id,
        "template": encoder.template.to_dict(),
        "max_length": encoder.max_length,
        "version": PIPELINE_VERSION,
    }
    key = hashlib.sha256(json.dumps(key_material, sort_keys=True).encode()).hexdigest()[:24]
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache_file = cache_dir / f"tokenized-{key}.arrow"
    meta_file = cache_dir / f"tokenized-{key}.json"
    # The first process to take the lock tokenizes; the others then read its cache file.
    with FileLock(str(cache_dir / f"tokenized-{key}.lock")):
        from_cache = meta_file.is_file()
        progress = not from_cache and len(raw) >= PROGRESS_MIN_RECORDS
        if progress:
            datasets.enable_progress_bars()
        tokenized = raw.map(
            encoder,
            batched=True,
            batch_size=1000,
            num_proc=num_proc if num_proc > 1 else None,
            remove_columns=raw.column_names,
            cache_file_name=str(cache_file),
            load_from_cache_file=from_cache,
            new_fingerprint=key,
            desc="tokenizing",
        )
        if progress:
            datasets.disable_progress_bars()
        if not from_cache:
            # Written last: the cache counts only once the Arrow file is complete. It also
            # records which template and tokenizer the processed data was made with.
            write_atomically(meta_file, json.dumps(key_material, indent=2, ensure_ascii=False))
    return tokenized, from_cache


def _unrendered(
    tokenized: datasets.Dataset, raw: datasets.Dataset, source: RawDataset, *, exact: bool
) -> list[str]:
    """A line for each record the template could not render, naming the source and the record.

    A record is named by its 0-based place in the source when ``exact``, or where the loader
    kept that place (the selection of the valid rows); otherwise among the valid records.
    """
    status = np.asarray(tokenized.data.column("status"))
    rows = np.flatnonzero(status == UNRENDERABLE)
    if rows.size == 0:
        return []
    problems = tokenized.select(rows)["problem"]
    if raw._indices is not None:  # the rows the loader kept, by their place in the file
        places, exact = raw._indices.column(0).to_numpy()[rows], True
    else:
        places = rows
    record = "record" if exact else "valid record"
    return [
        f"{source.source}: {record} {place} (0-based): {problem}"
        for place, problem in zip(places, problems, strict=True)
    ]


def _usable_samples(
    tokenized: datasets.Dataset, spec: DatasetSpec, skipped: list[str], *, max_length: int
) -> datasets.Dataset:
    """The samples that fit and rendered; a source left with none is refused."""
    status = np.asarray(tokenized.data.column("status"))
    kept = tokenized.select(np.flatnonzero((status != DROPPED) & (status != UNRENDERABLE)))
    if len(kept) == 0 and (status == UNRENDERABLE).any():
        raise DataError(
            f"dataset {spec}: no valid record ({len(skipped)} skipped; first: {skipped[0]})"
        )
    if len(kept) == 0:
        raise DataError(
            f"dataset {spec}: no sample fits --max_length {max_length} "
            f"({int((status == DROPPED).sum())} corrections longer than that on their own)"
        )
    return kept


def _source_stats(
    tokenized: datasets.Dataset,
    spec: DatasetSpec,
    read: int,
    skipped: list[str],
    *,
    selected: int,
    from_cache: bool,
) -> SourceStats:
    """What happened to one source's records: skipped, shortened, dropped, selected."""
    status = np.asarray(tokenized.data.column("status"))
    shortened = np.asarray(tokenized.data.column("shortened"))
    return SourceStats(
        spec=str(spec),
        read=read,
        invalid=len(skipped),
        truncated=int((status == TRUNCATED).sum()),
        turns_dropped=int((shortened & TURNS_DROPPED > 0).sum()),
        answer_shortened=int((shortened & ANSWER_SHORTENED > 0).sum()),
        question_shortened=int((shortened & QUESTION_SHORTENED > 0).sum()),
        dropped_too_long=int((status == DROPPED).sum()),
        split_boundary=int(np.asarray(tokenized.data.column("split_boundary")).sum()),
        selected=selected,
        from_cache=from_cache,
        first_invalid=skipped[0] if skipped else None,
    )


def build_dataset(
    specs: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    template: Template,
    *,
    max_length: int,
    seed: int = 42,
    lenient: bool = False,
    num_proc: int = 1,
    cache_dir: str | Path | None = None,
    dataset_modules: Sequence[str] = (),
    identity: bool = False,
    column_map: dict[str, str] | None = None,
) -> tuple[datasets.Dataset, DataStats]:
    """Load, validate, tokenize and mix the datasets named by ``specs``.

    Returns a dataset with ``input_ids``, ``labels`` (IGNORE_INDEX on the prompt),
    ``length`` and ``prompt_length``, and the statistics of every source. With ``identity``
    the target of every sample is its upstream answer instead of its correction (the
    identity-mapping warm-up); records without a non-empty answer are left out. ``column_map``
    reads each record field from a column of another name, in every source.
    """
    if not specs:
        raise DataError(
            "no dataset given: pass --train_datasets NAME[:PROPORTION[:PATH]] or a file"
        )
    load_dataset_modules(dataset_modules)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    datasets.disable_progress_bars()
    encoder = SampleEncoder(tokenizer, template, max_length)
    tokenizer_id = tokenizer_fingerprint(tokenizer)
    stats = DataStats()
    parts = []
    for index, text in enumerate(specs):
        spec = parse_dataset_spec(text)
        source = _instantiate(spec, column_map)
        raw, skipped, source_key = _read_source(
            source, spec, lenient=lenient, cache_dir=cache_dir, identity=identity
        )
        tokenized, from_cache = tokenize_source(
            raw, spec.name, source_key, encoder, tokenizer_id, cache_dir, num_proc
        )
        read = len(raw) + len(skipped)
        unrendered = _unrendered(tokenized, raw, source, exact=not (skipped or identity))
        if unrendered and not lenient:
            raise DataError(unrendered[0])
        skipped = [*skipped, *unrendered]
        kept = _usable_samples(tokenized, spec, skipped, max_length=max_length)
        chosen = kept.select(sample_indices(len(kept), spec, seed + index))
        stats.sources.append(
            _source_stats(
                tokenized, spec, read, skipped, selected=len(chosen), from_cache=from_cache
            )
        )
        parts.append(chosen.remove_columns(["status", "shortened", "split_boundary", "problem"]))
    mixed = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    return mixed, stats


def template_for(
    data: DataArgs, tokenizer: PreTrainedTokenizerBase, model_name_or_path: str
) -> Template:
    """The prompt template the data flags name, resolved against the tokenizer.

    The ``--dataset_module`` modules are imported first, so that one which edits a prompt
    constant (``aligner.constants.CORRECTION_INSTRUCTION``) changes the template.
    """
    load_dataset_modules(data.dataset_module)
    template = get_template(data.prompt_template, data.system_prompt)
    return resolve_template(template, tokenizer, model_name_or_path)


@dataclass
class DataReport:
    train: DataStats
    eval: DataStats | None
    eval_split: int = 0
    """Samples held out of the training set by ``--eval_split_ratio``."""

    def describe(
        self, train: datasets.Dataset, evaluation: datasets.Dataset | None, warmup: int | None
    ) -> str:
        """One line: the samples of each set training will use."""
        parts = [f"data: {len(train)} training samples"]
        if self.eval_split:
            parts.append(f"{self.eval_split} held out for evaluation")
        if evaluation is not None:
            parts.append(f"{len(evaluation)} eval samples")
        if warmup is not None:
            parts.append(f"{warmup} identity warm-up samples")
        return ", ".join(parts)


def _pipeline_options(args: DataArgs) -> dict[str, object]:
    return {
        "max_length": args.max_length,
        "seed": args.seed,
        "lenient": args.lenient_data,
        "num_proc": args.num_proc,
        "cache_dir": args.data_cache_dir,
        "dataset_modules": args.dataset_module,
        "column_map": dict(args.column_map or []),
    }


def training_sets(
    args: DataArgs, tokenizer: PreTrainedTokenizerBase, template: Template
) -> tuple[datasets.Dataset, datasets.Dataset | None, DataReport]:
    """The training set, the evaluation set (or None), and what happened to the records."""
    common = _pipeline_options(args)
    train, train_stats = build_dataset(args.train_datasets, tokenizer, template, **common)
    if args.eval_datasets:
        evaluation, eval_stats = build_dataset(args.eval_datasets, tokenizer, template, **common)
        return train, evaluation, DataReport(train_stats, eval_stats)
    if args.eval_split_ratio > 0:
        order = np.random.default_rng(args.seed).permutation(len(train))
        held_out = max(1, round(len(train) * args.eval_split_ratio))
        if held_out >= len(train):
            raise DataError(
                f"--eval_split_ratio {args.eval_split_ratio} leaves no training sample "
                f"out of {len(train)}"
            )
        evaluation = train.select(np.sort(order[:held_out]))
        train = train.select(np.sort(order[held_out:]))
        return train, evaluation, DataReport(train_stats, None, eval_split=held_out)
    return train, None, DataReport(train_stats, None)


def warmup_set(
    args: DataArgs, tokenizer: PreTrainedTokenizerBase, template: Template
) -> datasets.Dataset | None:
    """The identity warm-up set: a seeded ``--identity_warmup_ratio`` share of the training
    records, each with its answer as the target; None when the ratio is 0."""
    ratio = args.identity_warmup_ratio
    if ratio == 0:
        return None
    identity, _ = build_dataset(
        args.train_datasets, tokenizer, template, identity=True, **_pipeline_options(args)
    )
    count = max(1, round(len(identity) * ratio))
    chosen = np.random.default_rng([args.seed, 1]).choice(len(identity), count, replace=False)
    return identity.select(np.sort(chosen))
