"""Correcting (question, answer) records with a trained aligner, resumably, over ranks.

Each output line is an input record plus ``correction`` (and ``id`` where the input had none);
an input's own ``correction`` (a test split's reference) is kept as ``reference_correction``.
Re-running with the same ``--output`` skips the records already written; a crash loses at most
the batch in flight. When done, the output is in input order. An existing file this command did
not write is never resumed into or replaced without ``--overwrite``. Under a launcher the records
are spread over the ranks, one GPU each. The command itself is ``aligner.commands.correct``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from transformers import set_seed

from aligner.config import CorrectConfig
from aligner.datasets.encode import Request, SampleEncoder
from aligner.datasets.loading import load_records
from aligner.errors import UserError
from aligner.files import check_writable
from aligner.inference.generate import GenerationOptions, generate
from aligner.inference.metrics import is_copy
from aligner.inference.model_loading import checkpoint_template, load_model, model_source
from aligner.inference.output import check_claim, check_settings
from aligner.inference.preference import write_preferences
from aligner.inference.records import (
    CORRECTION_FIELD,
    REFERENCE_FIELD,
    Record,
    with_ids,
)
from aligner.inference.remote import remote_aligner_from_flags
from aligner.inference.resumable import ResumableJob, append_in_batches, longest_first
from aligner.prompts import Template
from aligner.runtime import Ranks
from aligner.tokenizer import load_tokenizer

ROUNDS_FIELD = "correction_rounds"
INFERENCE_MAX_LENGTH = 1 << 30
"""Prompts are not truncated at inference: the model sees the record whole."""


class CorrectionError(UserError):
    """A flag or input that the command cannot work with."""


def prepare_records(rows: list[Record], source: str) -> list[Record]:
    """Give each record its id (its own, else its index) and keep a given correction aside."""
    records = with_ids(rows, source)
    for record in records:
        if CORRECTION_FIELD in record:
            record[REFERENCE_FIELD] = record.pop(CORRECTION_FIELD)
    return records


def correct_batch(
    generate_fn: Callable[[list[Request]], list[str]], records: list[Record], rounds: int
) -> list[list[str]]:
    """Each record's corrections, one per round that ran.

    Each round corrects the previous round's correction. A record whose round returned its
    answer unchanged is done: the aligner has nothing left to correct.
    """
    requests = [Request.from_record(record) for record in records]
    history: list[list[str]] = [[] for _ in records]
    active = list(range(len(records)))
    for _ in range(rounds):
        still_active = []
        for i, correction in zip(active, generate_fn([requests[i] for i in active]), strict=True):
            history[i].append(correction)
            if not is_copy(correction, requests[i].answer or ""):
                still_active.append(i)
            requests[i] = replace(requests[i], answer=correction)
        active = still_active
        if not active:
            break
    return history


def corrected(record: Record, history: list[str], rounds: int) -> Record:
    result = {**record, CORRECTION_FIELD: history[-1]}
    if rounds > 1:
        result[ROUNDS_FIELD] = history
    return result


def correct_pending(
    args: CorrectConfig,
    encoder: SampleEncoder,
    pending: list[Record],
    output: Path,
    ranks: Ranks,
) -> None:
    """Generate the corrections of ``pending`` and append them to ``output``."""
    remote = remote_aligner_from_flags(args, encoder)
    generate_fn = remote.generate if remote is not None else local_generator(args, encoder, ranks)

    def lines_of(batch: list[Record]) -> list[Record]:
        histories = correct_batch(generate_fn, batch, args.rounds)
        return [corrected(r, h, args.rounds) for r, h in zip(batch, histories, strict=True)]

    append_in_batches(output, pending, args.batch_size, lines_of, desc="correct", ranks=ranks)


def local_generator(
    args: CorrectConfig, encoder: SampleEncoder, ranks: Ranks
) -> Callable[[list[Request]], list[str]]:
    """Corrections from the checkpoint loaded here, on this rank's device."""
    options = GenerationOptions.from_args(args)
    model = load_model(args, len(encoder.tokenizer), ranks.local_rank)
    set_seed(args.seed)
    stops = encoder.stop_token_ids()

    def generate_fn(requests: list[Request]) -> list[str]:
        prompts = [encoder.prompt_ids(request) for request in requests]
        return generate(model, encoder.tokenizer, prompts, options, stops)

    return generate_fn


def prompt_length(encoder: SampleEncoder, record: Record) -> int:
    return len(encoder.prompt_ids(Request.from_record(record)))


CORRECTED_FIELDS = ("id", CORRECTION_FIELD)
"""What every line of this command's output holds."""


def run_settings(args: CorrectConfig, template: Template) -> dict[str, Any]:
    """What decides the corrections; a resumed run must match it (batch size does not)."""
    return {
        **model_source(args.model_name_or_path),
        "template": template.to_dict(),
        "rounds": args.rounds,
        **GenerationOptions.from_args(args).settings(args.seed),
    }


@dataclass(frozen=True)
class Plan:
    """What the checks found: the job to do, how to encode its prompts, and the upstream
    model's tokenizer (or None) for preference pairs."""

    encoder: SampleEncoder
    job: ResumableJob
    upstream: Any


def load_tokenizers(args: CorrectConfig) -> tuple[Any, Any]:
    """The aligner's tokenizer, and the upstream model's if ``--upstream_tokenizer`` names one."""
    tokenizer = load_tokenizer(args.model_name_or_path, trust_remote_code=args.trust_remote_code)
    upstream = None
    if args.upstream_tokenizer:
        upstream = load_tokenizer(
            args.upstream_tokenizer,
            trust_remote_code=args.trust_remote_code,
            flag="--upstream_tokenizer",
        )
    return tokenizer, upstream


def check(args: CorrectConfig) -> Plan:
    """Every check that needs no model, on every rank alike; nothing is written."""
    tokenizer, upstream = load_tokenizers(args)
    template = checkpoint_template(
        args.model_name_or_path, args.prompt_template, args.system_prompt
    )
    encoder = SampleEncoder(tokenizer, template, max_length=INFERENCE_MAX_LENGTH)
    rows = load_records(args.input, fields=("question", "answer")).to_list()
    check_writable(args.output, "--output")
    job = ResumableJob(
        Path(args.output),
        prepare_records(rows, args.input),
        run_settings(args, encoder.template),
        verb="corrected",
        fields=CORRECTED_FIELDS,
        overwrite=args.overwrite,
    )
    job.check()
    if args.preference_output:
        check_writable(args.preference_output, "--preference_output")
        flag = "--preference_output"
        check_claim(args.preference_output, {}, overwrite=args.overwrite, flag=flag)
    return Plan(encoder, job, upstream)


def run(args: CorrectConfig, plan: Plan) -> int:
    encoder, output = plan.encoder, plan.job.output
    ranks = Ranks.from_env()
    with ranks.group():
        result = plan.job.run(
            ranks,
            lambda mine, shard: correct_pending(args, encoder, mine, shard, ranks),
            order=lambda pending: longest_first(pending, partial(prompt_length, encoder)),
        )
    if result is None:
        return 0
    final, new = result
    print(f"{output}: {len(final)} corrected records ({new} new)")
    if args.preference_output:
        pairs = args.preference_output
        stats = write_preferences(final, pairs, args.preference_format, plan.upstream)
        check_settings(pairs, {"from": str(output.resolve())}, resuming=False)  # marks it ours
        print(
            f"{pairs}: {stats.written} preference pairs; skipped "
            f"{stats.skipped_unchanged} unchanged and {stats.skipped_empty} empty corrections"
        )
    return 0
