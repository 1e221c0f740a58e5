"""Claiming an output file: its settings file, the refusals, and the lock while a run writes it.

Beside each file it writes, a command keeps ``FILE.settings.json``: what produced it. That file
marks the output as the command's own, so that a file a user made is never resumed into or
replaced, and a resumed run cannot quietly mix the corrections of two models, templates or
decoding settings. A run writing a file holds a lock on it (``.FILE.lock``), so that two runs
never append to one output.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

from aligner.files import check_file_path, write_atomically
from aligner.inference.records import OutputError, shard_paths


def settings_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(output.name + ".settings.json")


def changed_settings(output: str | Path, settings: dict[str, Any]) -> list[str]:
    """The names of ``settings`` that differ from those saved beside ``output`` (if any)."""
    path = settings_path(output)
    if not path.exists():
        return []
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise OutputError(f"{path}: unreadable ({error}); delete it to resume") from None
    return sorted(name for name in settings if saved.get(name) != settings[name])


def check_settings(
    output: str | Path, settings: dict[str, Any], resuming: bool, flag: str = "--output"
) -> None:
    """Record ``settings`` for a new output; when resuming one, require the same settings."""
    path = settings_path(output)
    if resuming and path.exists():
        changed = changed_settings(output, settings)
        if changed:
            raise OutputError(
                f"{output} was written with other {', '.join(changed)}: pass a new {flag}, "
                "or --overwrite to start over"
            )
        return
    write_atomically(path, json.dumps(settings, indent=2, ensure_ascii=False) + "\n")


_held_locks: dict[Path, int] = {}
"""The outputs this process has locked, by resolved path, and the lock's file descriptor: a
lock lasts until the process exits, whatever path the run takes out of its command."""


def lock_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(f".{output.name}.lock")


def lock_output(output: str | Path, flag: str) -> None:
    """Hold an exclusive lock on ``output`` until this process exits; refuse, naming the other
    process, an output another process holds.

    Two runs appending to one output would interleave their records. The lock is an ``flock`` on
    a hidden file beside the output, which the system releases however the holder ends (a
    crash, ``kill -9``), so a stale lock never blocks a resume.
    """
    check_file_path(output, flag)  # a device has no folder of its own to hold the lock
    resolved = Path(output).resolve()
    if resolved in _held_locks:
        return
    path = lock_path(resolved)
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise OutputError(f"{flag} {output}: cannot create {path} ({error.strerror})") from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(descriptor, 32).decode(errors="replace").strip() or "unknown"
        os.close(descriptor)
        raise OutputError(
            f"{flag} {output} is being written by another run (pid {holder}): wait for it to "
            f"end, or choose another {flag}"
        ) from None
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
    _held_locks[resolved] = descriptor


def check_claim(
    output: str | Path, settings: dict[str, Any], *, overwrite: bool, flag: str
) -> list[Path]:
    """Refuse, writing nothing, an output this run cannot make its own; return its files.

    An existing file without its settings file is not this command's output; one with other
    settings is another run's. Both are refused unless ``overwrite``.
    """
    output = Path(output)
    check_file_path(output, flag)
    # An empty file (mktemp's, say) holds nothing to lose.
    files = (output, *shard_paths(output))
    written = [path for path in files if path.is_file() and path.stat().st_size > 0]
    if written and not overwrite:
        if not settings_path(output).exists():
            raise OutputError(
                f"{flag} {output} already exists and was not written by this command (no "
                f"{settings_path(output).name} beside it): choose another {flag}, or pass "
                "--overwrite to replace it"
            )
        changed = changed_settings(output, settings)
        if changed:
            raise OutputError(
                f"{output} was written with other {', '.join(changed)}: pass another {flag}, "
                "or --overwrite to start over"
            )
    return written


def claim_output(
    output: str | Path, settings: dict[str, Any], *, overwrite: bool, flag: str
) -> bool:
    """Make ``output`` this run's, locked until the process exits (see ``check_claim`` and
    ``lock_output``); return whether a run is resumed."""
    lock_output(output, flag)
    written = check_claim(output, settings, overwrite=overwrite, flag=flag)
    if overwrite:
        for path in written:
            path.unlink()
        written = []
    check_settings(output, settings, resuming=bool(written))
    return bool(written)
