"""Saving the trained model as a Hugging Face folder, gathering ZeRO-partitioned weights first.

Every rank must call :func:`save_model` (gathering is collective); only rank 0 writes. Files go
to a temporary folder first and ``config.json`` arrives last, so a crash never leaves a folder
that looks like a complete model.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from aligner.files import staged_folder
from aligner.prompts import Template
from aligner.training.lora import ADAPTER_CONFIG_FILE, merge_lora_state

TRAINING_ARGS_FILE = "training_args.json"
CONFIG_FILE = "config.json"
_LAST_FILES = (CONFIG_FILE, ADAPTER_CONFIG_FILE)
"""What makes a folder look like a loadable model (or adapter): written last, removed first."""
_MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")


def gather_state_dict(
    model: nn.Module, *, fp32_master: bool, rank: int, trainable_only: bool = False
) -> dict[str, torch.Tensor]:
    """The full state dict on rank 0 (empty elsewhere), one parameter at a time.

    ``fp32_master`` takes the optimizer's fp32 master weights (exact under bf16/fp16 training);
    otherwise the module's own weights in the training precision. Under ZeRO-3 each parameter
    is gathered in turn, so rank 0 never holds more than the state dict plus one parameter.
    ``trainable_only`` leaves out frozen parameters and buffers (a LoRA adapter's save).
    """
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param

    state: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        if trainable_only and not param.requires_grad:
            continue
        value = safe_get_full_fp32_param(param) if fp32_master else None
        if value is None:
            with deepspeed.zero.GatheredParameters([param], enabled=hasattr(param, "ds_id")):
                value = param.data.detach().clone() if rank == 0 else None
        if rank == 0:
            state[name] = value.to("cpu", torch.float32 if fp32_master else value.dtype)
    persistent = model.state_dict().keys()
    for name, buffer in model.named_buffers():
        if rank == 0 and name in persistent and not trainable_only:
            state[name] = buffer.detach().to("cpu", copy=True)
    return state


def save_model(
    model: PreTrainedModel,
    output_dir: str | Path,
    *,
    tokenizer: PreTrainedTokenizerBase,
    template: Template,
    training_args: dict[str, Any],
    fp32_master: bool,
    rank: int,
    merge_adapter: bool = False,
    cast_to: torch.dtype | None = None,
) -> Path:
    """Write ``model`` with its tokenizer, prompt template and training arguments.

    A peft model is saved as its adapter alone (``adapter_config.json`` naming the base model),
    or with ``merge_adapter`` as the base model's weights with the adapter merged in.
    ``cast_to`` converts the floating-point weights (a 16-bit save of an fp32 run).
    """
    peft = hasattr(model, "peft_config")
    adapter_only = peft and not merge_adapter
    state = gather_state_dict(
        model, fp32_master=fp32_master, rank=rank, trainable_only=adapter_only
    )
    output_dir = Path(output_dir)
    if rank != 0:
        return output_dir
    if peft and merge_adapter:
        state = merge_lora_state(state, model.peft_config["default"])
        model = model.get_base_model()
    if cast_to is not None:
        state = {k: v.to(cast_to) if v.is_floating_point() else v for k, v in state.items()}
    with staged_model_folder(output_dir) as staging:
        model.save_pretrained(staging, state_dict=state)
        _config_says_saved_dtype(model, staging, next(iter(state.values())).dtype)
        tokenizer.save_pretrained(staging)
        template.save(staging)
        (staging / TRAINING_ARGS_FILE).write_text(json.dumps(training_args, indent=2) + "\n")
    return output_dir


def staged_model_folder(output_dir: Path) -> AbstractContextManager[Path]:
    """A temporary folder to save a model into, published into ``output_dir`` when complete:
    an earlier model there stops looking complete first, its weight files go, and the config
    arrives last."""
    return staged_folder(output_dir, last=_LAST_FILES, stale=_MODEL_FILE_SUFFIXES)


def _config_says_saved_dtype(model: PreTrainedModel, folder: Path, dtype: torch.dtype) -> None:
    """Rewrite the folder's config with the dtype its files hold: ``save_pretrained`` writes the
    module's dtype, which fp32 master weights of a bf16 module are not, and ``from_pretrained``
    loads in the config's dtype by default. An adapter's folder has no config to rewrite."""
    if not (folder / CONFIG_FILE).is_file():
        return
    original = model.config.dtype
    model.config.dtype = dtype
    try:
        model.config.save_pretrained(folder)
    finally:
        model.config.dtype = original
