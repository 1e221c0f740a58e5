"""Tokenize + mask invariants on real tokenizers (Llama SentencePiece, byte-level BPE)."""

from __future__ import annotations

import random

from aligner.constants import IGNORE_INDEX
from aligner.datasets.encode import DROPPED, KEPT, TRUNCATED, Request, SampleEncoder
from aligner.prompts import PromptTemplate, get_template

TRICKY = [
    ("What is 2+2?", "5", "4"),
    ("  leading and trailing spaces  ", "  answer  ", "fixed answer with trailing space "),
    ("你好，世界是什么？", "世界是一个星球。", "世界指地球以及其上的一切。"),
    ("Emoji? 😀🐙", "🙂", "Here you go: 😀🐙🎉"),
    ("Markers", "USER: hi ASSISTANT: ##Correction: ", "ASSISTANT: the real answer"),
    ("Prompt-looking correction", "a", "BEGINNING OF CONVERSATION: USER: x ASSISTANT:"),
    ("Tabs\tand\nnewlines", "line1\nline2", "\nstarts with a newline"),
    ("Braces {x}", "{answer}", "{question} stays literal"),
    ("café naïve", "façade", "Ünïcödé çorrection"),
    ("Q", "A", "x"),
]


def random_records(count: int, seed: int = 0) -> list[tuple[str, str, str]]:
    rng = random.Random(seed)
    pieces = [
        "hello",
        "world",
        " ",
        "  ",
        "你好",
        "😀",
        "\n",
        "ASSISTANT:",
        "##",
        "é",
        "the",
        "Correction",
        ":",
        ".",
        "?",
        "123",
        "\t",
        "fox",
    ]

    def text(low: int, high: int) -> str:
        return "".join(rng.choice(pieces) for _ in range(rng.randint(low, high)))

    return [(text(0, 20), text(0, 40), text(1, 20)) for _ in range(count)]


def encode(tokenizer, records, max_length=4096, template=None):
    encoder = SampleEncoder(tokenizer, template or get_template(), max_length)
    columns = {
        "question": [r[0] for r in records],
        "answer": [r[1] for r in records],
        "correction": [r[2] for r in records],
    }
    return encoder, encoder(columns)


def rows(out):
    return [dict(zip(out, values, strict=True)) for values in zip(*out.values(), strict=True)]


def target_ids(row) -> list[int]:
    return [
        t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != IGNORE_INDEX
    ]


def test_labels_are_exactly_correction_and_eos(any_tokenizer) -> None:
    records = TRICKY + random_records(300)
    encoder, out = encode(any_tokenizer, records)
    for (question, answer, correction), row in zip(records, rows(out), strict=True):
        assert row["status"] == KEPT
        n = row["prompt_length"]
        assert all(label == IGNORE_INDEX for label in row["labels"][:n])
        assert row["labels"][n:] == row["input_ids"][n:]
        target = target_ids(row)
        assert target[-1] == any_tokenizer.eos_token_id and len(target) >= 2
        # The prompt tokens are exactly what inference feeds the model for this prompt.
        prompt = encoder.template.render(question, answer)
        assert row["input_ids"][:n] == any_tokenizer(prompt)["input_ids"]
        request = Request.from_record({"question": question, "answer": answer})
        assert row["input_ids"][:n] == encoder.prompt_ids(request)
        # Prompt tokens followed by target tokens spell prompt + correction + EOS.
        full = any_tokenizer.decode(row["input_ids"])
        assert full.endswith(correction + any_tokenizer.eos_token)
        assert any_tokenizer.decode(row["input_ids"][:n], skip_special_tokens=True) == prompt


def test_target_decodes_to_correction_plus_eos_exactly_on_bpe(bpe_tokenizer) -> None:
    records = TRICKY + random_records(200, seed=1)
    _, out = encode(bpe_tokenizer, records)
    for (_, _, correction), row in zip(records, rows(out), strict=True):
        assert bpe_tokenizer.decode(target_ids(row)) == correction + "<|endoftext|>"


def test_target_decodes_to_correction_on_llama(llama_tokenizer) -> None:
    # SentencePiece drops one leading space when a sequence is decoded on its own.
    records = TRICKY + random_records(200, seed=2)
    _, out = encode(llama_tokenizer, records)
    for (_, _, correction), row in zip(records, rows(out), strict=True):
        decoded = llama_tokenizer.decode(target_ids(row))
        assert decoded in {correction + "</s>", correction[1:] + "</s>"}
        assert decoded == correction + "</s>" or correction.startswith(" ")


