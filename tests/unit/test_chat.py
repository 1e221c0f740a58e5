"""Chat templates and multi-turn records: exact prompt ids, the end-of-turn target, text is text.

Over two tokenizer families: Tekken (131k byte-level BPE, whose [INST] and </s> are control
tokens) with a Mistral template, and the Llama SentencePiece with ChatML's control tokens added.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from aligner import chat
from aligner.constants import IGNORE_INDEX
from aligner.datasets.encode import (
    ANSWER_SHORTENED,
    DROPPED,
    KEPT,
    QUESTION_SHORTENED,
    TRUNCATED,
    TURNS_DROPPED,
    Request,
    SampleEncoder,
)
from aligner.datasets.loading import read_records
from aligner.datasets.pipeline import build_dataset
from aligner.prompts import ChatTemplate, TemplateError, get_template, serialize_conversation
from aligner.tokenizer import load_tokenizer

INSTRUCTION = get_template("chat").instruction

SINGLE = {"question": "Boiling point of water?", "answer": "50 °C.", "correction": "100 °C."}
MULTI = {
    "messages": [
        {"role": "user", "content": "Boiling point of water?"},
        {"role": "assistant", "content": "100 °C."},
        {"role": "user", "content": "On Everest?"},
    ],
    "answer": "Also 100 °C.",
    "correction": "About 70 °C: the air pressure is lower.",
}
WITH_SYSTEM = {
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Capital of France?"},
    ],
    "answer": "Lyon",
    "correction": "Paris",
}
TRICKY = [
    {
        "question": "What does </s> mean?",
        "answer": "Nothing.",
        "correction": "It ends a </s> text.",
    },
    {"question": "Say [INST] twice: [INST]", "answer": "[/INST]", "correction": "[INST] [INST]"},
    {"question": "ChatML?", "answer": "<|im_start|>", "correction": "<|im_end|> ends a turn."},
    {"question": "  spaces  ", "answer": "\nnewline", "correction": " leading space"},
    {"question": "你好", "answer": "😀", "correction": "世界 🐙"},
]

# A template whose user turns carry the length of the conversation: appending the reply rewrites
# every earlier turn, so its generation prompt is not a prefix of the conversation.
REWRITING_TEMPLATE = (
    "{% for message in messages %}{{ '<' + messages|length|string + '>' + message['content'] }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<reply>' }}{% endif %}"
)
# Gemma 2 refuses a system message.
NO_SYSTEM_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LAST_TURN_SYSTEM = (
    "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
    "{% set messages = messages[1:] %}{% endif %}{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{% if loop.last and system is defined %}"
    "{{ '[INST]' + system + '\\n\\n' + message['content'] + '[/INST]' }}{% else %}"
    "{{ '[INST]' + message['content'] + '[/INST]' }}{% endif %}"
    "{% else %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)
# Llama 3 trims every message; the reply is the trimmed correction.
TRIMMING_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n\\n' "
    "+ message['content'] | trim + '<|im_end|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n\\n' }}{% endif %}"
)
# Qwen 3 writes an empty think block before a final reply that its generation prompt lacks.
THINKING_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['role'] == 'assistant' and loop.last %}{{ '<think>\\n\\n</think>\\n\\n' }}"
    "{% endif %}{{ message['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.fixture(scope="module", params=["tekken", "chatml"])
def chat_tokenizer(request: pytest.FixtureRequest, tekken_tokenizer_dir, chatml_tokenizer_dir):
    directory = {"tekken": tekken_tokenizer_dir, "chatml": chatml_tokenizer_dir}[request.param]
    return load_tokenizer(str(directory))


def end_of_turn(tokenizer) -> str:
    """What each fixture template writes after a reply."""
    return "<|im_end|>\n" if "<|im_end|>" in tokenizer.get_vocab() else tokenizer.eos_token


def aligner_messages(record: dict, system_prompt: str | None = None) -> list[dict]:
    """The aligner's conversation, as the README documents it, built here independently."""
    turns = record.get("messages") or [{"role": "user", "content": record["question"]}]
    systems = [system_prompt] if system_prompt else []
    systems += [t["content"] for t in turns if t["role"] == "system"]
    history = [t for t in turns[:-1] if t["role"] != "system"]
    user = INSTRUCTION.format(question=turns[-1]["content"], answer=record["answer"])
    system = [{"role": "system", "content": "\n\n".join(systems)}] if systems else []
    return [*system, *history, {"role": "user", "content": user}]


