"""Upstream answers: the first step of the aligner's loop, resumably, over ranks or an endpoint.

Each output line is an input record plus ``answer`` and ``answer_source`` (the model and the
sampling settings that produced it), and ``id`` where the input had none; an input's own
``answer`` is kept as ``reference_answer``. The output is what ``aligner correct`` reads. The
model answers in its own chat template: locally in batches, split over the ranks under a
launcher; or through an OpenAI-compatible chat endpoint, several requests at once. Re-running
with the same ``--output`` asks only for the answers not yet written (``inference.resumable``).
The command itself is ``aligner.commands.answer``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from transformers import PreTrainedTokenizerBase, set_seed

from aligner.config import AnswerConfig
from aligner.datasets.encode import Request
from aligner.datasets.loading import load_records
from aligner.errors import RunFailure, UserError
from aligner.files import check_writable
from aligner.inference.endpoint import Endpoint, endpoint_from_args
from aligner.inference.generate import GenerationOptions, generate
from aligner.inference.model_loading import load_model, model_source
from aligner.inference.records import Record, with_ids
from aligner.inference.resumable import (
    ResumableJob,
    append_in_batches,
    append_replies,
    longest_first,
)
from aligner.runtime import Ranks
from aligner.tokenizer import load_tokenizer

ANSWER_FIELD = "answer"
SOURCE_FIELD = "answer_source"
REFERENCE_FIELD = "reference_answer"
"""Where an input's own ``answer`` is kept."""
ANSWERED_FIELDS = ("id", ANSWER_FIELD, SOURCE_FIELD)
"""What every line of this command's output holds."""


class AnswerError(UserError):
    """A flag or input that the command cannot work with."""


@dataclass(frozen=True)
class Plan:
    """What the checks found: the job, and the model to ask."""

    job: ResumableJob
    tokenizer: PreTrainedTokenizerBase | None  # the local model's; None with an endpoint
    endpoint: Endpoint | None


def turns(record: Record) -> list[dict[str, str]]:
    return list(Request.from_record(record).turns)


def prepare_records(rows: list[Record], source: str) -> list[Record]:
    records = with_ids(rows, source)
    for record in records:
        if record.get(ANSWER_FIELD) is not None:
            record[REFERENCE_FIELD] = record[ANSWER_FIELD]
        record.pop(ANSWER_FIELD, None)
    return records


def check(args: AnswerConfig) -> Plan:
    """Every check that needs no model, on every rank alike; nothing is written."""
    endpoint = endpoint_from_args(args, "upstream")
    if (endpoint is None) == (args.model_name_or_path is None):
        raise AnswerError("give the upstream model: --model_name_or_path or --upstream_url")
    tokenizer = None
    if endpoint is None:
        path, remote = args.model_name_or_path, args.trust_remote_code
        tokenizer = load_tokenizer(path, trust_remote_code=remote)
        if not tokenizer.chat_template:
            raise AnswerError(
                f"--model_name_or_path {args.model_name_or_path}: the tokenizer has no chat "
                "template; the upstream must be a chat model"
            )
        source = model_source(args.model_name_or_path)
    else:
        source = {"model": endpoint.model, "url": endpoint.base_url}
    rows = load_records(args.input, fields=("question",)).to_list()
    check_writable(args.output, "--output")
    job = ResumableJob(
        Path(args.output),
        prepare_records(rows, args.input),
        {**source, **GenerationOptions.from_args(args).settings(args.seed)},
        verb="answered",
        fields=ANSWERED_FIELDS,
        overwrite=args.overwrite,
    )
    job.check()
    return Plan(job, tokenizer, endpoint)


def answered(record: Record, answer: str, settings: dict[str, Any]) -> Record:
    return {**record, ANSWER_FIELD: answer, SOURCE_FIELD: settings}


def prompt_ids(tokenizer: PreTrainedTokenizerBase, record: Record) -> list[int]:
    """The record's conversation in the model's own chat template, ready for its reply."""
    text = tokenizer.apply_chat_template(turns(record), add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def answer_locally(
    args: AnswerConfig, plan: Plan, pending: list[Record], output: Path, ranks: Ranks
) -> None:
    """Generate the answers of ``pending`` in batches and append them to ``output``."""
    tokenizer = plan.tokenizer
    model = load_model(args, len(tokenizer), ranks.local_rank)
    set_seed(args.seed)
    options = GenerationOptions.from_args(args)
    stops = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    def lines_of(batch: list[Record]) -> list[Record]:
        prompts = [prompt_ids(tokenizer, record) for record in batch]
        answers = generate(model, tokenizer, prompts, options, stops)
        return [answered(r, a, plan.job.settings) for r, a in zip(batch, answers, strict=True)]

    append_in_batches(output, pending, args.batch_size, lines_of, desc="answer", ranks=ranks)


def chat_params(args: AnswerConfig) -> dict[str, Any]:
    """The request's sampling fields: greedy (temperature 0) unless ``--do_sample``."""
    params: dict[str, Any] = {"max_tokens": args.max_new_tokens}
    if not args.do_sample:
        return {**params, "temperature": 0}
    given = {"temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k}
    return {**params, "seed": args.seed, **{k: v for k, v in given.items() if v is not None}}


def answer_by_endpoint(
    args: AnswerConfig, plan: Plan, pending: list[Record], output: Path, ranks: Ranks
) -> None:
    """Ask the endpoint for the answers of ``pending``, appending each as it arrives.

    Records that got no reply after every retry are not written, so that the next run asks
    for them again; the run then fails naming how many.
    """
    endpoint, params = plan.endpoint, chat_params(args)

    async def ask(client: httpx.AsyncClient, record: Record) -> Record:
        reply = await endpoint.chat(client, turns(record), **params)
        return answered(record, reply.text, plan.job.settings)

    unanswered = append_replies(
        endpoint,
        pending,
        ask,
        output,
        concurrency=args.upstream_concurrency,
        desc="answer",
        ranks=ranks,
    )
    if unanswered:
        first = unanswered[0][1]
        raise RunFailure(
            f"{output}: {len(unanswered)} records got no answer (first: {first}); run the "
            "same command again to ask for them"
        )


def by_prompt_length(records: list[Record], plan: Plan) -> list[Record]:
    if plan.tokenizer is None:
        return records
    return longest_first(records, lambda record: len(prompt_ids(plan.tokenizer, record)))


def run(args: AnswerConfig, plan: Plan) -> int:
    def write_share(mine: list[Record], shard: Path) -> None:
        if plan.endpoint is None:
            answer_locally(args, plan, mine, shard, ranks)
        else:
            answer_by_endpoint(args, plan, mine, shard, ranks)

    ranks = Ranks.from_env()
    with ranks.group():
        result = plan.job.run(
            ranks, write_share, order=lambda pending: by_prompt_length(pending, plan)
        )
    if result is not None:
        final, new = result
        print(f"{plan.job.output}: {len(final)} answered records ({new} new)")
    return 0
