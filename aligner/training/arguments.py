"""The training flags: the original toolkit's names, their HF-style aliases, and validation."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import SchedulerType

from aligner.datasets.arguments import add_data_arguments, check_data_flags
from aligner.errors import CommandParser
from aligner.flags import add_bool, add_trust_remote_code, bool_or_auto
from aligner.training.ds_config import OFFLOAD_CHOICES
from aligner.training.secrets import redact

ATTN_IMPLEMENTATIONS = ("sdpa", "flash_attention_2", "eager")

SECRET_MARKERS = ("token", "key", "secret", "password")
"""Argument names holding any of these are never written to the output folder."""

FLOAT_RANGES: dict[str, tuple[str, Callable[[float], bool]]] = {
    # An AdamW step moves each weight by about the LR: above 1, one step destroys the model.
    "lr": ("in (0, 1]", lambda x: 0 < x <= 1),
    "lr_warmup_ratio": ("in [0, 1]", lambda x: 0 <= x <= 1),
    "weight_decay": ("at least 0", lambda x: x >= 0),
    "adam_beta1": ("in [0, 1)", lambda x: 0 <= x < 1),
    "adam_beta2": ("in [0, 1)", lambda x: 0 <= x < 1),
    "adam_epsilon": ("above 0", lambda x: x > 0),
    "max_grad_norm": ("at least 0 (0: off)", lambda x: x >= 0),
    "lora_alpha": ("above 0", lambda x: x > 0),
    "lora_dropout": ("in [0, 1)", lambda x: 0 <= x < 1),
}
"""Every float flag's range. Each value must also be finite, in float32 too: inf or nan passes
a comparison like ``lr <= 0`` unnoticed and trains a model of NaN weights, and 1e39 overflows the
optimizer's float32 arithmetic."""
FLOAT32_MAX = 3.4028234663852886e38


class ArgumentError(ValueError):
    """A flag combination the trainer cannot honour; reported as one line."""