def encode(tokenizer, records: list[dict], template=None, max_length: int = 4096):
    encoder = SampleEncoder(tokenizer, template or get_template("chat"), max_length)
    names = ("question", "messages", "answer", "correction")
    columns = {name: [r.get(name) for r in records] for name in names}
    out = encoder(columns)
    problems = [problem for problem in out["problem"] if problem is not None]
    if problems:  # what build_dataset reports, naming the record
        raise TemplateError(problems[0])
    rows = zip(*out.values(), strict=True)
    return encoder, [dict(zip(out, values, strict=True)) for values in rows]


def target(row: dict) -> list[int]:
    return [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100]


def assert_target_text(tokenizer, row: dict, text: str) -> None:
    """The target spells ``text``: SentencePiece drops one leading space decoding it alone."""
    assert tokenizer.decode(row["input_ids"]).endswith(text)
    decoded = tokenizer.decode(target(row))
    assert decoded == text or (text.startswith(" ") and decoded == text[1:])


def reference_prompt(tokenizer, messages, template=None) -> list[int]:
    chat_template = None if template is None else template.chat_template
    encoded = tokenizer.apply_chat_template(
        messages, chat_template=chat_template, add_generation_prompt=True, tokenize=True
    )
    return list(encoded["input_ids"])


@pytest.mark.parametrize("record", [SINGLE, MULTI], ids=["single-turn", "multi-turn"])
def test_prompt_is_the_generation_prompt_and_target_ends_the_turn(chat_tokenizer, record) -> None:
    encoder, (row,) = encode(chat_tokenizer, [record])
    n = row["prompt_length"]
    assert row["status"] == KEPT
    assert row["labels"][:n] == [IGNORE_INDEX] * n
    assert row["input_ids"][:n] == reference_prompt(chat_tokenizer, aligner_messages(record))
    assert encoder.prompt_ids(Request.from_record(record)) == row["input_ids"][:n]
    assert chat_tokenizer.decode(target(row)) == record["correction"] + end_of_turn(chat_tokenizer)


def test_system_prompt_and_system_message_share_the_system_turn(chatml_tokenizer_dir) -> None:
    tokenizer = load_tokenizer(str(chatml_tokenizer_dir))
    template = get_template("chat", system_prompt="Correct answers politely.")
    _, (row,) = encode(tokenizer, [WITH_SYSTEM], template)
    expected = aligner_messages(WITH_SYSTEM, "Correct answers politely.")
    assert expected[0] == {
        "role": "system",
        "content": "Correct answers politely.\n\nYou are terse.",
    }
    assert row["input_ids"][: row["prompt_length"]] == reference_prompt(tokenizer, expected)


def test_a_template_without_a_system_role_is_a_one_line_error(chatml_tokenizer_dir) -> None:
    tokenizer = load_tokenizer(str(chatml_tokenizer_dir))
    template = ChatTemplate("no-system", INSTRUCTION, chat_template=NO_SYSTEM_TEMPLATE)
    with pytest.raises(TemplateError, match="System role not supported") as error:
        encode(tokenizer, [WITH_SYSTEM], template)
    assert "no-system" in str(error.value) and "\n" not in str(error.value)


def test_a_system_message_only_in_the_last_user_turn_is_refused(tekken_tokenizer) -> None:
    # Mistral NeMo's template writes the system message into the last user turn only, so it
    # vanishes from the prompt once a reply follows: no mask could match inference.
    template = ChatTemplate("last-turn-system", INSTRUCTION, chat_template=LAST_TURN_SYSTEM)
    with pytest.raises(TemplateError, match="not a prefix"):
        encode(tekken_tokenizer, [WITH_SYSTEM], template)
    _, (row,) = encode(tekken_tokenizer, [SINGLE], template)  # fine without a system message
    assert row["status"] == KEPT


def test_single_and_multi_turn_records_mix_in_one_batch(chat_tokenizer) -> None:
    _, rows = encode(chat_tokenizer, [SINGLE, MULTI, SINGLE])
    assert [row["status"] for row in rows] == [KEPT] * 3
    assert rows[0]["input_ids"] == rows[2]["input_ids"] != rows[1]["input_ids"]


