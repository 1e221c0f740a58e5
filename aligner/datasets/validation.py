"""Record validation: one clear line naming the file, the line or row, and the field."""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

CORRECTION_FIELDS = ("question", "answer", "correction")
INPUT_FIELDS = ("input", "correction")
NON_EMPTY_FIELDS = frozenset({"correction"})
MESSAGES_FIELD = "messages"
"""A conversation in place of ``question``: turns up to and including the user turn answered."""
ROLES = ("system", "user", "assistant")


def _type_name(value: object) -> str:
    return {dict: "object", list: "array", bool: "boolean", int: "number", float: "number"}.get(
        type(value), type(value).__name__
    )


def check_messages(messages: object) -> str | None:
    """The problem with a ``messages`` value, as ``field path: what``, or None when valid."""
    if not isinstance(messages, (list, tuple)):
        return f"field 'messages' must be an array of turns, got {_type_name(messages)}"
    if not messages:
        return "field 'messages' is empty"
    for index, turn in enumerate(messages):
        path = f"messages[{index}]"
        if not isinstance(turn, Mapping):
            return f"field '{path}' must be an object with role and content"
        role, content = turn.get("role"), turn.get("content")
        if role not in ROLES:
            return f"field '{path}.role' must be one of {', '.join(ROLES)}, got {role!r}"
        if not isinstance(content, str):
            return f"field '{path}.content' must be a string, got {_type_name(content)}"
    if messages[-1].get("role") != "user":
        last = len(messages) - 1
        return (
            f"field 'messages[{last}].role' is {messages[-1].get('role')!r}: the last turn must "
            "be the user turn that the answer replies to"
        )
    return None


ColumnMap = Mapping[str, str]
"""``--column_map``: the column of the source that holds each record field."""


def map_record(record: object, column_map: ColumnMap) -> object:
    """A record with each mapped column under its field's name; a column named like a mapped
    field is replaced by the mapped one."""
    if not column_map or not isinstance(record, Mapping):
        return record
    moved = set(column_map) | set(column_map.values())
    mapped = {key: value for key, value in record.items() if key not in moved}
    mapped.update({f: record[column] for f, column in column_map.items() if column in record})
    return mapped


def field_label(field: str, column_map: ColumnMap) -> str:
    """How a message names a field: by the column it is read from when it is mapped."""
    column = column_map.get(field)
    return f"column {column!r} (mapped to {field!r})" if column else f"field {field!r}"


def _check_context(record: Mapping[str, Any], where: str, column_map: ColumnMap) -> str | None:
    """``question`` or ``messages``: exactly one of them, and valid."""
    has_messages = record.get(MESSAGES_FIELD) is not None
    if has_messages and record.get("question") is not None:
        question, messages = (
            field_label(f, column_map) if f in column_map else repr(f)
            for f in ("question", MESSAGES_FIELD)
        )
        return f"{where}: record has both {question} and {messages}; give one of them"
    if not has_messages:
        return _check_string(record, "question", where, column_map)
    problem = check_messages(record[MESSAGES_FIELD])
    return f"{where}: {problem}" if problem else None


def _check_string(
    record: Mapping[str, Any], field: str, where: str, column_map: ColumnMap
) -> str | None:
    label = field_label(field, column_map)
    if field not in record:
        return f"{where}: missing {label}"
    value = record[field]
    if value is None:
        return f"{where}: {label} is null"
    if not isinstance(value, str):
        return f"{where}: {label} must be a string, got {_type_name(value)}"
    if field in NON_EMPTY_FIELDS and not value.strip():
        return f"{where}: {label} is empty"
    return None


def check_record(
    record: object, where: str, fields: Sequence[str], column_map: ColumnMap | None = None
) -> str | None:
    """The problem with one record as a one-line message, or None when it is valid.

    A ``question`` in ``fields`` may be given as a ``messages`` conversation instead. With a
    ``column_map`` the record is one already mapped (``map_record``), and messages name the
    mapped fields by their columns.
    """
    if not isinstance(record, Mapping):
        return f"{where}: record is not an object (got {_type_name(record)})"
    for field in fields:
        check = _check_context if field == "question" else partial(_check_string, field=field)
        problem = check(record, where=where, column_map=column_map or {})
        if problem is not None:
            return problem
    return None


def record_columns(columns: Sequence[str], fields: Sequence[str]) -> list[str]:
    """The columns that hold ``fields``: ``messages`` besides (or instead of) ``question``."""
    wanted = list(fields)
    if "question" in wanted and MESSAGES_FIELD in columns:
        wanted.insert(wanted.index("question") + 1, MESSAGES_FIELD)
        if "question" not in columns:
            wanted.remove("question")
    return wanted


