"""The records a command writes, one JSON line each: their ids, reading back and merging what a
run wrote, and where each rank writes its share.

Every record has an id (its own, else its index in the input). A crash can leave the last line
of a file torn, and a run under a launcher leaves one shard file per rank (``FILE.rankN``);
``merge_written`` gathers them into the output, each id once, in input order.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from aligner.errors import UserError
from aligner.files import write_atomically, write_durably

Record = dict[str, Any]
CONTEXT_FIELDS = ("question", "messages")
CORRECTION_FIELD = "correction"
REFERENCE_FIELD = "reference_correction"
"""Where an input's own ``correction`` (a reference, e.g. from a test split) is kept."""


class RecordError(UserError):
    """Input records the command cannot tell apart."""


class OutputError(UserError):
    """An existing output file that cannot be resumed from."""


def id_key(record_id: object) -> str:
    """A hashable key for an id of any JSON type, the same before and after a JSON round trip."""
    return json.dumps(record_id, sort_keys=True, default=str)


def with_ids(rows: list[Record], source: str) -> list[Record]:
    """Each record with its id (its own, else its index); ids must be unique."""
    records, seen = [], {}
    for index, row in enumerate(rows):
        # A file mixing question and messages records gives every row both columns, and one
        # mixing records with and without ids gives every row an id, null where it had none.
        row = {k: v for k, v in row.items() if v is not None or k not in CONTEXT_FIELDS}
        if row.get("id") is None:
            row = {"id": index, **{k: v for k, v in row.items() if k != "id"}}
        key = id_key(row["id"])
        if key in seen:
            raise RecordError(
                f"{source}: records {seen[key]} and {index} share the id {row['id']!r}; "
                "ids must be unique"
            )
        seen[key] = index
        records.append(row)
    return records


def dumps(record: Record) -> str:
    # default=str keeps values JSON lacks (dates, decimals from Parquet) readable, not fatal.
    return json.dumps(record, ensure_ascii=False, default=str)


def to_jsonl(records: Iterable[Record]) -> str:
    return "".join(dumps(record) + "\n" for record in records)


def append_durably(handle: IO[str], records: Iterable[Record]) -> None:
    """Append records as JSON lines, durably."""
    write_durably(handle, to_jsonl(records))


def write_records(path: str | Path, records: Iterable[Record]) -> None:
    """Replace ``path`` with these records as JSON lines, atomically."""
    write_atomically(path, to_jsonl(records))


def read_written(
    path: str | Path, *, repair: bool = True, fields: Sequence[str] = ("id",)
) -> list[Record]:
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


def shard_path(output: str | Path, rank: int) -> Path:
    """Where one rank appends its records; the main rank merges these into ``output``."""
    output = Path(output)
    return output.with_name(f"{output.name}.rank{rank}")


def shard_paths(output: str | Path) -> list[Path]:
    """The shard files of ``output`` on disk, from this run or an interrupted one."""
    output = Path(output)
    found = output.parent.glob(f"{output.name}.rank*") if output.parent.is_dir() else []
    return sorted(path for path in found if path.name[len(output.name) + 5 :].isdigit())


def in_input_order(written: list[Record], records: list[Record]) -> list[Record]:
    """Written records in input order; any the input does not hold follow in file order."""
    position = {id_key(record["id"]): index for index, record in enumerate(records)}
    return sorted(written, key=lambda r: position.get(id_key(r["id"]), len(position)))


def merge_written(output: Path, records: list[Record]) -> list[Record]:
    """Gather what was written, to ``output`` and to rank shards, into ``output``.

    Each id is kept once (its first record), in input order. The shards are removed only after
    the merged file has replaced ``output``, so a crash in between loses nothing.
    """
    shards = shard_paths(output)
    written = read_written(output)
    seen: set[str] = set()
    merged = []
    for record in itertools.chain(written, *(read_written(shard) for shard in shards)):
        if id_key(record["id"]) not in seen:
            seen.add(id_key(record["id"]))
            merged.append(record)
    repeated = len(written) - len({id_key(record["id"]) for record in written})
    if repeated:
        # Only an output written outside this command's lock can hold these.
        print(
            f"{output}: dropped {repeated} record(s) repeating an earlier record's id; "
            "kept the first of each",
            file=sys.stderr,
        )
    ordered = in_input_order(merged, records)
    if ordered != written:
        write_records(output, ordered)
    for shard in shards:
        shard.unlink()
    return ordered
