"""Numerical faults: skipping an optimizer step whose loss or gradient is not finite, on every rank
alike, and never saving non-finite weights; and the fault-injection hooks the tests use to cause
crashes and bad gradients.

Fault-injection hooks (environment variables, each ``RANK:STEP[,STEP...]``):

- ``ALIGNER_FAULT_KILL``: that rank SIGKILLs itself after finishing optimizer step STEP.
- ``ALIGNER_FAULT_SAVE``: that rank SIGKILLs itself while saving the checkpoint of step STEP,
  after DeepSpeed wrote its files and before the checkpoint is committed.
- ``ALIGNER_FAULT_INF_GRAD``: that rank's gradient gets an infinite element in step STEP.
- ``ALIGNER_FAULT_NAN_WEIGHT``: after step STEP, one of that rank's weights becomes NaN, as a
  silent overflow would make it.
"""

from __future__ import annotations

import os
import signal
import types
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from aligner.errors import RunFailure

FAULT_KILL_ENV = "ALIGNER_FAULT_KILL"
FAULT_SAVE_ENV = "ALIGNER_FAULT_SAVE"
FAULT_INF_GRAD_ENV = "ALIGNER_FAULT_INF_GRAD"
FAULT_NAN_WEIGHT_ENV = "ALIGNER_FAULT_NAN_WEIGHT"


class TooManySkippedSteps(RunFailure):
    """Raised on every rank when the run skipped too many optimizer steps in a row."""


class NonFiniteWeights(RunFailure):
    """Raised on every rank instead of saving weights that hold a NaN or an infinity."""


def weights_are_finite(model: nn.Module, device: torch.device) -> bool:
    """Whether every weight, on every rank, is finite. Collective.

    Each rank checks what it holds: its ZeRO-3 partition, or the whole (replicated) weights
    under ZeRO 0-2, whose fp32 master copies are finite when these are.
    """
    finite = all(bool(torch.isfinite(_held(param)).all()) for param in model.parameters())
    flag = torch.tensor([0.0 if finite else 1.0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return not flag.item()


def fault_steps(variable: str, rank: int) -> frozenset[int]:
    """The steps at which the hook ``variable`` fires on ``rank`` (empty when it is unset)."""
    spec = os.environ.get(variable, "").strip()
    if not spec:
        return frozenset()
    try:
        fault_rank, steps = spec.split(":", 1)
        parsed = frozenset(int(step) for step in steps.split(","))
        return parsed if int(fault_rank) == rank else frozenset()
    except ValueError:
        raise ValueError(f"{variable}={spec!r}: expected RANK:STEP[,STEP...]") from None


def _held(param: nn.Parameter) -> torch.Tensor:
    """What this rank holds of a weight: its ZeRO-3 partition, or the whole weight."""
    return getattr(param, "ds_tensor", param.data)


def poison_a_weight(model: nn.Module) -> None:
    """Set the first element this rank holds of the model's weights to NaN."""
    held = next(_held(p) for p in model.parameters() if _held(p).numel())
    with torch.no_grad():
        held.view(-1)[0] = float("nan")


def kill_self() -> None:
    """Die the way a preempted or OOM-killed process does: no cleanup, no exception."""
    os.kill(os.getpid(), signal.SIGKILL)


class NonFiniteGuard:
    """Watches the loss and every local gradient of an optimizer step; :meth:`decide` agrees with
    the other ranks whether all were finite, and the wrapped optimizer skips its update when not.

    Checking each rank's local (pre-reduction) gradients finds a non-finite value wherever ZeRO
    puts the reduced partition, and agreeing through an all-reduce makes every rank skip alike.
    A skipped step leaves the weights and optimizer state untouched; it still counts as a step of
    the plan (its batch is consumed and the LR schedule moves on).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        watch_gradients: bool,
        inject_steps: frozenset[int],
    ) -> None:
        """``watch_gradients`` False leaves gradients to fp16 loss scaling, which skips overflowing
        steps itself (and overflows by design while it calibrates); the loss is still watched."""
        self.inject_steps = inject_steps
        self.skip = False
        self._bad: torch.Tensor | None = None
        self._inject_now = False
        params = [p for p in model.parameters() if p.requires_grad]
        for index, param in enumerate(params):
            if watch_gradients or (index == 0 and inject_steps):
                param.register_hook(self._hook(first=index == 0, watch=watch_gradients))
        step = optimizer.step

        def guarded_step(_optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
            # ZeRO may call the optimizer once per parameter sub-group; all are skipped alike.
            return None if self.skip else step(*args, **kwargs)

        # A bound method, as torch's LR schedulers expect to find when they wrap it in turn.
        optimizer.step = types.MethodType(guarded_step, optimizer)

    def _hook(self, *, first: bool, watch: bool) -> Callable[[torch.Tensor], torch.Tensor]:
        def hook(grad: torch.Tensor) -> torch.Tensor:
            if first and self._inject_now:
                self._inject_now = False
                grad = grad.clone()
                grad.view(-1)[0] = float("inf")
            if watch:
                self._note(torch.isfinite(grad).all())
            return grad

        return hook

    def _note(self, finite: torch.Tensor) -> None:
        bad = ~finite
        self._bad = bad if self._bad is None else self._bad | bad

    def begin_step(self, step: int) -> None:
        """Start watching optimizer step ``step`` (1-based)."""
        self._bad = None
        self.skip = False
        self._inject_now = step in self.inject_steps

    def observe_loss(self, loss: torch.Tensor) -> None:
        self._note(torch.isfinite(loss.detach()).all())

    def decide(self, device: torch.device) -> bool:
        """Whether this step's update is applied; collective, call on every rank before the
        optimizer step."""
        local = 0.0 if self._bad is None else float(self._bad.item())
        flag = torch.tensor([local], dtype=torch.float32, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self.skip = bool(flag.item())
        return not self.skip
