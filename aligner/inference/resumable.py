"""The one resumable job of the commands that write one line per input record: ``correct``,
``answer``, reward scoring and the judge.

The output is claimed first (``inference.output``): a file the command did not write, or one
written with other settings, is refused. Re-running with the same output skips the records
already written; a crash or Ctrl-C loses at most the lines in flight. Under a launcher the
pending records are dealt over the ranks, each appending to its own shard file, which the main
rank merges into the output, in input order, once all are done (``inference.records``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
from tqdm import tqdm

from aligner.inference.endpoint import Endpoint, EndpointUnavailable, run_requests
from aligner.inference.output import check_claim, claim_output
from aligner.inference.records import (
    Record,
    append_durably,
    id_key,
    merge_written,
    read_written,
    shard_path,
)
from aligner.runtime import Ranks

Item = TypeVar("Item")


@dataclass(frozen=True)
class ResumableJob:
    """Writing one line per record of ``records`` to ``output``, resumably, over ranks."""

    output: Path
    records: list[Record]
    settings: dict[str, Any]
    """What decides the lines; a resumed run must match it."""
    verb: str
    """What was done to a written record ("corrected"), for messages."""
    fields: tuple[str, ...] = ("id",)
    """What every line of the output holds."""
    overwrite: bool = False
    flag: str = "--output"

    def check(self) -> None:
        """Refuse, writing nothing, an output this run cannot make its own, or one holding a
        line that is not such a record (before a resume would cut anything)."""
        written = check_claim(self.output, self.settings, overwrite=self.overwrite, flag=self.flag)
        if not self.overwrite:
            for path in written:
                read_written(path, repair=False, fields=self.fields)

    def run(
        self,
        ranks: Ranks,
        write_share: Callable[[list[Record], Path], None],
        order: Callable[[list[Record]], list[Record]] = list,
    ) -> tuple[list[Record], int] | None:
        """Claim the output, then have every rank write its share of the records not yet
        written: ``write_share(records, path)`` appends their lines to ``path``.

        ``order`` sorts the pending records before they are dealt round-robin (longest first
        gives every rank a similar load). Returns, on the main rank, every line written in
        input order and how many records were pending; None on the others.
        """
        self.output.parent.mkdir(parents=True, exist_ok=True)
        # Only the main rank rewrites the output; the others append to their own shard files.
        if ranks.is_main:
            claim_output(self.output, self.settings, overwrite=self.overwrite, flag=self.flag)
            merge_written(self.output, self.records)
        ranks.barrier()
        done = {id_key(record["id"]) for record in read_written(self.output)}
        pending = [record for record in self.records if id_key(record["id"]) not in done]
        if done and ranks.is_main:
            print(f"{self.output}: {len(done)} records already {self.verb}, skipped")
        mine = order(pending)[ranks.rank :: ranks.world_size]
        if mine:
            shard = self.output if ranks.world_size == 1 else shard_path(self.output, ranks.rank)
            write_share(mine, shard)
        ranks.barrier()
        if not ranks.is_main:
            return None
        return merge_written(self.output, self.records), len(pending)


def longest_first(records: list[Record], length: Callable[[Record], int]) -> list[Record]:
    """The records by ``length``, longest first: dealt round-robin, they give every rank a
    similar load; neighbours of similar length waste little compute on padding; and a batch too
    large for memory fails in the first minute rather than hours in."""
    return sorted(records, key=length, reverse=True)


def progress(total: int, desc: str, ranks: Ranks) -> tqdm:
    """A progress bar on the main rank, which under a launcher sees its own share."""
    if ranks.world_size > 1:
        desc = f"{desc} (rank 0 of {ranks.world_size})"
    return tqdm(total=total, unit="record", desc=desc, disable=not ranks.is_main)


def append_in_batches(
    path: Path,
    items: Sequence[Item],
    batch_size: int,
    lines_of: Callable[[list[Item]], list[Record]],
    *,
    desc: str,
    ranks: Ranks,
) -> None:
    """Append ``lines_of(batch)`` to ``path`` for each batch of ``items``, durably."""
    with open(path, "a", encoding="utf-8") as handle, progress(len(items), desc, ranks) as bar:
        for start in range(0, len(items), batch_size):
            batch = list(items[start : start + batch_size])
            append_durably(handle, lines_of(batch))
            bar.update(len(batch))


def append_replies(
    endpoint: Endpoint,
    items: Sequence[Item],
    line_of: Callable[[httpx.AsyncClient, Item], Awaitable[Record]],
    path: Path,
    *,
    concurrency: int,
    desc: str,
    ranks: Ranks,
) -> list[tuple[Item, EndpointUnavailable]]:
    """Ask ``endpoint`` for each item's line, ``concurrency`` at a time, and append each to
    ``path``, durably, as it arrives; return the items that got no reply (see ``run_requests``:
    a refusal or Ctrl-C stops at once, keeping every line appended)."""
    with open(path, "a", encoding="utf-8") as handle, progress(len(items), desc, ranks) as bar:

        def keep(_item: Item, line: Record) -> None:
            append_durably(handle, [line])
            bar.update(1)

        return run_requests(endpoint, items, line_of, keep, concurrency=concurrency)