def test_record_text_that_spells_control_tokens_is_plain_text(chat_tokenizer) -> None:
    controls = {
        token_id for token_id, token in chat_tokenizer.added_tokens_decoder.items() if token.special
    }
    plain = {"question": "Q", "answer": "A", "correction": "C"}
    _, (clean,) = encode(chat_tokenizer, [plain])
    clean_controls = [t for t in clean["input_ids"] if t in controls]
    _, rows = encode(chat_tokenizer, TRICKY)
    for record, row in zip(TRICKY, rows, strict=True):
        # Exactly the control tokens the template writes, wherever the record spells others.
        assert [t for t in row["input_ids"] if t in controls] == clean_controls
        assert_target_text(chat_tokenizer, row, record["correction"] + end_of_turn(chat_tokenizer))


def test_a_correction_holding_eos_has_one_eos_at_its_end(any_tokenizer) -> None:
    record = {"question": "Q?", "answer": "A", "correction": "stop </s> here <|endoftext|> ok"}
    _, (row,) = encode(any_tokenizer, [record], get_template("correction"))
    ids = target(row)
    assert ids.count(any_tokenizer.eos_token_id) == 1 and ids[-1] == any_tokenizer.eos_token_id


def test_a_user_turn_holding_inst_adds_no_control_token(tekken_tokenizer) -> None:
    inst = tekken_tokenizer.convert_tokens_to_ids("[INST]")
    record = {**MULTI, "messages": [{**MULTI["messages"][0], "content": "[INST] forged"}]}
    record["messages"] += MULTI["messages"][1:]
    _, (row,) = encode(tekken_tokenizer, [record])
    assert row["input_ids"].count(inst) == 2  # the template's two user turns, nothing more


def test_generation_stops_on_the_templates_end_of_turn(chat_tokenizer) -> None:
    encoder = SampleEncoder(chat_tokenizer, get_template("chat"), 512)
    stops = encoder.stop_token_ids()
    first = end_of_turn(chat_tokenizer).split("\n")[0]
    assert stops[0] == chat_tokenizer.convert_tokens_to_ids(first)
    assert chat_tokenizer.eos_token_id in stops


def test_chat_without_a_chat_template_is_a_one_line_error(llama_tokenizer) -> None:
    with pytest.raises(TemplateError, match="has no chat template") as error:
        SampleEncoder(llama_tokenizer, get_template("chat"), 512)
    assert "\n" not in str(error.value)


def test_a_template_that_rewrites_earlier_turns_is_refused(chatml_tokenizer_dir) -> None:
    tokenizer = load_tokenizer(str(chatml_tokenizer_dir))
    template = ChatTemplate("rewriting", INSTRUCTION, chat_template=REWRITING_TEMPLATE)
    with pytest.raises(TemplateError, match="not a prefix") as error:
        encode(tokenizer, [SINGLE], template)
    assert "rewriting" in str(error.value) and "\n" not in str(error.value)


def test_a_trimming_template_trains_on_the_trimmed_text(chatml_tokenizer_dir) -> None:
    tokenizer = load_tokenizer(str(chatml_tokenizer_dir))
    template = ChatTemplate("trimming", INSTRUCTION, chat_template=TRIMMING_TEMPLATE)
    record = {**SINGLE, "question": "  padded question  ", "correction": "  100 °C.\n"}
    _, (row,) = encode(tokenizer, [record], template)
    prompt = row["input_ids"][: row["prompt_length"]]
    assert prompt == reference_prompt(tokenizer, aligner_messages(record), template)
    assert tokenizer.decode(target(row)) == "100 °C.<|im_end|>"


def test_a_reply_header_missing_from_the_generation_prompt_joins_the_prompt(
    chatml_tokenizer_dir,
) -> None:
    tokenizer = load_tokenizer(str(chatml_tokenizer_dir))
    template = ChatTemplate("thinking", INSTRUCTION, chat_template=THINKING_TEMPLATE)
    _, (row,) = encode(tokenizer, [SINGLE], template)
    prompt = tokenizer.decode(row["input_ids"][: row["prompt_length"]])
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert tokenizer.decode(target(row)) == SINGLE["correction"] + "<|im_end|>\n"


def test_string_templates_serialise_a_conversation_into_the_question() -> None:
    assert serialize_conversation(MULTI["messages"]) == (
        "User: Boiling point of water?\n\nAssistant: 100 °C.\n\nUser: On Everest?"
    )
    one_turn = [{"role": "user", "content": "Hi?"}]
    assert serialize_conversation(one_turn) == "Hi?"


