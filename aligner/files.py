"""Writing files safely: replaced atomically and durably, into folders checked to be writable."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from aligner.errors import UserError


class UnwritableError(UserError):
    """A path the command was asked to write to that cannot be written; one line."""


@contextmanager
def atomic_writer(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """A file handle whose contents replace ``path`` in one step once the block ends.

    Readers see the old file or the whole new one, never a part. The data is on disk before
    the rename. If the block raises, ``path`` is untouched and the temporary file is removed.
    """
    path = Path(path)
    # Unique per writer (several processes may write the same file) and hidden, so that a
    # crash leaves nothing that looks like an output.
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_atomically(path: str | Path, data: str | bytes) -> None:
    """Replace ``path`` with ``data``, atomically and durably."""
    with atomic_writer(path, "wb" if isinstance(data, bytes) else "w") as handle:
        handle.write(data)


def check_writable(path: str | Path, flag: str, *, folder: bool = False) -> None:
    """Refuse, before any work, an output path that cannot be written.

    ``path`` is the file (or with ``folder``, the folder) to be written, named by ``flag`` in
    the message; it need not exist yet. The nearest existing folder at or above it must accept
    a new file: a probe file is created there and removed, which also catches read-only mounts,
    where permission bits (and root) say nothing.
    """
    path = Path(path)
    if path.is_dir() and not folder:
        raise UnwritableError(f"{flag} {path}: is a folder, not a file")
    existing = path if folder else path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UnwritableError(f"{flag} {path}: {existing} is not a folder")
    try:
        probe, name = tempfile.mkstemp(dir=existing, prefix=".aligner-write-check-")
    except OSError as error:
        reason = error.strerror or str(error)
        raise UnwritableError(f"{flag} {path}: cannot write in {existing} ({reason})") from None
    os.close(probe)
    os.unlink(name)
