"""Synthetic correction records of realistic length, for benchmarks (no downloads)."""

from __future__ import annotations

import random

WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which "
    "but have an they you were her she there been one all we their has would when if so no what "
    "can more about other people time very into only could some these its also new because "
    "answer question model safety helpful harmless however consider instead important example "
    "information please note carefully recommend should cannot doctor water energy system "
    "history science language research result process problem government important"
).split()


def synthetic_records(count: int, seed: int) -> list[dict[str, str]]:
    """``count`` (question, answer, correction) records with log-normal lengths.

    About 1.3 tokens per word: question ~30, answer ~200, correction ~170 tokens at the median,
    so samples are ~400 tokens at the median with a tail to 2k.
    """
    rng = random.Random(seed)

    def text(median_words: float, cap: int) -> str:
        words = min(cap, max(1, int(rng.lognormvariate(0, 0.75) * median_words)))
        body = " ".join(rng.choice(WORDS) for _ in range(words))
        return body[0].upper() + body[1:] + "."

    return [
        {"question": text(25, 200), "answer": text(150, 1000), "correction": text(130, 900)}
        for _ in range(count)
    ]
