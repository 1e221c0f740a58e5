"""Prompt templates: the named presets, rendering, and loading a template from a file.

A template is four strings. ``instruction`` holds ``{question}`` and ``{answer}``; ``user`` holds
``{input}``, which receives the rendered instruction; the prompt is ``begin + user + assistant``
and the correction follows it directly. The template a model was trained with is saved beside
the processed data and the checkpoint (``prompt_template.json``) so inference renders the same
text.
"""

from __future__ import annotations

import json
import string
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from aligner import constants

TEMPLATE_FILENAME = "prompt_template.json"
DEFAULT_TEMPLATE = "correction"


class TemplateError(ValueError):
    """A template that is unknown, malformed, or missing a placeholder."""


def _fields(text: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(text) if name is not None]


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

    def render_input(self, user_input: str) -> str:
        """The prompt for an already formatted user input."""
        return self.begin.format() + self.user.format(input=user_input) + self.assistant.format()

    def render(self, question: str, answer: str) -> str:
        """The prompt for a question and an upstream answer; the correction follows it."""
        return self.render_input(self.instruction.format(question=question, answer=answer))

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / TEMPLATE_FILENAME
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")
        return path


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


PRESETS = {"correction": _correction, "aligner-v1": _aligner_v1}


def template_from_dict(data: object, source: str) -> PromptTemplate:
    """Build a template from a mapping read from ``source`` (named in errors)."""
    if not isinstance(data, dict):
        raise TemplateError(f"{source}: a template must be a mapping of its fields")
    fields = ("begin", "user", "assistant", "instruction")
    missing = [f for f in fields if f not in data]
    if missing:
        raise TemplateError(f"{source}: template is missing field(s) {', '.join(missing)}")
    unknown = sorted(set(data) - {*fields, "name"})
    if unknown:
        raise TemplateError(f"{source}: template has unknown field(s) {', '.join(unknown)}")
    name = data.get("name", Path(source).stem)
    return PromptTemplate(name=str(name), **{f: data[f] for f in fields})


def load_template_file(path: str | Path) -> PromptTemplate:
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


def get_template(name_or_path: str | None = None) -> PromptTemplate:
    """A preset by name, or a template file (.json / .yaml / .yml), or a folder holding one."""
    name_or_path = name_or_path or DEFAULT_TEMPLATE
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
