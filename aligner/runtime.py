"""Where a process runs: its rank and world size, read from the launcher's environment, and for
training its device, precision and process group; in this one place.

``aligner train``, ``correct`` and ``eval`` run under torchrun or the deepspeed launcher (or as
one process without one); each asks ``Ranks.from_env()`` which rank it is. DeepSpeed is imported
only by the functions that train, so that inference and the unit tests run without it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from aligner.errors import UserError

if TYPE_CHECKING:  # aligner.config reads the world size from here
    from aligner.config import PrecisionArgs

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


@dataclass(frozen=True)
class Runtime:
    """Where this process runs and in what precision."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    precision: str  # bf16 | fp16 | fp32
    on_cpu: bool

    @property
    def dtype(self) -> torch.dtype:
        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[
            self.precision
        ]

    @classmethod
    def on_this_machine(cls, ranks: Ranks, precision: PrecisionArgs) -> Runtime:
        """This rank's device (its GPU, else the CPU) and the precision it can train in."""
        from deepspeed.accelerator import get_accelerator

        accelerator = get_accelerator()
        on_cpu = accelerator.device_name() == "cpu"
        device = (
            torch.device("cpu")
            if on_cpu
            else torch.device(accelerator.device_name(ranks.local_rank))
        )
        chosen = resolve_precision(precision, accelerator, ranks.rank)
        return cls(ranks.rank, ranks.local_rank, ranks.world_size, device, chosen, on_cpu)


def resolve_precision(args: PrecisionArgs, accelerator: object, rank: int) -> str:
    """bf16, fp16 or fp32, or an UserError when the hardware cannot do what was asked."""
    on_cpu = accelerator.device_name() == "cpu"
    tf32_capable = not on_cpu and torch.cuda.get_device_capability()[0] >= 8
    if args.tf32 and not tf32_capable:
        raise UserError("--tf32 needs an NVIDIA GPU of the Ampere generation or newer")
    if args.tf32 or (args.tf32 is None and tf32_capable):  # None: auto
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if args.fp16:
        if not accelerator.is_fp16_supported():
            raise UserError(f"--fp16: this {accelerator.device_name()} cannot train in fp16")
        return "fp16"
    if args.bf16:
        if not accelerator.is_bf16_supported():
            raise UserError(f"--bf16: this {accelerator.device_name()} cannot train in bf16")
        return "bf16"
    if args.bf16 is None:
        if not on_cpu and accelerator.is_bf16_supported():
            return "bf16"
        if rank == 0:
            print(
                f"precision: fp32 (no bf16-capable GPU found; --bf16 True forces bf16 on "
                f"{accelerator.device_name()})",
                flush=True,
            )
    return "fp32"


def join_training_group(*, on_cpu: bool, local_rank: int, timeout_s: int) -> None:
    """Bind this rank to its device and join the process group through DeepSpeed."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    if on_cpu:
        # DeepSpeed's shared-memory all-reduce serves inference only. Marking it unavailable
        # skips compiling it and probing every op with the compiler, which on a small CPU
        # machine cost a minute or more per launch.
        deepspeed.ops.__compatible_ops__ = {}
    else:
        accelerator.set_device(local_rank)
    deepspeed.init_distributed(
        dist_backend=accelerator.communication_backend_name(),
        timeout=timedelta(seconds=timeout_s),
    )
