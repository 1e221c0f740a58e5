"""The model to train: loaded with its attention kernel, maybe quantized and given a LoRA
adapter, wrapped in the correction loss."""

from __future__ import annotations

import argparse
import importlib.util

import torch

from aligner.training.arguments import ArgumentError
from aligner.training.lora import LoraSettings, add_lora
from aligner.training.loss import CorrectionLM


def check_model_flags(args: argparse.Namespace, on_cpu: bool) -> None:
    """Refuse, in one line, kernel and quantization flags this machine cannot honour."""
    needs = {
        "--attn_implementation flash_attention_2": (
            args.attn_implementation == "flash_attention_2",
            "flash_attn",
        ),
        "--use_liger": (args.use_liger, "liger_kernel"),
        "--load_in_4bit": (args.load_in_4bit, "bitsandbytes"),
    }
    for flag, (asked, package) in needs.items():
        if not asked:
            continue
        if on_cpu:
            raise ArgumentError(f"{flag} needs a CUDA GPU; this run is on the CPU")
        if importlib.util.find_spec(package) is None:
            raise ArgumentError(f"{flag} needs the {package} package, which is not installed")


def lora_settings(args: argparse.Namespace) -> LoraSettings | None:
    if args.lora_r == 0:
        return None
    return LoraSettings(
        r=args.lora_r,
        alpha=args.lora_alpha,
        dropout=args.lora_dropout,
        target_modules=tuple(args.lora_target_modules),
    )


def load_model_to_train(
    args: argparse.Namespace, dtype: torch.dtype, local_rank: int
) -> CorrectionLM:
    """The causal LM of ``args.model_name_or_path`` ready for ``deepspeed.initialize``."""
    from transformers import AutoModelForCausalLM

    extra = {}
    if args.load_in_4bit:
        from transformers import BitsAndBytesConfig

        extra["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        extra["device_map"] = {"": local_rank}  # quantized weights load straight to the GPU
    lm = AutoModelForCausalLM.from_pretrained(
        args.model_name_or_path,
        dtype=dtype,
        trust_remote_code=args.trust_remote_code,
        attn_implementation=args.attn_implementation,
        **extra,
    )
    settings = lora_settings(args)
    if settings is not None:
        lm = add_lora(lm, settings, quantized=args.load_in_4bit)
    model = CorrectionLM(lm, use_liger=args.use_liger)
    if args.gradient_checkpointing:
        model.enable_activation_checkpointing()
    return model
