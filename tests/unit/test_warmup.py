"""Identity warm-up: (question, answer, answer) samples in the share the flag states."""

from __future__ import annotations

import argparse
import json

from aligner.config import DataArgs
from aligner.constants import IGNORE_INDEX
from aligner.datasets.pipeline import warmup_set
from aligner.options import add_options, take
from aligner.prompts import get_template

from ..conftest import TEMPLATE_DATASET


def parse(*argv: str) -> DataArgs:
    parser = argparse.ArgumentParser()
    add_options(parser, DataArgs)
    return take(parser.parse_args(["--train_datasets", *argv]), DataArgs)


def test_warmup_targets_are_the_answers_in_the_stated_share(bpe_tokenizer, tmp_path) -> None:
    data = tmp_path / "train.jsonl"
    records = [
        {"question": f"q{i}", "answer": f"answer number {i}", "correction": f"fixed {i}"}
        for i in range(40)
    ]
    records[5]["answer"] = "  "  # nothing to copy: never a warm-up sample
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    args = parse(str(data), "--identity_warmup_ratio", "0.25", "--data_cache_dir", str(tmp_path))
    warmup = warmup_set(args, bpe_tokenizer, get_template())
    assert len(warmup) == round(39 * 0.25)
    answers = {r["answer"] for r in records}
    seen = set()
    for row in warmup:
        target = [t for t, lab in zip(row["input_ids"], row["labels"], strict=True) if lab != -100]
        text = bpe_tokenizer.decode(target)
        assert text.endswith(bpe_tokenizer.eos_token)
        answer = text[: -len(bpe_tokenizer.eos_token)]
        assert answer in answers and answer.strip()
        prompt = bpe_tokenizer.decode(row["input_ids"][: row["prompt_length"]])
        assert f"##Answer: {answer}\n" in prompt
        seen.add(answer)
    assert len(seen) == len(warmup)  # distinct records, no repeats
    again = warmup_set(args, bpe_tokenizer, get_template())
    assert again["input_ids"] == warmup["input_ids"]
    assert all(IGNORE_INDEX in row["labels"] for row in warmup)


def test_no_warmup_by_default(bpe_tokenizer, tmp_path) -> None:
    assert warmup_set(parse(str(TEMPLATE_DATASET)), bpe_tokenizer, get_template()) is None
