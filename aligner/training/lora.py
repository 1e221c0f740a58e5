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

_LLAMA_LIKE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DEFAULT_TARGET_MODULES: dict[str, tuple[str, ...]] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "gemma3_text": _LLAMA_LIKE,
    # Fused projections: one linear layer computes q, k and v (and gate and up) together.
    "phi3": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
    "gpt_neox": ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
}
"""Per model type, the attention and MLP projections of every decoder block: on these families
the same layers as peft's all-linear, but named, and blind to linear layers outside the blocks
(MoE routers, vision towers) that a new variant of a family may add."""
_LORA_A, _LORA_B, _BASE = ".lora_A.default.weight", ".lora_B.default.weight", ".base_layer"
_PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class LoraSettings:
    r: int
    alpha: float
    dropout: float
    target_modules: tuple[str, ...] | None = None
    """None: the family's DEFAULT_TARGET_MODULES (all-linear for a family not listed)."""


def default_target_modules(model_type: str) -> tuple[str, ...]:
    """The modules that get adapters when --lora_target_modules is not given."""
    return DEFAULT_TARGET_MODULES.get(model_type, (ALL_LINEAR,))


def missing_target_modules(model: nn.Module, targets: tuple[str, ...]) -> list[str]:
    """The names in ``targets`` that match no module of ``model`` (as peft matches: the whole
    dotted name or its last parts)."""
    if targets == (ALL_LINEAR,):
        return []
    names = [name for name, _ in model.named_modules()]
    return [
        target
        for target in targets
        if not any(name == target or name.endswith(f".{target}") for name in names)
    ]


def add_lora(model: nn.Module, settings: LoraSettings, *, quantized: bool = False) -> nn.Module:
    """``model`` as a peft model whose only trainable parameters are the LoRA adapter's."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quantized:
        # Norms and the output layer in fp32, inputs that require grad for checkpointing.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    targets = settings.target_modules or default_target_modules(model.config.model_type)
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