def _dialogue_problem(lines: object) -> str | None:
    if not isinstance(lines, (list, tuple)) or len(lines) < 2 or len(lines) % 2:
        return (
            "a dialogue must be a list of alternating user and assistant lines, ending with "
            "the assistant's"
        )
    for index, line in enumerate(lines):
        if not isinstance(line, str):
            return f"dialogue line {index} must be a string, got {_type_name(line)}"
    if not lines[-1].strip():
        return "the dialogue's last (assistant) line, the target, is empty"
    return None


def normalize_sample(sample: object, where: str) -> tuple[dict[str, Any] | None, str | None]:
    """A dataset class's sample as a record of the schema, or the problem with it.

    Besides this toolkit's forms (``question`` or ``messages`` + ``answer`` + ``correction``;
    ``input`` + ``correction``), the original toolkit's are accepted: ``input`` + ``answer``,
    where ``answer`` is the target, and a ``dialogue`` (or an ``input`` list) of alternating user
    and assistant lines whose last line is the target.
    """
    if not isinstance(sample, Mapping):
        return None, f"{where}: sample is not a mapping (got {_type_name(sample)})"
    sample = dict(sample)
    if isinstance(sample.get("input"), (list, tuple)):
        if sample.get("dialogue") is not None:
            return None, f"{where}: sample has both an 'input' list and a 'dialogue'"
        sample["dialogue"] = sample.pop("input")
    present = {field for field, value in sample.items() if value is not None}
    if "dialogue" in present:
        others = ("question", MESSAGES_FIELD, "answer", "correction", "input")
        extra = [field for field in others if field in present]
        if extra:
            return None, (
                f"{where}: sample has a 'dialogue' and {', '.join(map(repr, extra))}; a "
                "dialogue's last line is its target"
            )
        problem = _dialogue_problem(sample["dialogue"])
        if problem is not None:
            return None, f"{where}: {problem}"
        lines = list(sample["dialogue"])
        return {"dialogue": lines[:-1], "correction": lines[-1]}, None
    if "input" in present and not present & {"question", MESSAGES_FIELD}:
        if {"answer", "correction"} <= present:
            return None, (
                f"{where}: sample has 'input', 'answer' and 'correction': with 'input', "
                "'answer' is the original toolkit's target; give 'answer' or 'correction'"
            )
        if "answer" in present:
            sample["correction"] = sample.pop("answer")
        problem = check_record(sample, where, INPUT_FIELDS)
        return (None, problem) if problem else ({f: sample[f] for f in INPUT_FIELDS}, None)
    problem = check_record(sample, where, CORRECTION_FIELDS)
    if problem is not None:
        return None, problem
    fields = record_columns(sorted(present), CORRECTION_FIELDS)
    return {f: sample[f] for f in fields}, None


def utf8_problem(path: Path, chunk_size: int = 1 << 24) -> str | None:
    """Where a text file stops being valid UTF-8, or None; reads the file in chunks."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    tail_line, tail = 1, b""  # the bytes since the last newline, and their line number
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            data = tail + chunk  # starts after a newline, so on a character boundary
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError:
                error = _first_utf8_error(data)
                line = tail_line + data.count(b"\n", 0, error)
                column = error - (data.rfind(b"\n", 0, error) + 1) + 1
                byte = data[error : error + 1].hex()
                return f"{path}:{line}: invalid UTF-8 (byte 0x{byte} at column {column})"
            cut = data.rfind(b"\n")
            if cut >= 0:
                tail_line += data.count(b"\n")
                tail = data[cut + 1 :]
            else:
                tail = data
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return f"{path}:{tail_line}: invalid UTF-8 (a character cut off at the end of the file)"
    return None


def _first_utf8_error(data: bytes) -> int:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        return error.start
    return len(data)


def scan_json(path: Path) -> Iterator[tuple[str, object, str | None]]:
    """Yield ``(where, record, parse_problem)`` for each record of a JSON array or JSON Lines file.

    This is the slow, exact path: it runs only when the Arrow reader rejects a file or finds a
    bad value, to say precisely where the problem is.
    """
    problem = utf8_problem(path)
    if problem is not None:
        yield str(path), None, problem
        return
    text = path.read_text(encoding="utf-8")
    start = len(text) - len(text.lstrip())
    if text[start : start + 1] == "[":
        yield from _scan_array(path, text, start + 1)
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            yield where, json.loads(line), None
        except json.JSONDecodeError as error:
            yield where, None, f"{where}: invalid JSON: {error.msg} (column {error.colno})"


def _scan_array(path: Path, text: str, position: int) -> Iterator[tuple[str, object, str | None]]:
    decoder = json.JSONDecoder()
    index = 0
    while True:
        while position < len(text) and text[position] in " \t\r\n,":
            position += 1
        line = text.count("\n", 0, position) + 1
        if position >= len(text):
            yield f"{path}:{line}", None, f"{path}:{line}: invalid JSON: unterminated array"
            return
        if text[position] == "]":
            return
        where = f"{path}:{line} (record {index})"
        try:
            record, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            yield where, None, f"{path}:{error.lineno}: invalid JSON: {error.msg}"
            return
        yield where, record, None
        index += 1
