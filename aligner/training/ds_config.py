"""The DeepSpeed training config, built by a pure function from the training flags."""

from __future__ import annotations

from typing import Any, Literal

Precision = Literal["bf16", "fp16", "fp32"]
Offload = Literal["none", "parameter", "optimizer", "all"]
OFFLOAD_CHOICES = ("none", "parameter", "optimizer", "all")
PRECISION_CHOICES = ("bf16", "fp16", "fp32")


def get_deepspeed_train_config(
    *,
    micro_batch_size_per_gpu: int,
    gradient_accumulation_steps: int,
    world_size: int,
    stage: int = 3,
    offload: Offload = "none",
    precision: Precision = "bf16",
    max_grad_norm: float = 1.0,
    on_cpu: bool = False,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The config dict for ``deepspeed.initialize``.

    ``overrides`` (a user's ``--deepspeed_config`` file) is merged last, key by key.
    Offloading parameters needs ZeRO-3, the only stage that partitions them. ``on_cpu`` (the
    CPU accelerator) lets an offloaded optimizer be torch's AdamW: its states already live in
    CPU memory, so DeepSpeed's compiled CPU Adam buys nothing there.
    """
    if precision not in PRECISION_CHOICES:
        raise ValueError(f"precision must be one of {', '.join(PRECISION_CHOICES)}")
    check_settings(
        stage=stage,
        offload=offload,
        micro_batch_size_per_gpu=micro_batch_size_per_gpu,
        gradient_accumulation_steps=gradient_accumulation_steps,
        world_size=world_size,
        overrides=overrides,
    )

    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch_size_per_gpu,
        "gradient_accumulation_steps": gradient_accumulation_steps,
        "train_batch_size": micro_batch_size_per_gpu * gradient_accumulation_steps * world_size,
        "gradient_clipping": max_grad_norm,
        "zero_optimization": zero_section(stage, offload),
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {
            "enabled": precision == "fp16",
            "loss_scale_window": 100,
            "initial_scale_power": 16,
        },
        # The trainer logs its own metrics; DeepSpeed's periodic prints would only duplicate them.
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
        "prescale_gradients": False,
    }
    if on_cpu:
        config["zero_force_ds_cpu_optimizer"] = False
    return _merge(config, overrides or {})


def zero_section(stage: int, offload: Offload) -> dict[str, Any]:
    """The ``zero_optimization`` section: the stage, what it offloads, and its buffer sizes."""
    zero: dict[str, Any] = {"stage": stage}
    if offload in ("optimizer", "all"):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if offload in ("parameter", "all"):
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    if stage in (1, 2):
        zero.update(overlap_comm=True, contiguous_gradients=True, reduce_bucket_size=5e8)
    if stage == 3:
        zero.update(
            overlap_comm=True,
            contiguous_gradients=True,
            stage3_param_persistence_threshold=1e4,
            stage3_max_live_parameters=3e7,
            stage3_prefetch_bucket_size=3e7,
            # Gathering the weights at save time is what lets rank 0 write a loadable model.
            stage3_gather_16bit_weights_on_model_save=True,
        )
    return zero


OWNED_SECTIONS = {
    "optimizer": "--lr, --weight_decay, --adam_beta1, --adam_beta2 and --adam_epsilon",
    "scheduler": "--lr_scheduler_type and --lr_warmup_ratio",
}
"""Sections of a DeepSpeed config that the trainer builds from its flags: a config's own would
replace the flags' optimizer or schedule without a word, or (``null``) break DeepSpeed."""


def check_settings(
    *,
    stage: int,
    offload: str,
    micro_batch_size_per_gpu: int,
    gradient_accumulation_steps: int,
    world_size: int,
    overrides: dict[str, Any] | None = None,
) -> None:
    """Refuse, with one line, flags and ``--deepspeed_config`` keys that DeepSpeed would reject
    only once the model and data are loaded, or that disagree with each other."""
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"--zero_stage must be 0, 1, 2 or 3, got {stage}")
    if offload not in OFFLOAD_CHOICES:
        raise ValueError(f"--offload must be one of {', '.join(OFFLOAD_CHOICES)}, got {offload!r}")
    if offload in ("parameter", "all") and stage != 3:
        raise ValueError(f"--offload {offload} needs --zero_stage 3 (got {stage})")
    if offload == "optimizer" and stage == 0:
        raise ValueError(f"--offload optimizer needs --zero_stage 1, 2 or 3 (got {stage})")
    if min(micro_batch_size_per_gpu, gradient_accumulation_steps, world_size) < 1:
        raise ValueError("batch size, accumulation steps and world size must be positive")
    overrides = overrides or {}
    for key, flags in OWNED_SECTIONS.items():
        if key in overrides:
            raise ValueError(
                f'--deepspeed_config: "{key}" is built from {flags}; remove it from the file'
            )
    batch = {
        "train_micro_batch_size_per_gpu": (
            micro_batch_size_per_gpu,
            "--per_device_train_batch_size",
        ),
        "gradient_accumulation_steps": (
            gradient_accumulation_steps,
            "--gradient_accumulation_steps",
        ),
        "train_batch_size": (
            micro_batch_size_per_gpu * gradient_accumulation_steps * world_size,
            "--per_device_train_batch_size x --gradient_accumulation_steps x world size "
            f"{world_size}",
        ),
    }
    for key, (value, flags) in batch.items():
        if key in overrides and overrides[key] != value:
            raise ValueError(
                f'--deepspeed_config: "{key}" is {overrides[key]!r}, but the flags give {value} '
                f"({flags}); set the flags, and leave the batch sizes out of the file"
            )
    zero = overrides.get("zero_optimization", {})
    if not isinstance(zero, dict):
        raise ValueError(f'--deepspeed_config: "zero_optimization" must be an object, got {zero!r}')
    if zero.get("stage", stage) != stage:
        raise ValueError(
            f'--deepspeed_config: "zero_optimization.stage" is {zero["stage"]!r} but --zero_stage '
            f"is {stage}; set the flag, and leave the stage out of the file"
        )


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged
