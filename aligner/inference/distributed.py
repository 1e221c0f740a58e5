"""Running a command on every rank of a launcher (torchrun, deepspeed): ranks, barriers, shards."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist

# Ranks finish their shares at different times and wait for the slowest at the final barrier;
# the default ten-minute timeout would abort a long but healthy run.
BARRIER_TIMEOUT = timedelta(hours=24)


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Ranks:
        """The ranks a launcher announces in the environment; one rank without a launcher."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size == 1:
            return cls()
        return cls(
            rank=int(os.environ["RANK"]),
            world_size=world_size,
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    @contextmanager
    def group(self) -> Iterator[Ranks]:
        """Join the process group for the run's barriers (gloo: no tensors cross ranks)."""
        if self.world_size == 1:
            yield self
            return
        dist.init_process_group(
            "gloo", rank=self.rank, world_size=self.world_size, timeout=BARRIER_TIMEOUT
        )
        try:
            yield self
        finally:
            dist.destroy_process_group()


def shard_path(output: str | Path, rank: int) -> Path:
    """Where one rank appends its corrections; the main rank merges these into ``output``."""
    output = Path(output)
    return output.with_name(f"{output.name}.rank{rank}")


def shard_paths(output: str | Path) -> list[Path]:
    """The shard files of ``output`` on disk, from this run or an interrupted one."""
    output = Path(output)
    found = output.parent.glob(f"{output.name}.rank*") if output.parent.is_dir() else []
    return sorted(path for path in found if path.name[len(output.name) + 5 :].isdigit())
