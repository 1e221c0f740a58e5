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

from aligner.inference.metrics import is_copy
from aligner.inference.output import write_atomically
from aligner.prompts import Turn, serialize_conversation

FORMATS = ("standard", "conversational")


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


def preference_pair(
    conversation: list[Turn], answer: str, correction: str, form: str
) -> dict[str, Any]:
    if form == "conversational":
        return {
            "prompt": conversation,
            "chosen": [{"role": "assistant", "content": correction}],
            "rejected": [{"role": "assistant", "content": answer}],
        }
    prompt = serialize_conversation(conversation)
    return {"prompt": prompt, "chosen": correction, "rejected": answer}


def write_preferences(
    records: Iterable[dict[str, Any]], path: str | Path, form: str = "standard"
) -> PreferenceStats:
    """Write the pairs of corrected records (``question`` or ``messages``, ``answer``,
    ``correction``)."""
    if form not in FORMATS:
        raise ValueError(f"unknown preference format {form!r}: use one of {', '.join(FORMATS)}")
    stats, pairs = PreferenceStats(), []
    for record in records:
        answer, correction = record["answer"], record["correction"]
        if not correction.strip():
            stats.skipped_empty += 1
        elif is_copy(correction, answer):
            stats.skipped_unchanged += 1
        else:
            pairs.append(preference_pair(upstream_conversation(record), answer, correction, form))
    stats.written = len(pairs)
    write_atomically(path, pairs)
    return stats
