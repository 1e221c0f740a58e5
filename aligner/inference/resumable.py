"""The resumable loop of the commands that write one generated line per input record.

Every record has an id (its own, else its index in the input). The output is claimed first
(``inference.output``): a file the command did not write, or one written with other settings,
is refused. Re-running with the same output skips the records already written; a crash loses
at most the batch in flight. Under a launcher the pending records are dealt over the ranks,
each appending to its own shard file, which the main rank merges into the output, in input
order, once all are done.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from aligner.errors import UserError
from aligner.inference.output import (
    append_durably,
    claim_output,
    read_written,
    shard_path,
    shard_paths,
    write_atomically,
)
from aligner.runtime import Ranks

Record = dict[str, Any]
CONTEXT_FIELDS = ("question", "messages")


class RecordError(UserError):
    """Input records the command cannot tell apart."""


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
        write_atomically(output, ordered)
    for shard in shards:
        shard.unlink()
    return ordered


def run_over_ranks(
    output: Path,
    records: list[Record],
    settings: dict[str, Any],
    *,
    overwrite: bool,
    verb: str,
    order: Callable[[list[Record]], list[Record]],
    write_share: Callable[[list[Record], Path, Ranks], None],
) -> tuple[list[Record], int] | None:
    """Claim ``output``, then have every rank write its share of the records not yet written.

    ``order`` sorts the pending records before they are dealt round-robin (longest first gives
    every rank a similar load); ``write_share(records, path, ranks)`` appends their lines to
    ``path``. Returns, on the main rank, every line written in input order and how many were
    new; None on the others.
    """
    output.parent.mkdir(parents=True, exist_ok=True)
    ranks = Ranks.from_env()
    with ranks.group():
        # Only the main rank rewrites the output; the others append to their own shard files.
        if ranks.is_main:
            claim_output(output, settings, overwrite=overwrite, flag="--output")
            merge_written(output, records)
        ranks.barrier()
        done = {id_key(record["id"]) for record in read_written(output)}
        pending = [record for record in records if id_key(record["id"]) not in done]
        if done and ranks.is_main:
            print(f"{output}: {len(done)} records already {verb}, skipped")
        mine = order(pending)[ranks.rank :: ranks.world_size]
        if mine:
            shard = output if ranks.world_size == 1 else shard_path(output, ranks.rank)
            write_share(mine, shard, ranks)
        ranks.barrier()
        if not ranks.is_main:
            return None
        return merge_written(output, records), len(pending)


def append_in_batches(
    path: Path,
    records: list[Record],
    batch_size: int,
    lines_of: Callable[[list[Record]], list[Record]],
    *,
    desc: str,
    ranks: Ranks,
) -> None:
    """Append ``lines_of(batch)`` to ``path`` for each batch of ``records``, durably, with a
    progress bar on the main rank."""
    if ranks.world_size > 1:
        desc = f"{desc} (rank 0 of {ranks.world_size})"
    with (
        open(path, "a", encoding="utf-8") as handle,
        tqdm(total=len(records), unit="record", desc=desc, disable=not ranks.is_main) as bar,
    ):
        for start in range(0, len(records), batch_size):
            batch = records[start : start + batch_size]
            append_durably(handle, lines_of(batch))
            bar.update(len(batch))
