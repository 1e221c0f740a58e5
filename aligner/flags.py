"""Flag conventions shared by every command: booleans written the original toolkit's way."""

from __future__ import annotations

import argparse


def str2bool(text: str) -> bool:
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


def add_trust_remote_code(group: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    add_bool(
        group,
        "--trust_remote_code",
        default=False,
        help="run Python code shipped with the model folder (only for models you trust)",
    )
