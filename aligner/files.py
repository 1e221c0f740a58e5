"""Writing files safely, the one place that does it: a file replaced atomically and durably, an
append forced to disk, a folder published whole, into folders checked to be writable.

Temporary files and folders are hidden (their names start with a dot) and unique per process, so
that a crash leaves nothing that looks like an output: a file's is ``.NAME.XXXXXXXX.tmp`` beside
it, a folder's ``.NAME.saving-PID`` beside it.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from aligner.errors import UserError


class UnwritableError(UserError):
    """A path the command was asked to write to that cannot be written; one line."""


def _mode_for(path: Path) -> int:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


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
        # mkstemp makes the file private (0600); the output gets the permissions a plain write
        # gives it: those of the file it replaces, else 0666 less the umask.
        os.chmod(temporary, _mode_for(path))
        with os.fdopen(handle, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as file:
            yield file
            _force_to_disk(file)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_atomically(path: str | Path, data: str | bytes) -> None:
    """Replace ``path`` with ``data``, atomically and durably."""
    with atomic_writer(path, "wb" if isinstance(data, bytes) else "w") as handle:
        handle.write(data)


def write_durably(handle: IO, data: str | bytes) -> None:
    """Write ``data`` to an open file (an append, say) and force it to disk, so that a crash
    after this returns loses none of it."""
    handle.write(data)
    _force_to_disk(handle)


def _force_to_disk(handle: IO) -> None:
    handle.flush()
    os.fsync(handle.fileno())


@contextmanager
def staged_folder(
    folder: str | Path, *, last: Sequence[str] = (), stale: tuple[str, ...] = ()
) -> Iterator[Path]:
    """An empty hidden folder beside ``folder`` to write into; once the block ends, its files
    replace those of the same names in ``folder`` (see :func:`publish_folder`).

    If the block raises, ``folder`` is untouched and the temporary folder is removed. ``last``
    names the files that make ``folder`` look complete; files of an earlier version whose names
    end with one of ``stale`` go even where the new version has none of that name.
    """
    folder = Path(folder)
    staging = folder.parent / f".{folder.name}.saving-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)  # an earlier, interrupted save of this process
    staging.mkdir(parents=True)
    try:
        yield staging
        publish_folder(staging, folder, last=last, stale=stale)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def publish_folder(
    staging: Path, folder: Path, *, last: Sequence[str] = (), stale: tuple[str, ...] = ()
) -> None:
    """Move the files of a finished ``staging`` folder into ``folder``, the ``last`` ones last,
    and remove ``staging``.

    Each file is replaced atomically. Before any is, the ``last`` files already in ``folder`` go,
    so that an earlier version stops looking complete before its files are replaced, and so do
    those whose names end with one of ``stale``, so that none of it is left mixed in with the
    new one. Other files of ``folder`` stay.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for marker in last:
        (folder / marker).unlink(missing_ok=True)
    for entry in folder.iterdir():
        if entry.is_file() and entry.name.endswith(stale):
            entry.unlink()
    for path in sorted(staging.iterdir(), key=lambda path: path.name in last):
        os.replace(path, folder / path.name)
    staging.rmdir()


WRITE_PROBE_PREFIX = ".aligner-write-check-"
"""The name of ``check_writable``'s probe file, which lives for an instant: every rank probes
the same output folder at once, so whoever lists that folder must not count another's probe."""


SYSTEM_FOLDERS = {("/", "dev"), ("/", "proc")}
"""Where paths name devices and processes' files, not files a command may write beside."""


def check_file_path(path: str | Path, flag: str) -> None:
    """Refuse an output file path that names something other than a regular file (if anything).

    A folder, a device (``/dev/stdout``, ``/dev/null``), a FIFO or a socket cannot be replaced
    atomically, resumed from or given a settings file beside it.
    """
    path = Path(path)
    if path.is_dir():
        raise UnwritableError(f"{flag} {path}: is a folder, not a file")
    # /dev/stdout redirected to a file is a link to a regular file: its settings file, and an
    # atomic replace, would still land in /dev.
    in_system_folders = any(
        place.parts[:2] in SYSTEM_FOLDERS for place in (path.absolute(), path.resolve())
    )
    if in_system_folders or (path.exists() and not path.is_file()):
        raise UnwritableError(
            f"{flag} {path}: is not a regular file (a device, pipe or socket); name a file to write"
        )


def check_writable(path: str | Path, flag: str, *, folder: bool = False) -> None:
    """Refuse, before any work, an output path that cannot be written.

    ``path`` is the file (or with ``folder``, the folder) to be written, named by ``flag`` in
    the message; it need not exist yet. The nearest existing folder at or above it must accept
    a new file: a probe file is created there and removed, which also catches read-only mounts,
    where permission bits (and root) say nothing.
    """
    path = Path(path)
    if not folder:
        check_file_path(path, flag)
    existing = path if folder else path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UnwritableError(f"{flag} {path}: {existing} is not a folder")
    try:
        probe, name = tempfile.mkstemp(dir=existing, prefix=WRITE_PROBE_PREFIX)
    except OSError as error:
        reason = error.strerror or str(error)
        raise UnwritableError(f"{flag} {path}: cannot write in {existing} ({reason})") from None
    os.close(probe)
    os.unlink(name)
