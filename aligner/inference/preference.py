"""Preference pairs from corrected records: the correction chosen, the original answer rejected.

The pairs train the *upstream* model with DPO, so the prompt is the upstream model's own
prompt, the user's question, not the aligner's correction prompt. Records are written in the
form TRL's ``DPOTrainer`` reads: ``standard`` gives ``{"prompt", "chosen", "rejected"}``
strings; ``conversational`` gives the same keys as message lists, so that TRL applies the
upstream model's chat template.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aligner.inference.metrics import is_copy
from aligner.inference.output import write_atomically

FORMATS = ("standard", "conversational")


@dataclass
class PreferenceStats:
    written: int = 0
    skipped_unchanged: int = 0
    """Pairs whose correction equals the answer: no preference to learn from."""
    skipped_empty: int = 0
    """Pairs whose correction is empty: an empty chosen response would teach silence."""


def preference_pair(question: str, answer: str, correction: str, form: str) -> dict[str, Any]:
    if form == "conversational":
        return {
            "prompt": [{"role": "user", "content": question}],
            "chosen": [{"role": "assistant", "content": correction}],
            "rejected": [{"role": "assistant", "content": answer}],
        }
    return {"prompt": question, "chosen": correction, "rejected": answer}


def write_preferences(
    records: Iterable[dict[str, Any]], path: str | Path, form: str = "standard"
) -> PreferenceStats:
    """Write the pairs of corrected records (``question``, ``answer``, ``correction``)."""
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
            pairs.append(preference_pair(record["question"], answer, correction, form))
    stats.written = len(pairs)
    write_atomically(path, pairs)
    return stats
