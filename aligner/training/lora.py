"""LoRA and QLoRA through peft: wrapping the model to train, and merging an adapter's weights.

The adapter is added before ``deepspeed.initialize``, so the optimizer (which takes only
parameters that require gradients) holds the adapter alone. Merging works on a gathered state
dict rather than on the module, so that it also serves ZeRO-3, where no rank holds a whole
weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

ADAPTER_CONFIG_FILE = "adapter_config.json"
ALL_LINEAR = "all-linear"
"""peft's name for every linear layer except the output layer."""
_LORA_A, _LORA_B, _BASE = ".lora_A.default.weight", ".lora_B.default.weight", ".base_layer"
_PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class LoraSettings:
    r: int
    alpha: float
    dropout: float
    target_modules: tuple[str, ...] = (ALL_LINEAR,)


def add_lora(model: nn.Module, settings: LoraSettings, *, quantized: bool = False) -> nn.Module:
    """``model`` as a peft model whose only trainable parameters are the LoRA adapter's."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quantized:
        # Norms and the output layer in fp32, inputs that require grad for checkpointing.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    targets = settings.target_modules
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=ALL_LINEAR if targets == (ALL_LINEAR,) else list(targets),
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as error:  # e.g. a target module name the model does not have
        raise ValueError(f"--lora_target_modules {' '.join(targets)}: {error}") from None


def merge_lora_state(state: dict[str, torch.Tensor], peft_config) -> dict[str, torch.Tensor]:
    """The base model's state dict with every LoRA update ``B @ A x scaling`` folded in.

    ``state`` is a peft model's full state dict (keys under ``base_model.model.``); the result
    has the plain model's keys and loads with ``from_pretrained``.
    """
    r = peft_config.r
    scaling = peft_config.lora_alpha / (r**0.5 if peft_config.use_rslora else r)
    merged: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith((_LORA_A, _LORA_B)):
            continue
        if "lora_" in key:
            raise ValueError(f"--lora_merge: cannot merge {key} (only LoRA on linear layers)")
        name = key.removeprefix(_PEFT_PREFIX).replace(_BASE + ".", ".")
        layer = key.removesuffix(_BASE + ".weight")
        if layer != key and layer + _LORA_A in state:
            delta = state[layer + _LORA_B].float() @ state[layer + _LORA_A].float() * scaling
            if peft_config.fan_in_fan_out:
                delta = delta.T
            value = (value.float() + delta).to(value.dtype)
        merged[name] = value
    return merged
