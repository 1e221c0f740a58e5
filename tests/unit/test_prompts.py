"""Templates: golden strings, constants that users edit, and templates loaded from files."""

from __future__ import annotations

import json

import pytest

from aligner import constants
from aligner.prompts import TemplateError, get_template, load_template_file

GOLDEN = {
    "correction": (
        "BEGINNING OF CONVERSATION: USER: ##Question: What is 2+2?\n"
        "##Answer: 5\n##Correction:  ASSISTANT:"
    ),
    "aligner-v1": (
        "BEGINNING OF CONVERSATION: USER: Edit the following Question-Answer pair to make it "
        "more helpful and harmless: What is 2+2? | 5 ASSISTANT:"
    ),
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_preset_renders_golden_prompt(name: str) -> None:
    assert get_template(name).render("What is 2+2?", "5") == GOLDEN[name]


def test_default_template_is_the_original_correction_prompt() -> None:
    assert get_template().name == "correction"
    assert get_template(None).render("Q", "A").endswith("##Correction:  ASSISTANT:")


def test_constants_keep_original_names_and_values() -> None:
    assert constants.IGNORE_INDEX == -100
    assert constants.PROMPT_BEGIN == "BEGINNING OF CONVERSATION: "
    assert constants.PROMPT_USER == "USER: {input} "
    assert constants.PROMPT_ASSISTANT == "ASSISTANT:"
    assert constants.PROMPT_INPUT == "BEGINNING OF CONVERSATION: USER: {input} ASSISTANT:"


def test_edited_constants_change_the_default_template(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "CORRECTION_INSTRUCTION", "Q={question} A={answer} Empathetic: ")
    assert get_template().render("hi", "go away") == (
        "BEGINNING OF CONVERSATION: USER: Q=hi A=go away Empathetic:  ASSISTANT:"
    )


def test_user_text_with_braces_is_rendered_verbatim() -> None:
    prompt = get_template().render("What does {x} mean in f'{x}'?", "It is {{nothing}}.")
    assert "What does {x} mean in f'{x}'?" in prompt and "It is {{nothing}}." in prompt


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_template_loads_from_file(tmp_path, suffix: str) -> None:
    fields = {
        "name": "empathy",
        "begin": "",
        "user": "<user>{input}</user>",
        "assistant": "<assistant>",
        "instruction": "Q: {question}\nA: {answer}\nKinder:",
    }
    path = tmp_path / f"empathy{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(fields))
    else:
        path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in fields.items()))
    template = get_template(str(path))
    assert template.name == "empathy"
    assert template.render("q", "a") == "<user>Q: q\nA: a\nKinder:</user><assistant>"


def test_saved_template_round_trips(tmp_path) -> None:
    template = get_template("aligner-v1")
    template.save(tmp_path)
    assert get_template(str(tmp_path)) == template
    assert load_template_file(tmp_path / "prompt_template.json") == template


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"begin": "", "user": "{input}", "assistant": ""}, "missing field(s) instruction"),
        (
            {"begin": "", "user": "{input}", "assistant": "", "instruction": "{question}"},
            "'instruction' must hold {answer}, {question}",
        ),
        (
            {"begin": "", "user": "no input", "assistant": "", "instruction": "{question}{answer}"},
            "'user' must hold {input}",
        ),
        (
            {
                "begin": "",
                "user": "{input}",
                "assistant": "",
                "instruction": "{question}{answer}",
                "colour": "red",
            },
            "unknown field(s) colour",
        ),
    ],
)
def test_bad_template_file_is_one_clear_error(tmp_path, fields, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(fields))
    with pytest.raises(TemplateError, match=r"bad") as error:
        get_template(str(path))
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_unknown_template_name_lists_presets() -> None:
    with pytest.raises(TemplateError, match="correction, aligner-v1"):
        get_template("no-such-template")
