"""How every command ends: its exit codes, its one-line error, and usage errors in two lines.

Every command runs as ``run_command(name, argv, parse, prepare, execute)``: ``parse`` turns the
command line into the command's config, ``prepare(config)`` checks everything and returns a
``Plan`` without writing anything, and ``execute(plan)`` does the work. It is the only caller
of the three, and the one place where errors become exit codes: a ``UserError`` (a bad flag,
record, template, path, or a refused resume) or an unreadable file met while parsing or
preparing refuses the command with ``EXIT_REFUSED`` before any work; a ``RunFailure`` or an
``OSError`` (a full disk) while executing fails it with ``EXIT_FAILED``, keeping what was
written; Ctrl-C is ``EXIT_SIGINT``. Each is one line, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

Config = TypeVar("Config")
Found = TypeVar("Found")
Prepared = TypeVar("Prepared")

EXIT_OK = 0
EXIT_FAILED = 1
"""The run started and failed: disk full, non-finite weights, a rank that died."""
EXIT_REFUSED = 2
"""Refused before any work: a bad flag, record, template or path; nothing was changed."""
EXIT_SIGINT = 130
"""Interrupted (Ctrl-C, SIGINT): 128 + 2, as the shell reports it."""
EXIT_SIGTERM = 143
"""Stopped by SIGTERM (a scheduler, ``timeout``): 128 + 15, as the shell reports it."""


class UserError(ValueError):
    """Something the user asked for that the command cannot do: a bad flag, record, template
    or path, a refused resume or overwrite. Raised before any work, so nothing was changed."""


class RunFailure(RuntimeError):
    """A run that started and could not finish: a full disk, non-finite weights, too many
    skipped steps. What was written before (complete checkpoints, corrections) is kept."""


def one_line(error: BaseException) -> str:
    """The first line of an error's message; an error without one is named by its type."""
    if isinstance(error, OSError) and error.strerror:
        # str() of an OSError is "[Errno 28] No space left on device: 'path'"; the number
        # tells a user nothing.
        where = f"{error.filename}: " if error.filename else ""
        return f"{where}{error.strerror}"
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[0].strip() if lines else type(error).__name__


def report(command: str, error: BaseException | str, code: int) -> int:
    """Print ``error`` as the one line ``COMMAND: error: ...`` on stderr; return ``code``."""
    message = error if isinstance(error, str) else one_line(error)
    print(f"{command}: error: {message}", file=sys.stderr, flush=True)
    return code


@dataclass(frozen=True)
class Plan(Generic[Config, Found]):
    """What a command's ``prepare`` returns: its validated config, and what the checks found
    (the records to process, a loaded tokenizer...) that ``execute`` needs."""

    config: Config
    found: Found


class CommandParser(argparse.ArgumentParser):
    """An argument parser whose usage, printed above a usage error, is one line: the required
    flags and a pointer to ``--help``, not every option (``--help`` still lists them all)."""

    def format_usage(self) -> str:
        required = [
            f"{action.option_strings[0]} ..."
            for action in self._actions
            if action.required and action.option_strings
        ]
        return f"usage: {' '.join([self.prog, *required])} [options] (see {self.prog} --help)\n"


def run_command(
    command: str,
    argv: list[str],
    parse: Callable[[list[str]], Any],
    prepare: Callable[[Any], Prepared],
    execute: Callable[[Prepared], int],
    *,
    interrupted: str | Callable[[Prepared], str] = "interrupted",
) -> int:
    """Parse ``argv``, run ``prepare`` (every check, before any work) on the config, then
    ``execute`` the plan; return the exit code.

    Under a launcher every rank usually meets the same user error: rank 0 prints it as the one
    line, the others with their rank.
    ``interrupted`` is what Ctrl-C during ``execute`` prints (how to resume, or what was kept),
    or makes it from the plan.
    """
    try:
        plan = prepare(parse(argv))
    except (UserError, OSError, ValueError) as error:
        # ValueError too: libraries (json, datasets, tokenizers) report a bad user file so.
        return _say_once(command, error, EXIT_REFUSED)
    except KeyboardInterrupt:
        return _say_once(command, "interrupted", EXIT_SIGINT)
    try:
        return execute(plan)
    except UserError as error:  # found once the work began: a checkpoint that does not fit
        return _say_once(command, error, EXIT_REFUSED)
    except RunFailure as error:  # decided collectively: every rank raises it alike
        return _say_once(command, error, EXIT_FAILED)
    except OSError as error:  # only the rank that met it knows
        return report(command, error, EXIT_FAILED)
    except KeyboardInterrupt:
        message = interrupted(plan) if callable(interrupted) else interrupted
        return _say_once(command, message, EXIT_SIGINT)


def _say_once(command: str, error: BaseException | str, code: int) -> int:
    """The error as rank 0's one line; another rank labels its own copy, so that an error met
    by that rank alone (a file another rank is writing, say) is never silent."""
    from aligner.runtime import Ranks

    ranks = Ranks.from_env()
    if ranks.is_main:
        return report(command, error, code)
    return report(f"{command} (rank {ranks.rank})", error, code)
