"""Entry point of correction training: setup -> train -> cleanup, on every rank.

Usage:
    deepspeed --num_gpus 8 --module aligner.training.main --train_datasets FILE \\
        --model_name_or_path MODEL --output_dir DIR [flags]     # or scripts/sft-correction.sh
    aligner train --train_datasets FILE --model_name_or_path MODEL --output_dir DIR   # 1 process

Test hooks read from the environment are listed in ``aligner.training.hooks``.

Exit status: 0 done, 1 failed while training, 2 refused before any work, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

import torch

from aligner.errors import EXIT_FAILED, EXIT_REFUSED, EXIT_SIGINT, report
from aligner.training.arguments import ArgumentError, parse_arguments
from aligner.training.distributed import ensure_process_env, init_process_group
from aligner.training.faults import NonFiniteWeights, TooManySkippedSteps
from aligner.training.resume import (
    ResumeError,
    WriteError,
    check_output_dir,
    find_checkpoint,
)
from aligner.training.tracking import check_tracker_reachable

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

    from aligner.prompts import Template
    from aligner.training.trainer import Runtime


def resolve_precision(args: argparse.Namespace, accelerator: object, rank: int) -> str:
    """bf16, fp16 or fp32, or an ArgumentError when the hardware cannot do what was asked."""
    on_cpu = accelerator.device_name() == "cpu"
    tf32_capable = not on_cpu and torch.cuda.get_device_capability()[0] >= 8
    if args.tf32 and not tf32_capable:
        raise ArgumentError("--tf32 needs an NVIDIA GPU of the Ampere generation or newer")
    if args.tf32 or (args.tf32 is None and tf32_capable):  # None: auto
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if args.fp16:
        if not accelerator.is_fp16_supported():
            raise ArgumentError(f"--fp16: this {accelerator.device_name()} cannot train in fp16")
        return "fp16"
    if args.bf16:
        if not accelerator.is_bf16_supported():
            raise ArgumentError(f"--bf16: this {accelerator.device_name()} cannot train in bf16")
        return "bf16"
    if args.bf16 is None:
        if not on_cpu and accelerator.is_bf16_supported():
            return "bf16"
        if rank == 0:
            print(
                f"precision: fp32 (no bf16-capable GPU found; --bf16 True forces bf16 on "
                f"{accelerator.device_name()})",
                flush=True,
            )
    return "fp32"


def setup(
    args: argparse.Namespace,
) -> tuple[Runtime, PreTrainedTokenizerBase, Template, Dataset, Dataset | None, Dataset | None]:
    """Everything a user can get wrong is checked here, before any process-group work.

    Returns the runtime, tokenizer, template, and the training, evaluation and identity
    warm-up sets (the last two may be None).
    """
    from transformers import set_seed

    from aligner.datasets.arguments import (
        build_datasets_from_args,
        build_warmup_from_args,
        template_from_args,
    )
    from aligner.tokenizer import load_tokenizer
    from aligner.training.model import check_model_flags, plan_model
    from aligner.training.trainer import Runtime

    ensure_process_env()
    check_output_dir(
        args.output_dir,
        resume=args.resume_from_checkpoint,
        overwrite=args.overwrite,
        model_name_or_path=args.model_name_or_path,
    )
    find_checkpoint(args.output_dir, args.resume_from_checkpoint)  # a PATH must be complete
    check_tracker_reachable(args.log_type)
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", max(args.local_rank, 0)))
    precision = resolve_precision(args, accelerator, rank)
    check_model_flags(args, on_cpu=accelerator.device_name() == "cpu")
    set_seed(args.seed)
    try:
        tokenizer = load_tokenizer(
            args.model_name_or_path, trust_remote_code=args.trust_remote_code
        )
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise ArgumentError(
            f"--model_name_or_path {args.model_name_or_path}: {first_line}"
        ) from None
    plan = plan_model(args, len(tokenizer))
    # Every rank loads the model as checked, and the saved arguments say what was used.
    args.attn_implementation = plan.attn_implementation
    if plan.lora_target_modules is not None:
        args.lora_target_modules = list(plan.lora_target_modules)
    if rank == 0:
        print(plan.describe(), flush=True)
    template = template_from_args(args, tokenizer)
    train_dataset, eval_dataset, report = build_datasets_from_args(args, tokenizer, template)
    warmup_dataset = build_warmup_from_args(args, tokenizer, template)
    if args.need_eval and eval_dataset is None:
        raise ArgumentError("--need_eval: no evaluation samples")
    if rank == 0:
        held_out = f", {report.eval_split} held out for evaluation" if report.eval_split else ""
        evaluating = f", {len(eval_dataset)} eval samples" if eval_dataset is not None else ""
        warmup = (
            f", {len(warmup_dataset)} identity warm-up samples"
            if warmup_dataset is not None
            else ""
        )
        print(
            f"data: {len(train_dataset)} training samples{held_out}{evaluating}{warmup}",
            flush=True,
        )
    on_cpu = accelerator.device_name() == "cpu"
    device = torch.device("cpu") if on_cpu else torch.device(accelerator.device_name(local_rank))
    runtime = Runtime(rank, local_rank, world_size, device, precision, on_cpu)
    return runtime, tokenizer, template, train_dataset, eval_dataset, warmup_dataset


def _say_once(command: str, error: BaseException | str, code: int) -> int:
    # Every rank fails the same way; one copy of the message is enough.
    if int(os.environ.get("RANK", "0")) == 0:
        return report(command, error, code)
    return code


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_arguments(sys.argv[1:] if argv is None else argv)
        runtime, tokenizer, template, *data = setup(args)
    except (ValueError, OSError) as error:
        # Flags, records, templates, the output folder, the tracker: nothing was written.
        return _say_once("aligner train", error, EXIT_REFUSED)
    except KeyboardInterrupt:
        return _say_once("aligner train", "interrupted", EXIT_SIGINT)

    import torch.distributed as dist

    from aligner.training.trainer import Trainer

    init_process_group(
        on_cpu=runtime.on_cpu, local_rank=runtime.local_rank, timeout_s=args.dist_timeout
    )
    try:
        Trainer(args, runtime, tokenizer, template, *data).train()
        dist.barrier()
    except ResumeError as error:
        # A checkpoint that does not fit this run, found before any training step.
        return _say_once("aligner train", error, EXIT_REFUSED)
    except (TooManySkippedSteps, NonFiniteWeights, WriteError) as error:
        # Raised on every rank alike (the checks and the skip decisions are collective).
        return _say_once("aligner train", error, EXIT_FAILED)
    except KeyboardInterrupt:
        message = "interrupted; the last complete checkpoint is kept"
        return _say_once("aligner train", message, EXIT_SIGINT)
    except OSError as error:
        # Only the rank that met it knows: it speaks for itself.
        return report("aligner train", error, EXIT_FAILED)
    finally:
        # Without this a rank can abort at interpreter exit after a successful run.
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
