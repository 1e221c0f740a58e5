"""Flag conventions shared by every command: booleans written the original toolkit's way."""

from __future__ import annotations

import argparse


def str2bool(text: str) -> bool:
    """``True``/``False`` (and yes/no, on/off, 1/0), as the original toolkit writes them."""
    lowered = text.strip().lower()
    if lowered in {"true", "1", "yes", "y", "on"}:
        return True
    if lowered in {"false", "0", "no", "n", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (True/False), got {text!r}")


def add_bool(
    group: argparse.ArgumentParser | argparse._ArgumentGroup,
    *names: str,
    default: bool | None,
    help: str,
) -> None:
    """A boolean flag: ``--flag``, ``--flag True`` and ``--flag False`` all work, as in the
    original toolkit (whose scripts write ``--bf16 True``)."""
    group.add_argument(
        *names, type=str2bool, nargs="?", const=True, default=default, metavar="BOOL", help=help
    )


def bool_or_auto(text: str) -> bool | None:
    """A boolean, or ``auto`` (None): on wherever the hardware supports it."""
    return None if text.strip().lower() == "auto" else str2bool(text)


def add_trust_remote_code(group: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    add_bool(
        group,
        "--trust_remote_code",
        default=False,
        help="run Python code shipped with the model folder (only for models you trust)",
    )
