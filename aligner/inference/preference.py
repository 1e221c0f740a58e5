"""Preference pairs from corrected records: the correction chosen, the original answer rejected.

The pairs train the *upstream* model with DPO, so the prompt is the upstream model's own
prompt, the user's question (or conversation), not the aligner's correction prompt. Records are
written in the form TRL's ``DPOTrainer`` reads: ``standard`` gives ``{"prompt", "chosen",
"rejected"}`` strings; ``conversational`` gives the same keys as message lists, so that TRL
applies the upstream model's chat template.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aligner.config import PREFERENCE_FORMATS
from aligner.inference.metrics import is_copy
from aligner.inference.records import write_records
from aligner.prompts import Turn, serialize_conversation

PROMPT_SEPARATOR = "\n\n"
"""Ends a standard-format prompt written without the upstream chat template: TRL tokenizes the
prompt alone and joined to each reply, and a prompt that ends mid-word merges tokens with the
reply's first characters (then the prompt's tokens are not a prefix of the pair's)."""


@dataclass
class PreferenceStats:
    written: int = 0
    skipped_unchanged: int = 0
    """Pairs whose correction equals the answer: no preference to learn from."""
    skipped_empty: int = 0
    """Pairs whose correction is empty: an empty chosen response would teach silence."""


def upstream_conversation(record: dict[str, Any]) -> list[Turn]:
    """What the upstream model was asked: the record's ``messages``, or its ``question``."""
    if record.get("messages") is not None:
        return [{"role": turn["role"], "content": turn["content"]} for turn in record["messages"]]
    return [{"role": "user", "content": record["question"]}]


def standard_prompt(conversation: list[Turn], upstream: Any = None) -> str:
    """The prompt of a standard-format pair: the upstream tokenizer's chat template with its
    generation prompt, as the upstream model is prompted; without one, the conversation as text
    followed by ``PROMPT_SEPARATOR``."""
    if upstream is not None and getattr(upstream, "chat_template", None):
        return upstream.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=False
        )
    return serialize_conversation(conversation) + PROMPT_SEPARATOR


def preference_pair(
    conversation: list[Turn], answer: str, correction: str, form: str, upstream: Any = None
) -> dict[str, Any]:
    if form == "conversational":
        return {
            "prompt": conversation,
            "chosen": [{"role": "assistant", "content": correction}],
            "rejected": [{"role": "assistant", "content": answer}],
        }
    prompt = standard_prompt(conversation, upstream)
    return {"prompt": prompt, "chosen": correction, "rejected": answer}


def write_preferences(
    records: Iterable[dict[str, Any]],
    path: str | Path,
    form: str = "standard",
    upstream: Any = None,
) -> PreferenceStats:
    """Write the pairs of corrected records (``question`` or ``messages``, ``answer``,
    ``correction``); ``upstream`` is the upstream model's tokenizer, whose chat template writes
    standard-format prompts."""
    if form not in PREFERENCE_FORMATS:
        choices = ", ".join(PREFERENCE_FORMATS)
        raise ValueError(f"unknown preference format {form!r}: use one of {choices}")
    stats, pairs = PreferenceStats(), []
    for record in records:
        answer, correction = record["answer"], record["correction"]
        if not correction.strip():
            stats.skipped_empty += 1
        elif is_copy(correction, answer):
            stats.skipped_unchanged += 1
        else:
            conversation = upstream_conversation(record)
            pairs.append(preference_pair(conversation, answer, correction, form, upstream))
    stats.written = len(pairs)
    write_records(path, pairs)
    return stats
