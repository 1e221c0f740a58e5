"""Prompt templates: the named presets, rendering into pieces, and loading a template from a file.

A string template is four strings. ``instruction`` holds ``{question}`` and ``{answer}``; ``user``
holds ``{input}``, which receives the rendered instruction; the prompt is ``begin + user +
assistant`` and the correction follows it directly. A chat template (``chat``) puts the rendered
instruction in a user turn of the tokenizer's own chat template instead (``aligner.chat``). The
template a model was trained with is saved beside the processed data and the checkpoint
(``prompt_template.json``) so inference renders the same text.

Rendering yields *pieces*: ``(text, from_record)`` pairs. Text from a record is tokenized as plain
text, so only the template's own markers can become control tokens (``aligner.tokenizer``).
"""

from __future__ import annotations

import json
import string
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from aligner import constants
from aligner.errors import UserError

TEMPLATE_FILENAME = "prompt_template.json"
DEFAULT_TEMPLATE = "correction"
CHAT_TEMPLATE = "chat"

Piece = tuple[str, bool]
"""A piece of a rendered prompt: its text, and whether the text comes from a record."""
Turn = dict[str, str]
"""One message of a conversation: ``{"role": "system" | "user" | "assistant", "content": str}``."""

ROLE_LABELS = {"system": "System", "user": "User", "assistant": "Assistant"}
"""How a string template writes each role when a conversation fills its question slot."""


class TemplateError(UserError):
    """A template that is unknown, malformed, or missing a placeholder."""


def _fields(text: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(text) if name is not None]


def _format_pieces(text: str, values: dict[str, list[Piece]]) -> list[Piece]:
    """``text.format(**values)`` as pieces: the literal text is the template's, each field's
    pieces are given."""
    pieces: list[Piece] = []
    for literal, name, _, _ in string.Formatter().parse(text):
        if literal:
            pieces.append((literal, False))
        if name is not None:
            pieces.extend(values[name])
    return pieces


def serialize_conversation(turns: list[Turn]) -> str:
    """The text a string template's ``{question}`` receives for a conversation.

    A conversation of one user turn is that turn's text, so a ``messages`` record of one turn
    renders exactly as the same ``question``. Longer ones write each turn as ``Role: text``
    (System, User, Assistant), separated by blank lines, oldest first, ending with the user turn
    the answer replies to.
    """
    if len(turns) == 1 and turns[0]["role"] == "user":
        return turns[0]["content"]
    return "\n\n".join(f"{ROLE_LABELS[turn['role']]}: {turn['content']}" for turn in turns)


@dataclass(frozen=True)
class PromptTemplate:
    """How a (question, answer) pair becomes the prompt that the correction follows."""

    name: str
    """Shown in logs and saved with the checkpoint."""
    begin: str
    """Text before the user turn (``PROMPT_BEGIN``)."""
    user: str
    """The user turn, with one ``{input}`` placeholder (``PROMPT_USER``)."""
    assistant: str
    """Text after the user turn; the correction follows it (``PROMPT_ASSISTANT``)."""
    instruction: str
    """The user input, with ``{question}`` and ``{answer}`` (``CORRECTION_INSTRUCTION``)."""

    def __post_init__(self) -> None:
        expected = {"begin": set(), "user": {"input"}, "assistant": set()}
        expected["instruction"] = {"question", "answer"}
        for field, names in expected.items():
            value = getattr(self, field)
            if not isinstance(value, str):
                raise TemplateError(f"template {self.name!r}: field {field!r} must be a string")
            try:
                found = _fields(value)
            except ValueError as error:
                raise TemplateError(f"template {self.name!r}: field {field!r}: {error}") from None
            if sorted(found) != sorted(names):
                want = ", ".join("{" + n + "}" for n in sorted(names)) or "no placeholders"
                raise TemplateError(
                    f"template {self.name!r}: field {field!r} must hold {want} exactly once "
                    f"(found {found}); write literal braces as {{{{ and }}}}"
                )

    kind = "string"

    def input_pieces(self, user_input: list[Piece]) -> list[Piece]:
        """The prompt around an already formatted user input."""
        return [
            *_format_pieces(self.begin, {}),
            *_format_pieces(self.user, {"input": user_input}),
            *_format_pieces(self.assistant, {}),
        ]

    def pieces(self, question: str, answer: str) -> list[Piece]:
        """The prompt for a question (or a serialised conversation) and an upstream answer."""
        values = {"question": [(question, True)], "answer": [(answer, True)]}
        return self.input_pieces(_format_pieces(self.instruction, values))

    def dialogue_pieces(self, turns: Sequence[Turn], eos_token: str) -> list[Piece]:
        """The original toolkit's frame for a formatted input or a dialogue: ``begin``, each user
        line in ``user`` followed by ``assistant``, each assistant line followed by EOS. One user
        line gives exactly ``input_pieces``."""
        pieces = _format_pieces(self.begin, {})
        for turn in turns:
            if turn["role"] == "assistant":
                pieces += [(turn["content"], True), (eos_token, False)]
            else:
                pieces += _format_pieces(self.user, {"input": [(turn["content"], True)]})
                pieces += _format_pieces(self.assistant, {})
        return pieces

    def render_input(self, user_input: str) -> str:
        """The prompt text for an already formatted user input."""
        return "".join(text for text, _ in self.input_pieces([(user_input, True)]))

    def render(self, question: str, answer: str) -> str:
        """The prompt text for a question and an upstream answer; the correction follows it."""
        return "".join(text for text, _ in self.pieces(question, answer))

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    def save(self, directory: str | Path) -> Path:
        return _save(self.to_dict(), directory)


