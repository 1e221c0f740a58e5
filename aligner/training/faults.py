"""Numerical faults: skipping an optimizer step whose loss or gradient is not finite, on every rank
alike, and never saving non-finite weights. (The faults the tests inject are in
``aligner.training.hooks``.)
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from aligner.errors import RunFailure


class TooManySkippedSteps(RunFailure):
    """Raised on every rank when the run skipped too many optimizer steps in a row."""


class NonFiniteWeights(RunFailure):
    """Raised on every rank instead of saving weights that hold a NaN or an infinity."""


def weights_are_finite(model: nn.Module, device: torch.device) -> bool:
    """Whether every weight, on every rank, is finite. Collective.

    Each rank checks what it holds: its ZeRO-3 partition, or the whole (replicated) weights
    under ZeRO 0-2, whose fp32 master copies are finite when these are.
    """
    finite = all(bool(torch.isfinite(held_part(param)).all()) for param in model.parameters())
    flag = torch.tensor([0.0 if finite else 1.0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return not flag.item()


def held_part(param: nn.Parameter) -> torch.Tensor:
    """What this rank holds of a weight: its ZeRO-3 partition, or the whole weight."""
    return getattr(param, "ds_tensor", param.data)


class NonFiniteGuard:
    """Watches the loss and every local gradient of an optimizer step; :meth:`decide` agrees with
    the other ranks whether all were finite, and the wrapped optimizer skips its update when not.

    Checking each rank's local (pre-reduction) gradients finds a non-finite value wherever ZeRO
    puts the reduced partition, and agreeing through an all-reduce makes every rank skip alike.
    A skipped step leaves the weights and optimizer state untouched; it still counts as a step of
    the plan (its batch is consumed and the LR schedule moves on).
    """

    def __init__(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, *, watch_gradients: bool
    ) -> None:
        """``watch_gradients`` False leaves gradients to fp16 loss scaling, which skips overflowing
        steps itself (and overflows by design while it calibrates); the loss is still watched."""
        self.skip = False
        self._bad: torch.Tensor | None = None
        if watch_gradients:
            for param in model.parameters():
                if param.requires_grad:
                    param.register_hook(self._watch)
        step = optimizer.step

        def guarded_step(_optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
            # ZeRO may call the optimizer once per parameter sub-group; all are skipped alike.
            return None if self.skip else step(*args, **kwargs)

        # A bound method, as torch's LR schedulers expect to find when they wrap it in turn.
        optimizer.step = types.MethodType(guarded_step, optimizer)

    def _watch(self, grad: torch.Tensor) -> torch.Tensor:
        self._note(torch.isfinite(grad).all())
        return grad

    def _note(self, finite: torch.Tensor) -> None:
        bad = ~finite
        self._bad = bad if self._bad is None else self._bad | bad

    def begin_step(self) -> None:
        """Start watching an optimizer step."""
        self._bad = None
        self.skip = False

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
