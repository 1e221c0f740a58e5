"""Ranks and world size, read from the launcher's environment in this one place.

``aligner train``, ``correct`` and ``eval`` run under torchrun or the deepspeed launcher (or as
one process without one); each asks ``Ranks.from_env()`` which rank it is.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

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


def training_ranks(local_rank_flag: int = -1) -> Ranks:
    """This process's ranks for training; a process started without a launcher becomes a
    one-rank job with the environment a process group needs (a free port on 127.0.0.1)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        os.environ.update(
            RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
        )
    return Ranks(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ.get("LOCAL_RANK", max(local_rank_flag, 0))),
    )