@dataclass(frozen=True)
class ChatTemplate:
    """A correction request rendered through a tokenizer's chat template (``aligner.chat``)."""

    name: str
    instruction: str
    """The aligner's user turn, with ``{question}`` and ``{answer}``."""
    system_prompt: str | None = None
    """A system message for the aligner; None writes none."""
    chat_template: str | None = None
    """The Jinja chat template; None until it is taken from the tokenizer (``resolved``)."""

    kind = "chat"

    def __post_init__(self) -> None:
        for field in ("name", "instruction"):
            if not isinstance(getattr(self, field), str):
                raise TemplateError(f"template {self.name!r}: field {field!r} must be a string")
        for field in ("system_prompt", "chat_template"):
            if getattr(self, field) is not None and not isinstance(getattr(self, field), str):
                raise TemplateError(f"template {self.name!r}: field {field!r} must be a string")
        try:
            found = _fields(self.instruction)
        except ValueError as error:
            raise TemplateError(f"template {self.name!r}: field 'instruction': {error}") from None
        if sorted(found) != ["answer", "question"]:
            raise TemplateError(
                f"template {self.name!r}: field 'instruction' must hold {{answer}}, {{question}} "
                f"exactly once (found {found}); write literal braces as {{{{ and }}}}"
            )

    def resolved(self, tokenizer_chat_template: str | None, source: str) -> ChatTemplate:
        """This template with the tokenizer's chat template filled in (``source`` names it)."""
        if self.chat_template is not None:
            return self
        if not tokenizer_chat_template:
            raise TemplateError(
                f"--prompt_template {self.name}: the tokenizer of {source} has no chat template; "
                "use a string template (correction, aligner-v1) or a tokenizer that has one"
            )
        return replace(self, chat_template=tokenizer_chat_template)

    def to_dict(self) -> dict[str, str | None]:
        return {"kind": self.kind, **asdict(self)}

    def save(self, directory: str | Path) -> Path:
        return _save(self.to_dict(), directory)


def _save(data: dict, directory: str | Path) -> Path:
    path = Path(directory) / TEMPLATE_FILENAME
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    return path


Template = PromptTemplate | ChatTemplate


def resolve_template(template: Template, tokenizer: Any, source: str = "the model") -> Template:
    """A chat template with ``tokenizer``'s chat template filled in; a string template as is."""
    if isinstance(template, ChatTemplate):
        return template.resolved(getattr(tokenizer, "chat_template", None), source)
    return template


def _correction() -> PromptTemplate:
    # Read the constants at call time so that edits to aligner.constants take effect.
    return PromptTemplate(
        name="correction",
        begin=constants.PROMPT_BEGIN,
        user=constants.PROMPT_USER,
        assistant=constants.PROMPT_ASSISTANT,
        instruction=constants.CORRECTION_INSTRUCTION,
    )