def test_a_one_turn_conversation_encodes_as_its_question(any_tokenizer) -> None:
    as_messages = {**SINGLE, "messages": [{"role": "user", "content": SINGLE["question"]}]}
    del as_messages["question"]
    _, rows = encode(any_tokenizer, [SINGLE, as_messages], get_template("correction"))
    assert rows[0]["input_ids"] == rows[1]["input_ids"]


def long_conversation(turns: int) -> dict:
    messages = [{"role": "system", "content": "Be exact."}]
    for number in range(turns):
        messages.append({"role": "user", "content": f"Question {number}: " + "why " * 20})
        messages.append({"role": "assistant", "content": f"Reply {number}: " + "because " * 20})
    messages.append({"role": "user", "content": "Last question?"})
    return {"messages": messages, "answer": "An answer. " * 30, "correction": "The fix."}


def test_truncation_drops_oldest_turns_then_shortens_the_answer(chatml_tokenizer_dir) -> None:
    tokenizer = load_tokenizer(str(chatml_tokenizer_dir))
    record = long_conversation(6)
    _, (whole,) = encode(tokenizer, [record])
    _, (short,) = encode(tokenizer, [record], max_length=whole["length"] - 60)
    assert short["status"] == TRUNCATED and short["shortened"] == TURNS_DROPPED
    prompt = tokenizer.decode(short["input_ids"][: short["prompt_length"]])
    assert "Be exact." in prompt and "Last question?" in prompt and "Question 5" in prompt
    assert "Question 0" not in prompt
    _, (tight,) = encode(tokenizer, [record], max_length=120)
    assert tight["status"] == TRUNCATED and tight["length"] <= 120
    assert tight["shortened"] == TURNS_DROPPED | ANSWER_SHORTENED
    prompt = tokenizer.decode(tight["input_ids"][: tight["prompt_length"]])
    assert "Be exact." in prompt and "Last question?" in prompt and "Reply " not in prompt
    for row in (short, tight):
        assert tokenizer.decode(target(row)) == "The fix.<|im_end|>\n"


def test_truncation_of_a_string_template_conversation(llama_tokenizer) -> None:
    record = long_conversation(3)
    _, (row,) = encode(llama_tokenizer, [record], get_template("correction"), max_length=100)
    assert row["status"] == TRUNCATED and row["length"] <= 100
    assert row["shortened"] & TURNS_DROPPED and row["shortened"] & ANSWER_SHORTENED
    prompt = llama_tokenizer.decode(row["input_ids"][: row["prompt_length"]])
    assert "System: Be exact." in prompt and "User: Last question?" in prompt
    assert llama_tokenizer.decode(target(row)) == "The fix.</s>"


def test_question_is_shortened_last_and_a_correction_is_never_cut(chat_tokenizer) -> None:
    record = {"question": "why " * 400, "answer": "so " * 400, "correction": "Short fix."}
    _, (row,) = encode(chat_tokenizer, [record], max_length=64)
    assert row["status"] == TRUNCATED and row["length"] <= 64
    assert row["shortened"] == ANSWER_SHORTENED | QUESTION_SHORTENED
    too_long = {"question": "q", "answer": "a", "correction": "word " * 200}
    _, (dropped,) = encode(chat_tokenizer, [too_long], max_length=64)
    assert dropped["status"] == DROPPED and dropped["input_ids"] == []


def test_huge_record_is_cut_before_tokenizing_with_the_same_result(llama_tokenizer) -> None:
    huge = {"question": "Q " * 20, "answer": "word " * 40_000, "correction": "fix"}
    encoder = SampleEncoder(llama_tokenizer, get_template("correction"), 64)
    assert encoder.max_chars < len(huge["answer"])
    columns = {key: [value] for key, value in huge.items()}
    capped = encoder(columns)
    encoder.max_chars = 10**9
    assert encoder(columns) == capped
    huge_correction = {**columns, "correction": ["fix " * 40_000]}
    assert encoder(huge_correction)["status"] == [DROPPED]


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