DEFAULT_PROFILES: dict[str, dict[str, Any]] = {
    "aligner": {},
    # What the original toolkit's scripts/sft-correction.sh fixes on top of its trainer's own
    # defaults; this project's wrapper applies it, `aligner train` does not.
    "original": {
        "log_type": "wandb",
        "log_project": "Aligner-SFT",
        "tf32": None,
        "save_16bit": True,
    },
}
"""``--defaults``: the neutral defaults of ``aligner train``, or the original script's."""


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="aligner train",
        description="Supervised correction training on DeepSpeed: only the correction and its "
        "EOS carry loss, normalised per target token of the global batch.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    model = parser.add_argument_group("model")
    model.add_argument("--model_name_or_path", required=True, help="HF model folder or hub name")
    add_trust_remote_code(model)
    model.add_argument(
        "--attn_implementation",
        choices=ATTN_IMPLEMENTATIONS,
        default=None,
        help="attention kernel (None: the one transformers picks for the model's family, sdpa "
        "where it supports it, else eager); flash_attention_2 needs the flash-attn package and "
        "a GPU, and is the one that skips the masked work of packed rows",
    )
    add_bool(
        model,
        "--resize_embeddings",
        default=False,
        help="when the tokenizer has more tokens than the model has embedding rows, add rows "
        "(rounded up to a multiple of 64) instead of stopping with an error",
    )
    add_bool(
        model,
        "--use_liger",
        default=False,
        help="compute the LM head and cross-entropy in Liger's fused kernel (liger-kernel, GPU)",
    )
    add_data_arguments(parser)

    layout = parser.add_argument_group("batch layout")
    add_bool(
        layout,
        "--packing",
        default=False,
        help="padding-free packing: concatenate whole samples into micro-batches of at most "
        "--packing_max_tokens tokens; attention never crosses samples",
    )
    layout.add_argument(
        "--packing_max_tokens",
        type=int,
        default=None,
        metavar="TOKENS",
        help="token budget of a packed micro-batch, at least max_length (None: "
        "per_device_train_batch_size x max_length)",
    )
    add_bool(
        layout,
        "--group_by_length",
        default=False,
        help="form global batches of similar lengths (seeded), so padded batches waste little",
    )

    lora = parser.add_argument_group("LoRA")
    lora.add_argument(
        "--lora_r", type=int, default=0, help="LoRA rank; 0 trains every weight instead"
    )
    lora.add_argument("--lora_alpha", type=float, default=16.0, help="LoRA scaling numerator")
    lora.add_argument(
        "--lora_dropout", type=float, default=0.05, help="dropout on the adapters' inputs"
    )
    lora.add_argument(
        "--lora_target_modules",
        nargs="+",
        default=None,
        metavar="NAME",
        help="module names that get adapters, e.g. q_proj v_proj (None: the family's attention "
        "and MLP projections, e.g. qkv_proj o_proj gate_up_proj down_proj for Phi-3; all-linear "
        "for a family without a default); all-linear: every linear layer but the output layer",
    )
    add_bool(
        lora,
        "--lora_merge",
        default=False,
        help="save the base weights with the adapter merged in, instead of the adapter alone",
    )
    add_bool(
        lora,
        "--load_in_4bit",
        default=False,
        help="QLoRA: load the base model in 4-bit NF4 (needs --lora_r, bitsandbytes and a GPU)",
    )

    train = parser.add_argument_group("training")
    train.add_argument("--epochs", "--num_train_epochs", dest="epochs", type=int, default=3)
    train.add_argument(
        "--max_steps", type=int, default=-1, help="stop after this many optimizer steps (-1: off)"
    )
    train.add_argument("--per_device_train_batch_size", type=int, default=4)
    train.add_argument("--per_device_eval_batch_size", type=int, default=4)
    train.add_argument("--gradient_accumulation_steps", type=int, default=8)
    add_bool(
        train,
        "--gradient_checkpointing",
        default=True,
        help="recompute activations in the backward pass to save memory",
    )
    train.add_argument("--lr", "--learning_rate", dest="lr", type=float, default=2e-5)
    train.add_argument(
        "--lr_scheduler_type",
        default="cosine",
        choices=[s.value for s in SchedulerType],
        help="a transformers.get_scheduler name",
    )
    train.add_argument(
        "--lr_warmup_ratio", "--warmup_ratio", dest="lr_warmup_ratio", type=float, default=0.03
    )
    train.add_argument(
        "--weight_decay",
        type=float,
        default=0.0,
        help="AdamW weight decay; never applied to biases and norm weights",
    )
    train.add_argument("--adam_beta1", type=float, default=0.9)
    train.add_argument("--adam_beta2", type=float, default=0.95)
    train.add_argument("--adam_epsilon", type=float, default=1e-8)
    train.add_argument(
        "--max_grad_norm", type=float, default=1.0, help="clip the global gradient norm (0: off)"
    )
    train.add_argument("--seed", type=int, default=42)
    train.add_argument(
        "--max_consecutive_skips",
        type=int,
        default=5,
        help="stop the run (non-zero exit) after this many optimizer steps in a row were skipped "
        "for a non-finite loss or gradient",
    )

    precision = parser.add_argument_group("precision")
    add_bool(
        precision,
        "--bf16",
        default=None,
        help="train in bfloat16 (default: on where the accelerator supports it, else fp32)",
    )
    add_bool(precision, "--fp16", default=False, help="train in float16 with loss scaling")
    precision.add_argument(
        "--tf32",
        type=bool_or_auto,
        nargs="?",
        const=True,
        default=False,
        metavar="BOOL|auto",
        help="allow TF32 matmuls (NVIDIA Ampere or newer); auto: wherever the GPU supports them",
    )

    evaluation = parser.add_argument_group("evaluation")
    add_bool(
        evaluation,
        "--need_eval",
        default=False,
        help="evaluate (needs --eval_datasets or --eval_split_ratio; giving either implies it)",
    )
    evaluation.add_argument("--eval_strategy", choices=("epoch", "steps"), default="epoch")
    evaluation.add_argument(
        "--eval_interval",
        type=int,
        default=1000,
        help="optimizer steps between evaluations with --eval_strategy steps",
    )

    output = parser.add_argument_group("output and tracking")
    output.add_argument(
        "--defaults",
        choices=tuple(DEFAULT_PROFILES),
        default="aligner",
        help="original: the original toolkit's script settings (wandb project Aligner-SFT, TF32 "
        "where supported, a 16-bit save), which scripts/sft-correction.sh applies; any flag "
        "given overrides them",
    )
    output.add_argument("--output_dir", required=True)
    output.add_argument("--log_type", choices=("wandb", "tensorboard", "none"), default="none")
    output.add_argument("--log_dir", default=None, help="tracker files (default: OUTPUT_DIR)")
    output.add_argument("--log_project", default="aligner", help="wandb project")
    output.add_argument("--log_run_name", default=None, help="run name (default: from time)")
    add_bool(
        output,
        "--save_fp32",
        default=False,
        help="save the optimizer's fp32 master weights instead of the weights in the training "
        "precision (bf16/fp16 runs: twice the disk)",
    )
    add_bool(
        output,
        "--save_16bit",
        default=None,
        help="the original toolkit's flag: True saves 16-bit weights (the training precision, "
        "or bf16 when training in fp32), False as --save_fp32; default: the training precision",
    )
    output.add_argument(
        "--save_interval",
        type=int,
        default=0,
        help="also save a model folder every this many optimizer steps (0: only at the end)",
    )
    output.add_argument(
        "--checkpoint_interval",
        type=int,
        default=0,
        help="save a full checkpoint (engine, optimizer, scheduler, RNG, data position) to "
        "OUTPUT_DIR/checkpoints every this many optimizer steps (0: never)",
    )
    output.add_argument(
        "--save_total_limit",
        type=int,
        default=2,
        help="full checkpoints kept; older ones are deleted once a newer one is complete",
    )
    output.add_argument(
        "--resume_from_checkpoint",
        default=None,
        metavar="auto|PATH",
        help="continue from a full checkpoint: auto takes the newest complete one in OUTPUT_DIR "
        "(or starts fresh when there is none)",
    )
    add_bool(
        output,
        "--overwrite",
        default=False,
        help="write into a non-empty OUTPUT_DIR that holds no resumable run, or start an earlier "
        "run over (only files the toolkit wrote are ever deleted)",
    )

    dist = parser.add_argument_group("distributed")
    dist.add_argument("--zero_stage", type=int, choices=(0, 1, 2, 3), default=3)
    dist.add_argument("--offload", choices=OFFLOAD_CHOICES, default="none")
    dist.add_argument("--local_rank", type=int, default=-1, help="set by the deepspeed launcher")
    dist.add_argument(
        "--deepspeed",
        "--deepscale",
        dest="deepspeed",
        action="store_true",
        help="accepted for compatibility; the trainer always runs on DeepSpeed",
    )
    dist.add_argument(
        "--deepspeed_config",
        "--deepscale_config",
        dest="deepspeed_config",
        default=None,
        metavar="JSON",
        help="a DeepSpeed config file whose keys override the built config",
    )
    dist.add_argument(
        "--dist_timeout",
        type=int,
        default=600,
        help="seconds a collective may wait for a rank before the run fails",
    )
    return parser


