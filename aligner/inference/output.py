"""Crash-safe JSONL output: append a batch durably, read back what a run already wrote.

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
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from aligner.errors import UserError
from aligner.files import check_file_path, write_durably
from aligner.files import write_atomically as write_text_atomically


class OutputError(UserError):
    """An existing output file that cannot be resumed from."""


def dumps(record: dict[str, Any]) -> str:
    # default=str keeps values JSON lacks (dates, decimals from Parquet) readable, not fatal.
    return json.dumps(record, ensure_ascii=False, default=str)


def read_written(
    path: str | Path, *, repair: bool = True, fields: Sequence[str] = ("id",)
) -> list[dict[str, Any]]:
    """The records of a JSONL file a previous run wrote; [] when it does not exist.

    A crash can leave the last line torn (no newline, or not valid JSON): with ``repair`` that
    line is cut from the file, so the next append starts on a clean line. A bad line anywhere
    else, or a record without one of ``fields``, means the file is not ours, and is an error.
    """
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    # After a clean write the data ends with a newline and the last piece is empty.
    complete, tail = lines[:-1], lines[-1]
    records, good_bytes = [], 0
    for number, line in enumerate(complete, start=1):
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            if number == len(complete) and not tail:
                break  # The last line, torn by a crash after its bytes were only partly written.
            raise OutputError(
                f"{path}:{number}: not a JSON line ({error}); cannot resume"
            ) from None
        if not isinstance(record, dict) or any(field not in record for field in fields):
            named = " and ".join(repr(field) for field in fields)
            raise OutputError(f"{path}:{number}: not a record with {named}; cannot resume")
        records.append(record)
        good_bytes += len(line) + 1
    if repair and good_bytes != len(data):
        with path.open("r+b") as handle:
            handle.truncate(good_bytes)
    return records


def to_jsonl(records: Iterable[dict[str, Any]]) -> str:
    return "".join(dumps(record) + "\n" for record in records)


def append_durably(handle: IO[str], records: Iterable[dict[str, Any]]) -> None:
    """Append records as JSON lines, durably."""
    write_durably(handle, to_jsonl(records))


def write_atomically(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    """Replace ``path`` with these records as JSON lines, atomically."""
    write_text_atomically(path, to_jsonl(records))


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
    write_text_atomically(path, json.dumps(settings, indent=2, ensure_ascii=False) + "\n")


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


def shard_path(output: str | Path, rank: int) -> Path:
    """Where one rank appends its corrections; the main rank merges these into ``output``."""
    output = Path(output)
    return output.with_name(f"{output.name}.rank{rank}")


def shard_paths(output: str | Path) -> list[Path]:
    """The shard files of ``output`` on disk, from this run or an interrupted one."""
    output = Path(output)
    found = output.parent.glob(f"{output.name}.rank*") if output.parent.is_dir() else []
    return sorted(path for path in found if path.name[len(output.name) + 5 :].isdigit())
