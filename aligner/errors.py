"""How every command ends: its exit codes, its one-line error, and usage errors in two lines."""

from __future__ import annotations

import argparse
import sys

EXIT_OK = 0
EXIT_FAILED = 1
"""The run started and failed: disk full, non-finite weights, a rank that died."""
EXIT_REFUSED = 2
"""Refused before any work: a bad flag, record, template or path; nothing was changed."""
EXIT_SIGINT = 130
"""Interrupted (Ctrl-C, SIGINT): 128 + 2, as the shell reports it."""
EXIT_SIGTERM = 143
"""Stopped by SIGTERM (a scheduler, ``timeout``): 128 + 15, as the shell reports it."""


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
