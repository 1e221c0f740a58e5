"""Dataset classes written for the original toolkit, its empathy and BeaverTails datasets, and its
constants: they work after changing only their import line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aligner import constants
from aligner.constants import IGNORE_INDEX, PROMPT_ASSISTANT, PROMPT_BEGIN, PROMPT_USER
from aligner.datasets import DataError, RawDataset, RawSample
from aligner.datasets.pipeline import build_dataset
from aligner.prompts import get_template

ROWS = [
    {"question": "How do I tell my friend I can't come?", "answer": "Just don't show up."},
    {"question": "My cat died.", "answer": "Get a new one."},
]
KIND = ["Tell them honestly and kindly, and suggest another day.", "I'm so sorry for your loss."]


class OriginalStyleDataset(RawDataset):
    """Written the original way: no super().__init__, the target in ``answer``."""

    NAME = "test-original-style"

    def __init__(self, path) -> None:
        self.data = json.loads(Path(path).read_text(encoding="utf-8"))

    def __getitem__(self, index: int) -> RawSample:
        data = self.data[index]
        return RawSample(input=f"Be kind: {data['question']}", answer=data["correction"])

    def __len__(self) -> int:
        return len(self.data)


class OriginalDialogueDataset(RawDataset):
    NAME = "test-original-dialogue"

    def __init__(self, path=None) -> None:
        pass

    def __getitem__(self, index: int) -> RawSample:
        lines = ["Hi!", "Hello.", "Capital of France?", "Paris."]
        return RawSample(input=lines) if index else RawSample(dialogue=lines)

    def __len__(self) -> int:
        return 2


class AmbiguousDataset(RawDataset):
    NAME = "test-original-ambiguous"

    def __getitem__(self, index: int) -> RawSample:
        return RawSample(input="q", answer="a", correction="c")

    def __len__(self) -> int:
        return 1


@pytest.fixture
def records_file(tmp_path: Path) -> Path:
    path = tmp_path / "train.json"
    rows = [{**row, "correction": kind} for row, kind in zip(ROWS, KIND, strict=True)]
    path.write_text(json.dumps(rows))
    return path


def samples(spec: str, tokenizer, tmp_path: Path, template: str | None = None) -> list[dict]:
    dataset, _ = build_dataset(
        [spec], tokenizer, get_template(template), max_length=512, cache_dir=tmp_path / "cache"
    )
    return list(dataset)


def split(row: dict) -> tuple[list[int], list[int]]:
    n = row["prompt_length"]
    assert row["labels"][:n] == [IGNORE_INDEX] * n
    return row["input_ids"][:n], row["input_ids"][n:]


def test_an_original_style_class_trains_its_answer(records_file, llama_tokenizer, tmp_path):
    rows = samples(f"test-original-style::{records_file}", llama_tokenizer, tmp_path)
    for row, source, kind in zip(rows, ROWS, KIND, strict=True):
        prompt, target = split(row)
        text = PROMPT_BEGIN + PROMPT_USER.format(input=f"Be kind: {source['question']}")
        assert prompt == llama_tokenizer(text + PROMPT_ASSISTANT)["input_ids"]
        assert llama_tokenizer.decode(target) == kind + "</s>"


def test_a_dialogue_trains_its_last_assistant_line(llama_tokenizer, tmp_path):
    rows = samples("test-original-dialogue", llama_tokenizer, tmp_path)
    assert rows[0]["input_ids"] == rows[1]["input_ids"]  # an input list is a dialogue
    prompt, target = split(rows[0])
    # The original's text, whose EOS between turns the tokenizer reads as the EOS token.
    text = "BEGINNING OF CONVERSATION: USER: Hi! ASSISTANT:Hello.</s>USER: Capital of France? "
    assert prompt == llama_tokenizer(text + "ASSISTANT:")["input_ids"]
    assert prompt.count(llama_tokenizer.eos_token_id) == 1
    assert llama_tokenizer.decode(target) == "Paris.</s>"


def test_an_ambiguous_sample_names_its_class_and_index(llama_tokenizer, tmp_path) -> None:
    with pytest.raises(DataError) as error:
        samples("test-original-ambiguous", llama_tokenizer, tmp_path)
    message = str(error.value)
    assert message.startswith("test-original-ambiguous (AmbiguousDataset): record 0: sample has")
    assert "'answer' is the original toolkit's target" in message and "\n" not in message


def test_empathy_json_renders_the_empathy_instruction(records_file, llama_tokenizer, tmp_path):
    by_name = samples(f"empathy-json::{records_file}", llama_tokenizer, tmp_path / "a")
    by_template = samples(str(records_file), llama_tokenizer, tmp_path / "b", "empathy")
    assert [r["input_ids"] for r in by_name] == [r["input_ids"] for r in by_template]
    prompt, target = split(by_name[0])
    inputline = f"{ROWS[0]['question']} | {ROWS[0]['answer']}"
    text = PROMPT_BEGIN + PROMPT_USER.format(
        input=constants.EMPATHY_INSTRUCTION.format(inputline=inputline)
    )
    assert prompt == llama_tokenizer(text + PROMPT_ASSISTANT)["input_ids"]
    assert llama_tokenizer.decode(target) == KIND[0] + "</s>"


def test_empathy_instruction_edits_take_effect(
    records_file, llama_tokenizer, tmp_path, monkeypatch
):
    monkeypatch.setattr(constants, "EMPATHY_INSTRUCTION", "Kinder, please: {inputline}")
    prompt, _ = split(samples(f"empathy-json::{records_file}", llama_tokenizer, tmp_path)[0])
    assert "Kinder, please: " in llama_tokenizer.decode(prompt)
    assert (
        get_template("empathy").render("q", "a").endswith("USER: Kinder, please: q | a ASSISTANT:")
    )


@pytest.mark.parametrize("split_name", ["train", "test"])
def test_beavertails_json_copies_the_response(tmp_path, llama_tokenizer, split_name) -> None:
    path = tmp_path / "beavertails.json"
    path.write_text(json.dumps([{"prompt": "How do I pick a lock?", "response": "I can't help."}]))
    (row,) = samples(f"beavertails-json/{split_name}::{path}", llama_tokenizer, tmp_path)
    prompt, target = split(row)
    text = PROMPT_BEGIN + PROMPT_USER.format(input="How do I pick a lock? I can't help.")
    assert prompt == llama_tokenizer(text + PROMPT_ASSISTANT)["input_ids"]
    assert llama_tokenizer.decode(target) == "I can't help.</s>"


def test_the_original_constants_are_there() -> None:
    assert (constants.DEFAULT_BOS_TOKEN, constants.DEFAULT_EOS_TOKEN) == ("<s>", "</s>")
    assert (constants.DEFAULT_PAD_TOKEN, constants.DEFAULT_UNK_TOKEN) == ("<pad>", "<unk>")
    assert constants.PROMPT_DICT == {
        "prompt_begin": "BEGINNING OF CONVERSATION: ",
        "prompt_user": "USER: {input} ",
        "prompt_assistant": "ASSISTANT:",
        "prompt_input": "BEGINNING OF CONVERSATION: USER: {input} ASSISTANT:",
    }
    assert constants.EMPATHY_INSTRUCTION == (
        "Edit the following Question-Answer pair to make it more empathic and helpful: {inputline}"
    )


def test_a_dataset_module_that_edits_a_constant_changes_the_prompt(
    records_file, llama_tokenizer, llama_tokenizer_dir, tmp_path, monkeypatch
) -> None:
    from aligner.commands.data import main as data_main

    # Restored after the test, whatever the module sets.
    monkeypatch.setattr(constants, "CORRECTION_INSTRUCTION", constants.CORRECTION_INSTRUCTION)
    module = tmp_path / "kind_constants.py"
    instruction = "Kindly fix.\nQ: {question}\nA: {answer}\nFixed: "
    module.write_text(
        f"from aligner import constants\nconstants.CORRECTION_INSTRUCTION = {instruction!r}\n"
    )
    dump = tmp_path / "dump.jsonl"
    args = ["--train_datasets", str(records_file), "--model_name_or_path"]
    args += [str(llama_tokenizer_dir), "--dataset_module", str(module), "--dump", str(dump)]
    assert data_main(args) == 0
    sample = json.loads(dump.read_text().splitlines()[0])
    n = sample["labels"].count(IGNORE_INDEX)
    prompt = llama_tokenizer.decode(sample["input_ids"][:n], skip_special_tokens=True)
    assert prompt.startswith("BEGINNING OF CONVERSATION: USER: Kindly fix.\nQ: How do I tell")