def validate(args: argparse.Namespace) -> argparse.Namespace:
    """Check flag combinations; raise ArgumentError with one clear line."""
    check_data_flags(args)  # first: the layout's defaults are derived from --max_length
    for name, (allowed, inside) in FLOAT_RANGES.items():
        value = getattr(args, name)
        if not (math.isfinite(value) and abs(value) <= FLOAT32_MAX and inside(value)):
            raise ArgumentError(f"--{name} must be a finite number {allowed}, got {value}")
    positive = ("epochs", "per_device_train_batch_size", "per_device_eval_batch_size")
    for name in (*positive, "gradient_accumulation_steps", "dist_timeout"):
        if getattr(args, name) < 1:
            raise ArgumentError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.max_steps == 0 or args.max_steps < -1:
        raise ArgumentError(f"--max_steps must be positive or -1, got {args.max_steps}")
    if args.bf16 and args.fp16:
        raise ArgumentError("--bf16 and --fp16 are exclusive")
    if args.eval_interval < 1 or args.save_interval < 0:
        raise ArgumentError("--eval_interval must be >= 1 and --save_interval >= 0")
    if args.checkpoint_interval < 0 or args.save_total_limit < 1:
        raise ArgumentError("--checkpoint_interval must be >= 0 and --save_total_limit >= 1")
    if args.max_consecutive_skips < 1:
        raise ArgumentError(
            f"--max_consecutive_skips must be at least 1, got {args.max_consecutive_skips}"
        )
    if args.save_16bit and args.save_fp32:
        raise ArgumentError("--save_16bit True and --save_fp32 are exclusive")
    args.save_fp32 = args.save_fp32 or args.save_16bit is False
    _validate_layout_and_lora(args)
    if args.need_eval and not (args.eval_datasets or args.eval_split_ratio > 0):
        raise ArgumentError("--need_eval needs --eval_datasets or --eval_split_ratio")
    if args.deepspeed_config is not None:
        path = Path(args.deepspeed_config)
        try:
            args.deepspeed_overrides = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ArgumentError(f"--deepspeed_config {path}: {error}") from None
        if not isinstance(args.deepspeed_overrides, dict):
            raise ArgumentError(f"--deepspeed_config {path}: must hold a JSON object")
    else:
        args.deepspeed_overrides = None
    return args


