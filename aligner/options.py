"""Flags declared once, as typed dataclass fields, and turned into argparse options.

A group of flags is a dataclass whose fields carry their help (and aliases, choices...) in
``option(...)``; ``add_options`` adds a group's fields to a parser, and ``take`` reads the
group back out of the parsed namespace. Every command builds its parser from the same groups,
so a flag has one name, one default and one meaning everywhere, and a boolean takes ``--flag``,
``--flag True`` and ``--flag False`` in every command, as in the original toolkit.

This is transformers' ``HfArgumentParser`` idea, written small: that parser takes neither the
original toolkit's aliases nor its ``--flag True`` booleans, and cannot add part of a group.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

Group = TypeVar("Group")


def str2bool(text: str) -> bool:
    """``True``/``False`` (and yes/no, on/off, 1/0), as the original toolkit writes them."""
    lowered = text.strip().lower()
    if lowered in {"true", "1", "yes", "y", "on"}:
        return True
    if lowered in {"false", "0", "no", "n", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (True/False), got {text!r}")


BOOLEAN: dict[str, Any] = {"type": str2bool, "nargs": "?", "const": True, "metavar": "BOOL"}
"""How a boolean flag parses: a bare ``--flag`` is True, else the value given."""


def bool_or_auto(text: str) -> bool | None:
    """A boolean, or ``auto`` (None): on wherever the hardware supports it."""
    return None if text.strip().lower() == "auto" else str2bool(text)


def option(
    default: Any = None,
    help: str = "",
    *,
    aliases: tuple[str, ...] = (),
    required: bool = False,
    many: bool = False,
    parse: Callable[[str], Any] | None = None,
    **argparse_settings: Any,
) -> Any:
    """A dataclass field that is also a flag ``--NAME`` (plus ``aliases``).

    ``many``: the flag takes one or more values (a list); ``parse``: the function turning the
    text into the value, where the field's type alone does not say (``bool | None`` fields take
    ``True``/``False``). Other keywords (``choices``, ``metavar``, ``nargs``, ``action``) go to
    ``add_argument`` as they are.
    """
    metadata = {
        "help": help,
        "aliases": aliases,
        "required": required,
        "many": many,
        "parse": parse,
        "argparse": argparse_settings,
    }
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _value_type(annotation: Any) -> Any:
    """``int`` for ``int | None``, ``str`` for ``list[str] | None``; the type itself otherwise."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        (annotation,) = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if typing.get_origin(annotation) is list:
        (annotation,) = typing.get_args(annotation)
    return annotation


def _argument(
    field: dataclasses.Field, annotation: Any, default: Any, dest: str, required: bool
) -> dict[str, Any]:
    meta = field.metadata
    settings: dict[str, Any] = {"dest": dest, "default": default, "help": meta["help"]}
    if required:
        settings["required"] = True
    value_type = _value_type(annotation)
    if value_type is bool and meta["parse"] is None and "action" not in meta["argparse"]:
        settings.update(BOOLEAN)
    elif meta["parse"] is not None:
        settings["type"] = meta["parse"]
    elif value_type in (int, float):
        settings["type"] = value_type
    if meta["many"]:
        settings["nargs"] = "+"
    settings.update(meta["argparse"])
    return settings


def add_options(
    parser: argparse.ArgumentParser,
    group: type,
    *,
    title: str | None = None,
    only: Iterable[str] | None = None,
    defaults: dict[str, Any] | None = None,
    helps: dict[str, str] | None = None,
    optional: Iterable[str] = (),
    prefix: str | None = None,
) -> None:
    """Add ``group``'s fields (``only`` those named, if given) to ``parser`` as flags.

    ``defaults`` and ``helps`` change a field's default or help for this command alone, where
    a command means something narrower by it (``aligner data``'s ``--seed`` seeds sampling only);
    fields named in ``optional`` are not required by this command. With a ``prefix``, field
    ``url`` is the flag ``--PREFIX_url``: a group declared once for several servers.
    """
    target = parser.add_argument_group(title) if title else parser
    hints = typing.get_type_hints(group)
    chosen = None if only is None else set(only)
    for field in dataclasses.fields(group):
        if chosen is not None and field.name not in chosen:
            continue
        default = (defaults or {}).get(field.name, _default_of(field))
        required = field.metadata["required"] and field.name not in optional
        dest = _flag_name(field.name, prefix)
        settings = _argument(field, hints[field.name], default, dest, required)
        if helps and field.name in helps:
            settings["help"] = helps[field.name]
        target.add_argument(f"--{dest}", *field.metadata["aliases"], **settings)


def _flag_name(name: str, prefix: str | None) -> str:
    return name if prefix is None else f"{prefix}_{name}"


def _default_of(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def take(namespace: argparse.Namespace, group: type[Group], prefix: str | None = None) -> Group:
    """The ``group`` dataclass filled from a parsed namespace (fields it lacks keep defaults);
    with a ``prefix``, from the flags ``add_options`` named with it."""
    values = vars(namespace)
    names = {f.name: _flag_name(f.name, prefix) for f in dataclasses.fields(group)}
    return group(**{name: values[flag] for name, flag in names.items() if flag in values})


def defaults_from_file(parser: argparse.ArgumentParser, path: str) -> None:
    """Make the flag values saved in the JSON file ``path`` (a run's ``training_args.json``)
    ``parser``'s defaults, so that a flag given on the command line still overrides them.

    A saved value is checked as the flag's own parsing would check it: an unknown name, a
    value of the wrong kind or out of its choices is refused with one line naming the file.
    """
    from aligner.errors import UserError

    try:
        saved = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"--config {path}: {error}") from None
    if not isinstance(saved, dict):
        raise UserError(f"--config {path}: must hold a JSON object of flag values")
    actions = {action.dest: action for action in parser._actions if action.option_strings}
    values = {}
    for name, value in saved.items():
        if name not in actions or name in {"help", "config"}:
            raise UserError(f"--config {path}: unknown flag {name!r}")
        problem, values[name] = _saved_value(actions[name], value)
        if problem:
            raise UserError(f"--config {path}: {name}: {problem}, got {value!r}")
    for name in values:
        actions[name].required = False  # the file gives it
    parser.set_defaults(**values)


KINDS = {bool: "a boolean", int: "an integer", float: "a number"}


def _saved_value(action: argparse.Action, value: Any) -> tuple[str | None, Any]:
    """A saved flag value as the parsed flag holds it, and what is wrong with it (or None)."""
    if value is None:
        return None, None
    takes_many = action.nargs in ("+", "*") or isinstance(action, argparse._AppendAction)
    if takes_many != isinstance(value, list):
        return ("expected a list" if takes_many else "expected a single value"), value
    items = value if takes_many else [value]
    # A pair (--column_map FIELD=COLUMN) is saved as a two-item list.
    items = [tuple(item) if isinstance(item, list) else item for item in items]
    kind = bool if action.type is str2bool else action.type
    for item in items:
        accepted = (int, float) if kind is float else kind
        if kind in KINDS and not (
            isinstance(item, accepted) and (kind is bool or not isinstance(item, bool))
        ):
            return f"expected {KINDS[kind]}", value
        if action.choices is not None and item not in action.choices:
            return f"expected one of {', '.join(map(str, action.choices))}", value
    return None, (items if takes_many else items[0])
