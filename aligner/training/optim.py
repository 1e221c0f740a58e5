"""AdamW with the original betas and no weight decay on biases and norms, and its LR schedule."""

from __future__ import annotations

import torch
from torch import nn
from transformers import get_scheduler


def _no_decay(name: str, param: nn.Parameter) -> bool:
    # Under ZeRO-3 a parameter is a flat partition; ds_shape keeps its real shape.
    shape = getattr(param, "ds_shape", param.shape)
    return len(shape) < 2 or "norm" in name.lower() or name.endswith(".bias")


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed matrices, and biases / norm weights / other vectors undecayed."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if _no_decay(name, param) else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]


def build_optimizer(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float,
    cpu_adam: bool,
) -> torch.optim.Optimizer:
    """AdamW; DeepSpeed's CPU Adam when ZeRO offloads the optimizer from a GPU to the host."""
    groups = parameter_groups(model, weight_decay)
    if cpu_adam:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=lr, betas=betas, eps=eps, adamw_mode=True)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)


def warmup_steps(warmup_ratio: float, total_steps: int) -> int:
    return int(warmup_ratio * total_steps)


def build_scheduler(
    optimizer: torch.optim.Optimizer, name: str, *, total_steps: int, warmup_ratio: float
) -> torch.optim.lr_scheduler.LRScheduler:
    """A ``transformers.get_scheduler`` schedule; warmup is ``floor(warmup_ratio x total)`` steps,
    as in the original toolkit (so a one-step run trains at the full learning rate)."""
    return get_scheduler(
        name,
        optimizer,
        num_warmup_steps=warmup_steps(warmup_ratio, total_steps),
        num_training_steps=total_steps,
    )
