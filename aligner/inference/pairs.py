"""The records of a corrected file as pairs: what the replies answer, the answer and its correction.

What a reply answers (its context) is a record's ``question`` string or its ``messages`` list:
an OpenAI-style conversation up to and including the user turn that ``answer`` replies to.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aligner.datasets.base import DataError
from aligner.datasets.validation import check_messages
from aligner.inference.records import CORRECTION_FIELD, Record, id_key, with_ids
from aligner.prompts import serialize_conversation

Message = dict[str, str]
Context = str | list[Message]
"""A question, or a conversation ending with the user turn the replies answer."""


@dataclass(frozen=True)
class Pair:
    record: dict[str, Any]
    """The record as read, with its ``id`` (its index in the file where it had none)."""
    context: Context
    answer: str
    correction: str

    @property
    def id(self) -> Any:
        return self.record["id"]


def as_messages(context: Context) -> list[Message]:
    """The context as a message list: a question is one user turn."""
    if isinstance(context, str):
        return [{"role": "user", "content": context}]
    return [{"role": message["role"], "content": message["content"]} for message in context]


def transcript(context: Context) -> str:
    """The context as plain text, as a string template writes a conversation."""
    return serialize_conversation(as_messages(context))


def check_context_messages(value: object, where: str) -> list[Message]:
    """A record's ``messages`` as a clean message list, or a one-line error naming the record."""
    problem = check_messages(value)
    if problem is not None:
        raise DataError(f"{where}: {problem}")
    # Columnar formats give every message every key any message has; keep the two that count.
    return as_messages(value)


def read_pairs(rows: list[dict[str, Any]], source: str) -> list[Pair]:
    """The pairs of a corrected file's rows, each with a unique id."""
    pairs = []
    for index, record in enumerate(with_ids(rows, source)):
        where = f"{source}: row {index}"
        if record.get("messages") is not None:
            context: Context = check_context_messages(record["messages"], where)
        elif isinstance(record.get("question"), str):
            context = record["question"]
        else:
            raise DataError(
                f"{where}: needs a 'question' string or a 'messages' list (what the answer "
                "replies to)"
            )
        correction = record.get(CORRECTION_FIELD)
        if not isinstance(correction, str):
            raise DataError(f"{where}: field {CORRECTION_FIELD!r} must be a string")
        pairs.append(Pair(record, context, record["answer"], correction))
    return pairs


def pairs_digest(pairs: list[Pair]) -> str:
    """A hash of every pair's id, context and replies (not of their order or other fields).

    A resumed run compares it, so that scores and verdicts of an earlier version of the file
    are never mixed with those of the current one.
    """
    lines = sorted(
        json.dumps([key, p.context, p.answer, p.correction], ensure_ascii=False)
        for key, p in ((id_key(p.id), p) for p in pairs)
    )
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line.encode() + b"\n")
    return digest.hexdigest()[:16]


def pair_lookup(pairs: list[Pair]) -> Callable[[Record], Pair]:
    """The pair of one of these pairs' records (a resumable job deals out records)."""
    by_id = {id_key(pair.id): pair for pair in pairs}
    return lambda record: by_id[id_key(record["id"])]
