"""``aligner train``: supervised correction training, on every rank of a launch.

Usage:
    deepspeed --num_gpus 8 --module aligner.commands.train --train_datasets FILE \\
        --model_name_or_path MODEL --output_dir DIR [flags]     # or scripts/sft-correction.sh
    aligner train --train_datasets FILE --model_name_or_path MODEL --output_dir DIR   # 1 process

Everything a user can get wrong is checked before any rank joins the process group; the
exit status is one of ``aligner.errors``' codes (0 done, 1 failed, 2 refused, 130 interrupted).
Test hooks read from the environment are listed in ``aligner.training.hooks``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from aligner.config import ArgumentError, TrainConfig
from aligner.errors import Plan, run_command
from aligner.runtime import training_ranks

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

    from aligner.prompts import Template
    from aligner.runtime import Runtime
    from aligner.training.model import ModelPlan


@dataclass
class PreparedRun:
    """What a run's checks found: where it runs, its tokenizer, template and data."""

    runtime: Runtime
    tokenizer: PreTrainedTokenizerBase
    template: Template
    train: Dataset
    evaluation: Dataset | None
    warmup: Dataset | None


def check_output_and_tracker(config: TrainConfig) -> None:
    """The output folder may be written (or resumed into), and the tracker is reachable."""
    from aligner.training.checkpoints import check_output_dir, find_checkpoint
    from aligner.training.tracking import check_tracker_reachable

    output = config.output
    check_output_dir(
        output.output_dir,
        resume=output.resume_from_checkpoint,
        overwrite=output.overwrite,
        model_name_or_path=config.model.model_name_or_path,
    )
    find_checkpoint(output.output_dir, output.resume_from_checkpoint)  # a PATH must be complete
    check_tracker_reachable(output.log_type)


def as_planned(config: TrainConfig, plan: ModelPlan) -> TrainConfig:
    """``config`` with the attention kernel and LoRA modules the model plan chose, so that every
    rank loads the model as checked, and the saved flags say what was used."""
    lora = config.lora
    if plan.lora_target_modules is not None:
        lora = replace(lora, lora_target_modules=list(plan.lora_target_modules))
    model = replace(config.model, attn_implementation=plan.attn_implementation)
    return replace(config, model=model, lora=lora)


def prepare(config: TrainConfig) -> Plan[TrainConfig, PreparedRun]:
    """Check everything, before any process-group work."""
    from transformers import set_seed

    from aligner.datasets.pipeline import template_for, training_sets, warmup_set
    from aligner.runtime import Runtime
    from aligner.tokenizer import load_tokenizer
    from aligner.training.model import check_model_flags, plan_model

    ranks = training_ranks(config.dist.local_rank)
    check_output_and_tracker(config)
    runtime = Runtime.on_this_machine(ranks, config.precision)
    check_model_flags(config, on_cpu=runtime.on_cpu)
    set_seed(config.data.seed)
    model = config.model
    tokenizer = load_tokenizer(model.model_name_or_path, trust_remote_code=model.trust_remote_code)
    plan = plan_model(config, len(tokenizer))
    config = as_planned(config, plan)
    template = template_for(config.data, tokenizer, model.model_name_or_path)
    train, evaluation, report = training_sets(config.data, tokenizer, template)
    warmup = warmup_set(config.data, tokenizer, template)
    if config.eval.need_eval and evaluation is None:
        raise ArgumentError("--need_eval: no evaluation samples")
    if ranks.is_main:
        print(plan.describe(), flush=True)
        print(
            report.describe(train, evaluation, None if warmup is None else len(warmup)), flush=True
        )
    return Plan(config, PreparedRun(runtime, tokenizer, template, train, evaluation, warmup))


def execute(plan: Plan[TrainConfig, PreparedRun]) -> int:
    """Join the process group, train, and leave it on every rank."""
    import torch.distributed as dist

    from aligner.runtime import join_training_group
    from aligner.training.trainer import Trainer

    run, rt = plan.found, plan.found.runtime
    join_training_group(
        on_cpu=rt.on_cpu, local_rank=rt.local_rank, timeout_s=plan.config.dist.dist_timeout
    )
    try:
        trainer = Trainer(
            plan.config, rt, run.tokenizer, run.template, run.train, run.evaluation, run.warmup
        )
        trainer.train()
        dist.barrier()
    finally:
        # Without this a rank can abort at interpreter exit after a successful run.
        dist.destroy_process_group()
    return 0


def interrupted(plan: Plan[TrainConfig, PreparedRun]) -> str:
    """What Ctrl-C during training prints: what is left to resume from."""
    from aligner.training.checkpoints import what_is_kept

    return f"interrupted; {what_is_kept(plan.config.output.output_dir)}"


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    return run_command(
        "aligner train",
        arguments,
        TrainConfig.parse,
        prepare,
        execute,
        interrupted=interrupted,
    )


if __name__ == "__main__":
    sys.exit(main())
