"""The model to train: checked on the meta device first, then loaded with its attention kernel,
maybe quantized, resized and given a LoRA adapter, wrapped in the correction loss."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch

from aligner.config import ArgumentError, TrainConfig
from aligner.loss import CorrectionLM
from aligner.model_files import (
    LOAD_ERRORS,
    MODEL_CONFIG_FILES,
    CheckpointError,
    check_embedding_rows,
    check_source,
    first_sentence,
    load_failure,
)
from aligner.training.lora import (
    LoraSettings,
    add_lora,
    default_target_modules,
    missing_target_modules,
)

EMBEDDING_ROW_MULTIPLE = 64
"""--resize_embeddings rounds the rows up to a multiple of this, as released models do, so that
the LM head's matrix multiplications stay aligned."""


def check_model_flags(config: TrainConfig, on_cpu: bool) -> None:
    """Refuse, in one line, kernel and quantization flags this machine cannot honour."""
    needs = {
        "--attn_implementation flash_attention_2": (
            config.model.attn_implementation == "flash_attention_2",
            "flash_attn",
        ),
        "--use_liger": (config.model.use_liger, "liger_kernel"),
        "--load_in_4bit": (config.lora.load_in_4bit, "bitsandbytes"),
    }
    for flag, (asked, package) in needs.items():
        if not asked:
            continue
        if on_cpu:
            raise ArgumentError(f"{flag} needs a CUDA GPU; this run is on the CPU")
        if importlib.util.find_spec(package) is None:
            raise ArgumentError(f"{flag} needs the {package} package, which is not installed")


@dataclass(frozen=True)
class ModelPlan:
    """What the checked model will be: its class, kernel, embedding rows and LoRA targets."""

    architecture: str
    attn_implementation: str
    embedding_rows: int
    tokenizer_size: int
    lora_target_modules: tuple[str, ...] | None

    @property
    def resizes(self) -> bool:
        return self.tokenizer_size > self.embedding_rows

    def describe(self) -> str:
        rows = f"{self.embedding_rows} embedding rows for {self.tokenizer_size} tokens"
        if self.resizes:
            rows += f", resized to {_rounded_rows(self.tokenizer_size)}"
        lora = ""
        if self.lora_target_modules is not None:
            lora = f", LoRA on {' '.join(self.lora_target_modules)}"
        return f"model: {self.architecture}, attention {self.attn_implementation}, {rows}{lora}"


def _rounded_rows(tokens: int) -> int:
    return -(-tokens // EMBEDDING_ROW_MULTIPLE) * EMBEDDING_ROW_MULTIPLE


def plan_model(config: TrainConfig, tokenizer_size: int) -> ModelPlan:
    """Check the model against the flags and the tokenizer, in one line and before any rank
    trains: builds it on the meta device (no weights, no memory) so that transformers' own
    checks run, instead of failing deep inside loading or the forward pass."""
    from transformers import AutoConfig, AutoModelForCausalLM

    model, lora = config.model, config.lora
    source = f"--model_name_or_path {model.model_name_or_path}"
    remote = {"trust_remote_code": model.trust_remote_code}
    check_source(model.model_name_or_path, "--model_name_or_path")
    try:
        family = AutoConfig.from_pretrained(model.model_name_or_path, **remote)
    except LOAD_ERRORS as error:
        raise ArgumentError(
            load_failure(
                model.model_name_or_path, "--model_name_or_path", error, MODEL_CONFIG_FILES
            )
        ) from None
    try:
        with torch.device("meta"):
            lm = AutoModelForCausalLM.from_config(
                family, attn_implementation=model.attn_implementation, **remote
            )
    except (ValueError, ImportError) as error:
        if model.attn_implementation is None:
            raise ArgumentError(f"{source}: {first_sentence(error)}") from None
        raise ArgumentError(
            f"--attn_implementation {model.attn_implementation}: {first_sentence(error)}; "
            "leave the flag out to use the kernel transformers picks for this model"
        ) from None
    rows = lm.get_input_embeddings().num_embeddings
    if not model.resize_embeddings:
        remedy = "; pass --resize_embeddings to add rows for them"
        check_embedding_rows(source, tokenizer_size, rows, remedy)
    targets = None
    if lora.lora_r > 0:
        targets = tuple(lora.lora_target_modules or default_target_modules(family.model_type))
        missing = missing_target_modules(lm, targets)
        if missing:
            raise ArgumentError(
                f"--lora_target_modules: no module of {type(lm).__name__} is named "
                f"{' or '.join(missing)}"
            )
        if tokenizer_size > rows and not lora.lora_merge:
            raise ArgumentError(
                "--resize_embeddings with LoRA needs --lora_merge: an adapter saved alone "
                "cannot hold the new embedding rows"
            )
    return ModelPlan(
        type(lm).__name__, lm.config._attn_implementation, rows, tokenizer_size, targets
    )


def lora_settings(config: TrainConfig) -> LoraSettings | None:
    if config.lora.lora_r == 0:
        return None
    targets = config.lora.lora_target_modules
    return LoraSettings(
        r=config.lora.lora_r,
        alpha=config.lora.lora_alpha,
        dropout=config.lora.lora_dropout,
        target_modules=tuple(targets) if targets else None,
    )


def load_model_to_train(
    config: TrainConfig, dtype: torch.dtype, local_rank: int, tokenizer_size: int
) -> CorrectionLM:
    """The causal LM of ``config.model.model_name_or_path`` ready for ``deepspeed.initialize``, its
    embeddings grown to ``tokenizer_size`` with ``--resize_embeddings``."""
    from transformers import AutoModelForCausalLM

    extra = {}
    if config.lora.load_in_4bit:
        from transformers import BitsAndBytesConfig

        extra["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        extra["device_map"] = {"": local_rank}  # quantized weights load straight to the GPU
    try:
        lm = AutoModelForCausalLM.from_pretrained(
            config.model.model_name_or_path,
            dtype=dtype,
            trust_remote_code=config.model.trust_remote_code,
            attn_implementation=config.model.attn_implementation,
            **extra,
        )
    except LOAD_ERRORS as error:
        # The config loaded in plan_model; what fails here are the weights themselves.
        name = config.model.model_name_or_path
        raise CheckpointError(
            load_failure(name, "--model_name_or_path", error, MODEL_CONFIG_FILES)
        ) from None
    if config.model.resize_embeddings and tokenizer_size > lm.get_input_embeddings().num_embeddings:
        # New rows start at the mean of the old ones (transformers' default), so the
        # distribution over the known tokens barely moves.
        lm.resize_token_embeddings(tokenizer_size, pad_to_multiple_of=EMBEDDING_ROW_MULTIPLE)
    settings = lora_settings(config)
    if settings is not None:
        lm = add_lora(lm, settings, quantized=config.lora.load_in_4bit)
    model = CorrectionLM(lm, use_liger=config.model.use_liger)
    if config.optim.gradient_checkpointing:
        model.enable_activation_checkpointing()
    return model
