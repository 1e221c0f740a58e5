"""Test hooks: the faults and probes the integration tests inject into a training run.

They are read from the environment, so that no user-facing flag exists for them, once per
process into a :class:`TestHooks`, which the trainer calls at fixed points of its loop; with
none of the variables set every call does nothing. ``STEP`` is an optimizer step, counted from 1.

- ``ALIGNER_FAULT_RANK=R`` with ``ALIGNER_FAULT_STEP=S``: rank R raises :class:`InjectedFault`
  once S optimizer steps are done, before the next one (S defaults to 0: before the first).
- ``ALIGNER_FAULT_KILL=RANK:STEP[,STEP...]``: that rank SIGKILLs itself after finishing
  optimizer step STEP (after its evaluation and model save, before its checkpoint).
- ``ALIGNER_FAULT_SAVE=RANK:STEP[,STEP...]``: that rank SIGKILLs itself while saving the
  checkpoint of step STEP, after DeepSpeed wrote its files and before the checkpoint is committed.
- ``ALIGNER_FAULT_INF_GRAD=RANK:STEP[,STEP...]``: that rank's gradient gets an infinite element
  in step STEP.
- ``ALIGNER_FAULT_NAN_WEIGHT=RANK:STEP[,STEP...]``: after step STEP, one of that rank's weights
  becomes NaN, as a silent overflow would make it.
- ``ALIGNER_PROBE_LOGITS=FILE``: after the final save, rank 0 saves the engine's logits on the
  first two training samples (with their ``input_ids`` and ``attention_mask``) to FILE.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from aligner.training.faults import held_part

FAULT_RANK_ENV = "ALIGNER_FAULT_RANK"
FAULT_STEP_ENV = "ALIGNER_FAULT_STEP"
FAULT_KILL_ENV = "ALIGNER_FAULT_KILL"
FAULT_SAVE_ENV = "ALIGNER_FAULT_SAVE"
FAULT_INF_GRAD_ENV = "ALIGNER_FAULT_INF_GRAD"
FAULT_NAN_WEIGHT_ENV = "ALIGNER_FAULT_NAN_WEIGHT"
PROBE_LOGITS_ENV = "ALIGNER_PROBE_LOGITS"


class InjectedFault(RuntimeError):
    """Raised by the ``ALIGNER_FAULT_RANK`` hook."""


def fault_steps(variable: str, rank: int, environ: Mapping[str, str]) -> frozenset[int]:
    """The steps at which the hook ``variable`` fires on ``rank`` (empty when it is unset)."""
    spec = environ.get(variable, "").strip()
    if not spec:
        return frozenset()
    try:
        fault_rank, steps = spec.split(":", 1)
        parsed = frozenset(int(step) for step in steps.split(","))
        return parsed if int(fault_rank) == rank else frozenset()
    except ValueError:
        raise ValueError(f"{variable}={spec!r}: expected RANK:STEP[,STEP...]") from None


def kill_self() -> None:
    """Die the way a preempted or OOM-killed process does: no cleanup, no exception."""
    os.kill(os.getpid(), signal.SIGKILL)


def poison_a_weight(model: nn.Module) -> None:
    """Set the first element this rank holds of the model's weights to NaN."""
    held = next(held_part(p) for p in model.parameters() if held_part(p).numel())
    with torch.no_grad():
        held.view(-1)[0] = float("nan")


@dataclass
class TestHooks:
    """The hooks of one rank (see the module's doc); the default fires none."""

    __test__ = False  # not a test class, whatever pytest makes of the name

    rank: int = 0
    raise_after: int | None = None
    kill_after: frozenset[int] = frozenset()
    kill_while_saving: frozenset[int] = frozenset()
    inf_gradient: frozenset[int] = frozenset()
    nan_weight_after: frozenset[int] = frozenset()
    probe_logits: Path | None = None
    _inf_gradient_now: bool = field(default=False, init=False, repr=False, compare=False)

    @classmethod
    def from_env(cls, rank: int, environ: Mapping[str, str] | None = None) -> TestHooks:
        """The hooks that ``environ`` (default: this process's environment) sets for ``rank``."""
        environ = os.environ if environ is None else environ
        raise_after = None
        if environ.get(FAULT_RANK_ENV) == str(rank):
            raise_after = int(environ.get(FAULT_STEP_ENV, "0"))
        probe = environ.get(PROBE_LOGITS_ENV)
        return cls(
            rank=rank,
            raise_after=raise_after,
            kill_after=fault_steps(FAULT_KILL_ENV, rank, environ),
            kill_while_saving=fault_steps(FAULT_SAVE_ENV, rank, environ),
            inf_gradient=fault_steps(FAULT_INF_GRAD_ENV, rank, environ),
            nan_weight_after=fault_steps(FAULT_NAN_WEIGHT_ENV, rank, environ),
            probe_logits=Path(probe) if probe else None,
        )

    def corrupt_gradients(self, model: nn.Module) -> None:
        """Give the first trainable weight's gradient an infinite element in the
        ``inf_gradient`` steps. Call it before anything else hooks the model's gradients, so
        that they see the infinity."""
        if not self.inf_gradient:
            return
        first = next(p for p in model.parameters() if p.requires_grad)

        def hook(grad: torch.Tensor) -> torch.Tensor:
            if not self._inf_gradient_now:
                return grad
            self._inf_gradient_now = False  # once a step, not once a micro-batch
            grad = grad.clone()
            grad.view(-1)[0] = float("inf")
            return grad

        first.register_hook(hook)

    def before_step(self, done: int) -> None:
        """Before an optimizer step, once ``done`` steps are done."""
        if done == self.raise_after:
            raise InjectedFault(f"rank {self.rank}: injected fault at step {done}")
        self._inf_gradient_now = done + 1 in self.inf_gradient

    def after_update(self, step: int, model: nn.Module) -> None:
        """Right after optimizer step ``step`` changed the weights of ``model``."""
        if step in self.nan_weight_after:
            poison_a_weight(model)

    def after_step(self, step: int) -> None:
        """Once step ``step`` is logged, evaluated and saved, before its checkpoint."""
        if step in self.kill_after:
            kill_self()

    def during_save(self, step: int) -> None:
        """While saving the checkpoint of ``step``: this rank's files written, not committed."""
        if step in self.kill_while_saving:
            kill_self()

    def after_final_save(self, logits: Callable[[], dict[str, torch.Tensor]]) -> None:
        """After the final model is saved. ``logits`` runs the engine on the probe samples and
        is called on every rank (a forward pass is collective under ZeRO-3); rank 0 saves it."""
        if self.probe_logits is None:
            return
        probe = logits()
        if self.rank == 0:
            torch.save(probe, self.probe_logits)