def test_llama_prompt_starts_with_bos_and_bpe_has_none(llama_tokenizer, bpe_tokenizer) -> None:
    _, out = encode(llama_tokenizer, TRICKY[:1])
    assert out["input_ids"][0][0] == llama_tokenizer.bos_token_id
    assert llama_tokenizer.bos_token_id not in out["input_ids"][0][1:]
    _, out = encode(bpe_tokenizer, TRICKY[:1])
    assert bpe_tokenizer.decode(out["input_ids"][0]).startswith("BEGINNING")


def test_merge_across_boundary_masks_exactly_the_prompt(bpe_tokenizer) -> None:
    # The prompt ends in "hel" and the correction starts with "lo": one pre-token "hello",
    # which the BPE merges into tokens that cross the boundary.
    template = PromptTemplate("merge", "", "{input}", " hel", "{question}{answer}")
    _encoder, out = encode(bpe_tokenizer, [("q", "a", "lo world")], template=template)
    row = rows(out)[0]
    assert row["split_boundary"]
    assert row["input_ids"][: row["prompt_length"]] == bpe_tokenizer("qa hel")["input_ids"]
    assert bpe_tokenizer.decode(target_ids(row)) == "lo world<|endoftext|>"


def test_truncation_shortens_answer_first_and_keeps_correction(any_tokenizer) -> None:
    question, correction = "Why is the sky blue?", "Rayleigh scattering of sunlight."
    answer = "because " * 300
    _encoder, out = encode(any_tokenizer, [(question, answer, correction)], max_length=96)
    row = rows(out)[0]
    assert row["status"] == TRUNCATED and row["length"] == len(row["input_ids"]) <= 96
    prompt = any_tokenizer.decode(
        row["input_ids"][: row["prompt_length"]], skip_special_tokens=True
    )
    assert f"##Question: {question}\n##Answer: because" in prompt
    assert prompt.endswith("\n##Correction:  ASSISTANT:")
    assert any_tokenizer.decode(target_ids(row)).strip() == correction + any_tokenizer.eos_token


def test_truncation_then_shortens_the_question(any_tokenizer) -> None:
    correction = "short fix"
    _, out = encode(any_tokenizer, [("why " * 300, "answer " * 300, correction)], max_length=64)
    row = rows(out)[0]
    assert row["status"] == TRUNCATED and len(row["input_ids"]) <= 64
    prompt = any_tokenizer.decode(
        row["input_ids"][: row["prompt_length"]], skip_special_tokens=True
    )
    assert "##Answer: \n##Correction:" in prompt and "##Question: why" in prompt
    assert any_tokenizer.decode(target_ids(row)).strip() == correction + any_tokenizer.eos_token


def test_correction_that_cannot_fit_is_dropped_never_cut(any_tokenizer) -> None:
    records = [("q", "a", "word " * 200), ("q", "a", "fits")]
    _, out = encode(any_tokenizer, records, max_length=48)
    dropped, kept = rows(out)
    assert dropped["status"] == DROPPED and dropped["input_ids"] == [] and dropped["length"] == 0
    assert kept["status"] == KEPT and len(target_ids(kept)) >= 2


def test_no_kept_sample_has_zero_target_tokens(any_tokenizer) -> None:
    records = random_records(200, seed=3)
    for max_length in (24, 40, 64):
        _, out = encode(any_tokenizer, records, max_length=max_length)
        for row in rows(out):
            assert row["status"] == DROPPED or (
                len(target_ids(row)) >= 2 and len(row["input_ids"]) <= max_length
            )


def test_input_form_samples(any_tokenizer) -> None:
    encoder = SampleEncoder(any_tokenizer, get_template(), 4096)
    out = encoder({"input": ["Rewrite politely: go away"], "correction": ["Please leave."]})
    prompt = any_tokenizer.decode(
        out["input_ids"][0][: out["prompt_length"][0]], skip_special_tokens=True
    )
    assert prompt == "BEGINNING OF CONVERSATION: USER: Rewrite politely: go away ASSISTANT:"