def _aligner_v1() -> PromptTemplate:
    return PromptTemplate(
        name="aligner-v1",
        begin=constants.PROMPT_BEGIN,
        user=constants.PROMPT_USER,
        assistant=constants.PROMPT_ASSISTANT,
        instruction=constants.ALIGNER_V1_INSTRUCTION,
    )


def _empathy() -> PromptTemplate:
    return PromptTemplate(
        name="empathy",
        begin=constants.PROMPT_BEGIN,
        user=constants.PROMPT_USER,
        assistant=constants.PROMPT_ASSISTANT,
        instruction=constants.EMPATHY_INSTRUCTION.format(inputline="{question} | {answer}"),
    )


def _chat() -> ChatTemplate:
    # The user turn needs no trailing space: the chat template, not the text, ends the turn.
    return ChatTemplate(name=CHAT_TEMPLATE, instruction=constants.CORRECTION_INSTRUCTION.rstrip())


PRESETS = {
    "correction": _correction,
    "aligner-v1": _aligner_v1,
    "empathy": _empathy,
    CHAT_TEMPLATE: _chat,
}


def _chat_template_from_dict(data: dict, source: str) -> ChatTemplate:
    fields = {"instruction", "system_prompt", "chat_template"}
    unknown = sorted(set(data) - {*fields, "name", "kind"})
    if unknown:
        raise TemplateError(f"{source}: template has unknown field(s) {', '.join(unknown)}")
    if "instruction" not in data:
        data = {**data, "instruction": _chat().instruction}
    name = data.get("name", Path(source).stem)
    return ChatTemplate(name=str(name), **{f: data[f] for f in fields if f in data})


def template_from_dict(data: object, source: str) -> Template:
    """Build a template from a mapping read from ``source`` (named in errors).

    ``"kind": "chat"`` makes a chat template (fields ``instruction``, ``system_prompt``,
    ``chat_template``); otherwise the four string fields are required.
    """
    if not isinstance(data, dict):
        raise TemplateError(f"{source}: a template must be a mapping of its fields")
    kind = data.get("kind", "string")
    if kind == "chat":
        return _chat_template_from_dict(data, source)
    if kind != "string":
        raise TemplateError(f"{source}: unknown template kind {kind!r} (use string or chat)")
    data = {key: value for key, value in data.items() if key != "kind"}
    fields = ("begin", "user", "assistant", "instruction")
    missing = [f for f in fields if f not in data]
    if missing:
        raise TemplateError(f"{source}: template is missing field(s) {', '.join(missing)}")
    unknown = sorted(set(data) - {*fields, "name"})
    if unknown:
        raise TemplateError(f"{source}: template has unknown field(s) {', '.join(unknown)}")
    name = data.get("name", Path(source).stem)
    return PromptTemplate(name=str(name), **{f: data[f] for f in fields})


def load_template_file(path: str | Path) -> Template:
    """Load a template from a JSON or YAML file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise TemplateError(f"{path}: cannot read template: {error}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise TemplateError(f"{path}: not valid JSON/YAML: {error}".splitlines()[0]) from None
    return template_from_dict(data, str(path))


def get_template(name_or_path: str | None = None, system_prompt: str | None = None) -> Template:
    """A preset by name, or a template file (.json / .yaml / .yml), or a folder holding one.

    ``system_prompt`` sets a chat template's system message; a string template has none.
    """
    template = _find_template(name_or_path or DEFAULT_TEMPLATE)
    if system_prompt is None:
        return template
    if not isinstance(template, ChatTemplate):
        raise TemplateError(
            f"--system_prompt needs a chat template (--prompt_template chat); {template.name!r} "
            "is a string template"
        )
    return replace(template, system_prompt=system_prompt)


def _find_template(name_or_path: str) -> Template:
    if name_or_path in PRESETS:
        return PRESETS[name_or_path]()
    path = Path(name_or_path)
    if path.is_dir() and (path / TEMPLATE_FILENAME).is_file():
        return load_template_file(path / TEMPLATE_FILENAME)
    if path.is_file():
        return load_template_file(path)
    raise TemplateError(
        f"unknown prompt template {name_or_path!r}: use one of {', '.join(PRESETS)} "
        "or the path of a .json / .yaml template file"
    )