def _validate_layout_and_lora(args: argparse.Namespace) -> None:
    if args.packing_max_tokens is None:
        args.packing_max_tokens = args.per_device_train_batch_size * args.max_length
    if args.packing_max_tokens < args.max_length:
        raise ArgumentError(
            f"--packing_max_tokens {args.packing_max_tokens} must be at least --max_length "
            f"{args.max_length}, so that every sample fits"
        )
    if args.lora_r < 0 or args.lora_alpha <= 0 or not 0 <= args.lora_dropout < 1:
        raise ArgumentError("--lora_r must be >= 0, --lora_alpha > 0, --lora_dropout in [0, 1)")
    if args.lora_r == 0 and (args.lora_merge or args.load_in_4bit):
        raise ArgumentError("--lora_merge and --load_in_4bit need --lora_r > 0")
    if args.lora_merge and args.load_in_4bit:
        raise ArgumentError("--lora_merge cannot merge into 4-bit weights; drop --load_in_4bit")
    if args.load_in_4bit and args.zero_stage == 3:
        raise ArgumentError("--load_in_4bit works with --zero_stage 0, 1 or 2, not 3")


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """Parse and validate; ``--defaults original`` swaps in the original script's defaults, which
    any flag given still overrides."""
    profile = argparse.ArgumentParser(add_help=False)
    profile.add_argument("--defaults", choices=DEFAULT_PROFILES, default="aligner")
    known, _ = profile.parse_known_args(argv)
    parser = build_parser()
    parser.set_defaults(**DEFAULT_PROFILES[known.defaults])
    return validate(parser.parse_args(argv))


def arguments_for_saving(args: argparse.Namespace) -> dict[str, Any]:
    """The arguments as JSON-safe values, without anything that looks like a credential: no
    secret-named argument, and no secret from the environment inside any value."""
    saved: dict[str, Any] = {}
    for name, value in sorted(vars(args).items()):
        if any(marker in name.lower() for marker in SECRET_MARKERS):
            continue
        if value is None or isinstance(value, (bool, int, float, str)):
            saved[name] = value
        elif isinstance(value, (list, tuple)):
            saved[name] = [str(item) for item in value]
        elif isinstance(value, dict):
            saved[name] = json.loads(json.dumps(value, default=str))
        else:
            saved[name] = str(value)
    return redact(saved)
