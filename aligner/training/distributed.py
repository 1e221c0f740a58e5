"""Joining the process group on GPU ranks (NCCL) or CPU ranks (gloo), with or without a launcher."""

from __future__ import annotations

import os
import socket
from datetime import timedelta


def ensure_process_env() -> None:
    """Give a process started without a launcher the environment of a one-rank job."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ.update(
        RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )


def init_process_group(*, on_cpu: bool, local_rank: int, timeout_s: int) -> None:
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
