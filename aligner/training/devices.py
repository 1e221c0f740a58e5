"""Where a training rank runs: its device and precision, and joining the process group."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import torch

from aligner.config import ArgumentError, PrecisionArgs
from aligner.runtime import Ranks


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
    """bf16, fp16 or fp32, or an ArgumentError when the hardware cannot do what was asked."""
    on_cpu = accelerator.device_name() == "cpu"
    tf32_capable = not on_cpu and torch.cuda.get_device_capability()[0] >= 8
    if args.tf32 and not tf32_capable:
        raise ArgumentError("--tf32 needs an NVIDIA GPU of the Ampere generation or newer")
    if args.tf32 or (args.tf32 is None and tf32_capable):  # None: auto
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if args.fp16:
        if not accelerator.is_fp16_supported():
            raise ArgumentError(f"--fp16: this {accelerator.device_name()} cannot train in fp16")
        return "fp16"
    if args.bf16:
        if not accelerator.is_bf16_supported():
            raise ArgumentError(f"--bf16: this {accelerator.device_name()} cannot train in bf16")
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