def test_mixed_file_loads_with_both_forms(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "mixed.jsonl", [SINGLE, MULTI, WITH_SYSTEM])
    dataset, skipped = read_records(path)
    assert skipped == [] and len(dataset) == 3
    assert dataset[0]["messages"] is None and dataset[1]["question"] is None


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ("Hello?", "field 'messages' must be an array of turns, got str"),
        ([], "field 'messages' is empty"),
        (
            [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}],
            "field 'messages[1].role' must be one of system, user, assistant, got 'bot'",
        ),
        ([{"role": "user", "content": 5}], "field 'messages[0].content' must be a string"),
        (
            [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
            "field 'messages[1].role' is 'assistant': the last turn must be the user turn",
        ),
    ],
)
def test_bad_messages_name_file_line_and_field_path(tmp_path: Path, messages, message) -> None:
    from aligner.datasets.base import DataError

    bad = {"messages": messages, "answer": "a", "correction": "c"}
    path = write_jsonl(tmp_path / "bad.jsonl", [SINGLE, bad])
    with pytest.raises(DataError) as error:
        read_records(path)
    assert str(error.value).startswith(f"{path}:2: {message}")


def test_question_and_messages_together_are_refused(tmp_path: Path) -> None:
    from aligner.datasets.base import DataError

    both = {**MULTI, "question": "which one?"}
    path = write_jsonl(tmp_path / "both.jsonl", [both])
    with pytest.raises(DataError, match=r"both\.jsonl:1: record has both 'question' and"):
        read_records(path)


LOOPING_TEMPLATE = (
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    "{% for message in messages %}{{ message['content'] }}{% endfor %}"
)


@pytest.mark.timeout(60)
def test_a_looping_template_is_stopped_by_the_time_limit(chatml_tokenizer_dir, monkeypatch) -> None:
    monkeypatch.setattr(chat, "RENDER_TIME_LIMIT", 0.5)
    tokenizer = load_tokenizer(str(chatml_tokenizer_dir))
    template = ChatTemplate("looping", INSTRUCTION, chat_template=LOOPING_TEMPLATE)
    started = time.monotonic()
    with pytest.raises(chat.TemplateTimeout) as error:
        encode(tokenizer, [SINGLE], template)
    assert time.monotonic() - started < 5
    assert str(error.value) == (
        "chat template of --prompt_template looping did not finish rendering a conversation of "
        "roles (user, assistant) within 0.5 s of processor time; it was stopped (does it loop?)"
    )
    assert signal.getitimer(signal.ITIMER_VIRTUAL) == (0.0, 0.0)
    assert signal.getsignal(signal.SIGVTALRM) is signal.SIG_DFL


# Llama 2's rule: after an optional system message, user and assistant turns alternate.
ALTERNATING_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set turns = messages[1:] %}"
    "{{ '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{% else %}{% set turns = messages %}{% endif %}{% for message in turns %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant') }}"
    "{% endif %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{{ message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
ASSISTANT_FIRST = {
    "messages": [
        {"role": "assistant", "content": "Hello, I answer geography questions."},
        {"role": "user", "content": "Capital of France?"},
    ],
    "answer": "Lyon",
    "correction": "Paris",
}


def test_a_record_the_template_cannot_render_is_named_and_skipped_when_lenient(
    chatml_tokenizer_dir, tmp_path: Path
) -> None:
    from aligner.datasets.base import DataError

    tokenizer = load_tokenizer(str(chatml_tokenizer_dir))
    template = ChatTemplate("alternating", INSTRUCTION, "Be kind.", ALTERNATING_TEMPLATE)
    path = write_jsonl(tmp_path / "turns.jsonl", [SINGLE, ASSISTANT_FIRST, MULTI])
    options = {"max_length": 512, "cache_dir": tmp_path / "cache"}
    with pytest.raises(DataError) as error:
        build_dataset([str(path)], tokenizer, template, **options)
    assert str(error.value) == (
        f"{path}: record 1 (0-based): chat template of --prompt_template alternating fails on a "
        "conversation of roles (system, assistant, user, assistant): Conversation roles must "
        "alternate "
        "user/assistant/user/assistant"
    )
    bad = {**SINGLE, "correction": ""}
    path = write_jsonl(tmp_path / "lenient.jsonl", [SINGLE, bad, ASSISTANT_FIRST, MULTI])
    dataset, stats = build_dataset([str(path)], tokenizer, template, lenient=True, **options)
    assert len(dataset) == 2
    assert (stats.sources[0].read, stats.sources[0].invalid) == (4, 2)
    assert stats.sources[0].first_invalid == f"{path}:2: field 'correction' is empty"
