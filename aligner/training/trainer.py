"""The training loop on a DeepSpeed engine: global-batch token-mean loss, evaluation, saving."""

from __future__ import annotations

import itertools
import math
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import datasets
import deepspeed
import numpy as np
import torch
import torch.distributed as dist
from safetensors import SafetensorError
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from aligner.config import TrainConfig
from aligner.constants import IGNORE_INDEX
from aligner.datasets.collate import Batch, PackedBatch, PaddingCollator
from aligner.loss import TokenLoss
from aligner.prompts import Template
from aligner.runtime import Runtime
from aligner.training.batching import global_batches, split_evenly
from aligner.training.checkpoints import (
    CheckpointManager,
    TrainState,
    WriteError,
    data_fingerprint,
    what_is_kept,
    write_failure,
    write_run_file,
)
from aligner.training.ds_config import get_deepspeed_train_config
from aligner.training.export import save_model
from aligner.training.faults import (
    NonFiniteGuard,
    NonFiniteWeights,
    TooManySkippedSteps,
    weights_are_finite,
)
from aligner.training.hooks import TestHooks
from aligner.training.layout import BatchLayout, real_tokens
from aligner.training.model import load_model_to_train
from aligner.training.optim import build_optimizer, build_scheduler
from aligner.training.tracking import Tracker


@dataclass(frozen=True)
class Phase:
    """A run of epochs over one dataset: the identity warm-up, then the corrections."""

    name: str
    dataset: datasets.Dataset
    epochs: int


@dataclass(frozen=True)
class PlannedStep:
    phase: Phase
    epoch: int
    index: int  # of this global batch within its epoch
    batches_in_epoch: int
    batch: np.ndarray  # the global batch's sample indices into phase.dataset

    @property
    def ends_epoch(self) -> bool:
        return self.index == self.batches_in_epoch - 1

    @property
    def epoch_progress(self) -> float:
        """Epochs of this phase completed after this step (fractional)."""
        return self.epoch + (self.index + 1) / self.batches_in_epoch


class Trainer:
    """Builds the engine from the arguments, then trains, evaluates and saves."""

    def __init__(
        self,
        config: TrainConfig,
        runtime: Runtime,
        tokenizer: PreTrainedTokenizerBase,
        template: Template,
        train_dataset: datasets.Dataset,
        eval_dataset: datasets.Dataset | None,
        warmup_dataset: datasets.Dataset | None = None,
        *,
        hooks: TestHooks | None = None,
    ) -> None:
        """``hooks`` default to those this process's environment sets (none, in a real run)."""
        self.config = config
        self.rt = runtime
        self.hooks = TestHooks.from_env(runtime.rank) if hooks is None else hooks
        self.tokenizer = tokenizer
        self.template = template
        self.train_dataset = train_dataset
        self.eval_dataset = eval_dataset
        self.collate = PaddingCollator(pad_token_id=tokenizer.pad_token_id)
        # The identity warm-up (copying the answer) runs once, before the correction epochs.
        self.phases = [Phase("correction", train_dataset, config.optim.epochs)]
        if warmup_dataset is not None:
            self.phases.insert(0, Phase("warmup", warmup_dataset, 1))
        self.lengths = {p.name: np.asarray(p.dataset["length"]) for p in self.phases}
        self.layout = BatchLayout.from_flags(
            config.layout,
            world_size=runtime.world_size,
            rank=runtime.rank,
            pad_token_id=tokenizer.pad_token_id,
        )
        self.global_batch_size = self.layout.global_batch_size
        self.total_steps = self._count_steps()
        self.ds_config = get_deepspeed_train_config(
            micro_batch_size_per_gpu=config.layout.per_device_train_batch_size,
            gradient_accumulation_steps=config.layout.gradient_accumulation_steps,
            world_size=runtime.world_size,
            stage=config.dist.zero_stage,
            offload=config.dist.offload,
            precision=runtime.precision,
            max_grad_norm=config.optim.max_grad_norm,
            on_cpu=runtime.on_cpu,
            overrides=config.deepspeed_overrides,
        )
        self.engine = self._build_engine()
        self.checkpoints = CheckpointManager(
            config.output.output_dir,
            rank=runtime.rank,
            device=runtime.device,
            keep=config.output.save_total_limit,
            plan=self._resume_plan(),
        )
        folder = self.checkpoints.find(config.output.resume_from_checkpoint)
        self.resumed = folder is not None
        self.state = self._resume(folder) if self.resumed else self._start()
        self.tracker = self._build_tracker() if runtime.rank == 0 else None
        if self.tracker is not None:
            self.state = replace(self.state, tracker_run_id=self.tracker.run_id)

    # ---- setup -------------------------------------------------------------------------------

    def _count_steps(self) -> int:
        """The optimizer steps of every phase's epochs, at most ``--max_steps``."""
        total = sum(
            phase.epochs * math.ceil(len(phase.dataset) / self.global_batch_size)
            for phase in self.phases
        )
        max_steps = self.config.optim.max_steps
        return min(total, max_steps) if max_steps > 0 else total

    def _resume(self, folder: Path) -> TrainState:
        state = self.checkpoints.load(self.engine, folder)
        self._say(f"resuming from {folder} after step {state.step}")
        return state

    def _start(self) -> TrainState:
        """A fresh run's state, in a folder cleared of an earlier run's checkpoints."""
        output = self.config.output
        run_name = output.log_run_name or time.strftime("sft-%Y%m%d-%H%M%S")
        # An earlier run's checkpoints in this folder must never be resumed into this one.
        self.checkpoints.clear()
        if self.rt.rank == 0:
            write_run_file(output.output_dir, run_name)
        return TrainState(step=0, run_name=run_name)

    def _build_engine(self) -> deepspeed.DeepSpeedEngine:
        config = self.config
        if config.dist.zero_stage == 3:
            from transformers.integrations import HfDeepSpeedConfig

            # While this object lives, from_pretrained loads each weight straight into its
            # ZeRO-3 partition instead of materialising the whole model on every rank.
            self._hf_ds_config = HfDeepSpeedConfig(self.ds_config)
        model = load_model_to_train(config, self.rt.dtype, self.rt.local_rank, len(self.tokenizer))
        optimizer = build_optimizer(
            model,
            lr=config.optim.lr,
            weight_decay=config.optim.weight_decay,
            betas=(config.optim.adam_beta1, config.optim.adam_beta2),
            eps=config.optim.adam_epsilon,
            cpu_adam=config.dist.offload in ("optimizer", "all") and not self.rt.on_cpu,
        )
        self.hooks.corrupt_gradients(model)  # before the guard, which must see what it does
        self.guard = NonFiniteGuard(model, optimizer, watch_gradients=self.rt.precision != "fp16")
        engine, *_ = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            lr_scheduler=lambda opt: build_scheduler(
                opt,
                config.optim.lr_scheduler_type,
                total_steps=self.total_steps,
                warmup_ratio=config.optim.lr_warmup_ratio,
            ),
            config=self.ds_config,
            dist_init_required=False,
        )
        return engine

    def _build_tracker(self) -> Tracker:
        config = self.config
        return Tracker(
            config.output.output_dir,
            log_type=config.output.log_type,
            log_dir=config.output.log_dir,
            project=config.output.log_project,
            run_name=self.state.run_name,
            config=config.for_saving(),
            resume_step=self.state.step if self.resumed else None,
            run_id=self.state.tracker_run_id,
        )

    def _resume_plan(self) -> dict[str, int | str | bool]:
        """What a checkpoint's data position and ZeRO partitions depend on: resuming under other
        values would silently train on other batches or fail to load, so they must match."""
        config, rt = self.config, self.rt
        return {
            "world_size": rt.world_size,
            "seed": config.data.seed,
            "per_device_train_batch_size": config.layout.per_device_train_batch_size,
            "gradient_accumulation_steps": config.layout.gradient_accumulation_steps,
            "total_steps": self.total_steps,
            "zero_stage": config.dist.zero_stage,
            "precision": rt.precision,
            "packing": config.layout.packing,
            "packing_max_tokens": config.layout.packing_max_tokens,
            "group_by_length": config.layout.group_by_length,
            "data": data_fingerprint([(p.name, self.lengths[p.name]) for p in self.phases]),
        }

    # ---- batches -----------------------------------------------------------------------------

    def _batch(
        self, dataset: datasets.Dataset, indices: list[int], fallback: int, *, train: bool = False
    ) -> Batch | PackedBatch:
        """Collate ``indices`` (in the training layout when ``train``, else padded); an empty
        slot becomes one fully masked sample (zero loss)."""
        collate = self.layout.collate if train else self.collate
        if indices:
            rows = dataset.select(indices)
            batch = collate(list(rows))
        else:
            # The rank still runs forward and backward so that every collective is matched.
            batch = collate([dataset[fallback]])
            batch["labels"].fill_(IGNORE_INDEX)
        return {key: value.to(self.rt.device) for key, value in batch.items()}

    def _all_reduce(self, values: list[float]) -> list[float]:
        tensor = torch.tensor(values, dtype=torch.float64, device=self.rt.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    # ---- training ----------------------------------------------------------------------------

    def _plan(self) -> Iterator[PlannedStep]:
        """Every optimizer step's global batch, in order."""
        for number, phase in enumerate(self.phases):
            for epoch in range(phase.epochs):
                lengths = self.lengths[phase.name]
                order = self.layout.epoch_order(
                    lengths, self.config.data.seed, epoch, stream=number
                )
                batches = global_batches(order, self.global_batch_size)
                for index, batch in enumerate(batches):
                    yield PlannedStep(phase, epoch, index, len(batches), batch)

    def train(self) -> None:
        config, rt = self.config, self.rt
        self._announce()
        evaluating = self.eval_dataset is not None
        every = (
            config.eval.eval_interval if evaluating and config.eval.eval_strategy == "steps" else 0
        )
        step = self.state.step
        last_eval = self._evaluate(step=0) if evaluating and step == 0 else None
        progress = tqdm(
            total=self.total_steps,
            initial=step,
            desc="train",
            disable=rt.rank != 0,
            dynamic_ncols=True,
        )
        started = time.perf_counter()
        # The data order is a pure function of (seed, step): a resumed run skips what it trained.
        try:
            for planned in itertools.islice(self._plan(), step, None):
                if step >= self.total_steps:
                    break
                self.hooks.before_step(step)
                row = self._train_step(planned, step + 1)
                step += 1
                self.hooks.after_update(step, self.engine.module)
                self._count_skips(row, step)
                self._log(row, step)
                self._stop_after_too_many_skips()
                progress.update()
                progress.set_postfix(
                    loss=f"{row['train_loss']:.4f}",
                    lr=f"{row['lr']:.2e}",
                    tok_s=f"{row['tokens_per_s']:.0f}",
                )
                epoch_eval = config.eval.eval_strategy == "epoch" and planned.ends_epoch
                if evaluating and (epoch_eval or (every and step % every == 0)):
                    last_eval = self._evaluate(step)
                if config.output.save_interval and step % config.output.save_interval == 0:
                    self._save(Path(config.output.output_dir) / f"checkpoint-{step}")
                self.hooks.after_step(step)
                if (
                    config.output.checkpoint_interval
                    and step % config.output.checkpoint_interval == 0
                ):
                    self._checkpoint(planned, row["epoch"])
        finally:
            # Also on the way out, so that an error is printed on a line of its own.
            progress.close()
        if evaluating and last_eval != step:
            self._evaluate(step)
        self._say(f"trained {step} steps in {time.perf_counter() - started:.1f}s")
        self._log_peak_memory(step)
        self._save(Path(config.output.output_dir))
        self.hooks.after_final_save(self._probe_logits)
        if self.tracker is not None:
            self.tracker.close()

    def _announce(self) -> None:
        samples = " + ".join(f"{len(p.dataset)} {p.name}" for p in self.phases)
        self._say(
            f"training on {samples} samples, {self.rt.world_size} rank(s), "
            f"global batch {self.global_batch_size}, {self.total_steps} optimizer steps, "
            f"ZeRO-{self.config.dist.zero_stage}, {self.rt.precision}"
        )

    def _stop_after_too_many_skips(self) -> None:
        limit = self.config.optim.max_consecutive_skips
        if self.state.consecutive_skips >= limit:
            raise TooManySkippedSteps(
                f"{self.state.consecutive_skips} optimizer steps in a row had a non-finite "
                f"loss or gradient (--max_consecutive_skips {limit}); "
                f"stopped, {what_is_kept(self.config.output.output_dir)}"
            )

    def _count_skips(self, row: dict[str, float | str], step: int) -> None:
        state = self.state
        if row["skipped"]:
            state = replace(
                state,
                skipped_steps=state.skipped_steps + 1,
                consecutive_skips=state.consecutive_skips + 1,
            )
            self._say(
                f"step {step}: non-finite loss or gradient, update skipped "
                f"({state.consecutive_skips} in a row, {state.skipped_steps} in all)"
            )
        else:
            state = replace(state, consecutive_skips=0)
        self.state = replace(state, step=step)
        row["skipped_steps"] = state.skipped_steps

    def _train_step(self, planned: PlannedStep, step: int) -> dict[str, float | str]:
        """Train optimizer step ``step`` (1-based) on ``planned``'s global batch."""
        config, rt, engine = self.config, self.rt, self.engine
        started = time.perf_counter()
        dataset, batch = planned.phase.dataset, planned.batch
        slots = self.layout.micro_batches(batch, self.lengths[planned.phase.name])
        micro_batches = [self._batch(dataset, slot, int(batch[0]), train=True) for slot in slots]
        # The loss is a mean over the global batch's target tokens, so count them all first.
        local_targets = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in micro_batches)
        local_tokens = sum(real_tokens(b) for b in micro_batches)
        local_positions = sum(b["input_ids"].numel() for b in micro_batches)
        (global_targets,) = self._all_reduce([local_targets])
        # engine.backward divides by the accumulation steps and the gradient all-reduce averages
        # over ranks; this factor undoes both so the gradient is d(sum of losses)/global_targets.
        scale = rt.world_size * config.layout.gradient_accumulation_steps / global_targets
        lr = engine.get_lr()[0]
        engine.train()
        # Summed on the device and read once per step: no host sync between micro-batches.
        totals = torch.tensor(
            [0.0, 0.0, local_tokens, local_positions], dtype=torch.float64, device=rt.device
        )
        self.guard.begin_step()
        for number, micro in enumerate(micro_batches, start=1):
            # A packed step may hold more micro-batches than the configured accumulation steps:
            # the optimizer steps after the global batch's last one, however many there are.
            boundary = number == len(micro_batches)
            engine.set_gradient_accumulation_boundary(boundary)
            out: TokenLoss = engine(**micro)
            self.guard.observe_loss(out.loss_sum)
            engine.backward(out.loss_sum * scale)
            if boundary:
                # Before the step that applies the update, every rank agrees whether to apply it.
                applied = self.guard.decide(rt.device)
                deepspeed_skips = engine.skipped_steps
            engine.step()
            totals[0] += out.loss_sum.detach()
            totals[1] += out.correct
        dist.all_reduce(totals)
        loss_sum, correct, tokens, positions = totals.tolist()
        if not applied and engine.skipped_steps > deepspeed_skips:
            # DeepSpeed saw the overflow too and held the LR schedule back; a skipped step still
            # moves the schedule on, whichever of the two skipped it.
            engine.lr_scheduler.step()
        seconds = time.perf_counter() - started
        row = {
            "phase": planned.phase.name,
            "epoch": planned.epoch_progress,
            "train_loss": loss_sum / global_targets,
            "train_accuracy": correct / global_targets,
            "lr": lr,
            "target_tokens": int(global_targets),
            "tokens_per_s": tokens / seconds,
            "padding_share": 1 - tokens / positions,
            "step_time": seconds,
            "skipped": int(not applied),
        }
        grad_norm = engine.get_global_grad_norm()
        if grad_norm is not None:
            row["grad_norm"] = float(grad_norm)
        return row

    @torch.no_grad()
    def _evaluate(self, step: int) -> int:
        """Log eval loss and token accuracy; returns ``step``."""
        assert self.eval_dataset is not None
        rt, engine = self.rt, self.engine
        engine.eval()
        loss_sum = correct = targets = 0.0
        batches = split_evenly(
            len(self.eval_dataset),
            self.config.layout.per_device_eval_batch_size,
            rt.world_size,
            rt.rank,
        )
        for indices in batches:
            out: TokenLoss = engine(**self._batch(self.eval_dataset, indices, 0))
            loss_sum += out.loss_sum.item()
            correct += out.correct.item()
            targets += out.tokens.item()
        loss_sum, correct, targets = self._all_reduce([loss_sum, correct, targets])
        row = {"eval_loss": loss_sum / targets, "eval_accuracy": correct / targets}
        self._log(row, step)
        self._say(
            f"eval at step {step}: loss {row['eval_loss']:.4f}, "
            f"token accuracy {row['eval_accuracy']:.3f}"
        )
        return step

    # ---- output ------------------------------------------------------------------------------

    def _refuse_non_finite_weights(self, destination: Path) -> None:
        """Stop the run rather than save NaN or infinite weights to ``destination``. Collective."""
        if weights_are_finite(self.engine.module, self.rt.device):
            return
        raise NonFiniteWeights(
            f"the weights hold NaN or inf after step {self.state.step}: not saved to "
            f"{destination}; {what_is_kept(self.config.output.output_dir)}"
        )

    def _checkpoint(self, planned: PlannedStep, epoch: float) -> None:
        """Save the resumable checkpoint of the step just taken (``self.state.step``)."""
        self._refuse_non_finite_weights(self.checkpoints.folder(self.state.step))
        self.state = replace(self.state, phase=planned.phase.name, epoch=epoch)
        self.checkpoints.save(self.engine, self.state, after_write=self.hooks.during_save)

    def _save(self, directory: Path) -> None:
        self._refuse_non_finite_weights(directory)
        # An evaluation's forward pass can leave ZeRO-3 prefetches of parameters in flight, and
        # gathering one of those for the save fails; this waits for them and releases them all.
        self.engine.empty_partition_cache()
        failure = None
        try:
            save_model(
                self.engine.module.lm,
                directory,
                tokenizer=self.tokenizer,
                template=self.template,
                training_args=self.config.for_saving(),
                fp32_master=self.config.output.save_fp32,
                rank=self.rt.rank,
                merge_adapter=self.config.lora.lora_merge,
                # The original's --save_16bit writes 16-bit weights even from an fp32 run.
                cast_to=torch.bfloat16
                if self.config.output.save_16bit and self.rt.precision == "fp32"
                else None,
            )
        except (OSError, SafetensorError) as error:  # rank 0 writes; a full disk, say
            failure = error
        # The other ranks learn of rank 0's failure here, rather than by a broken collective.
        (failed,) = self._all_reduce([float(failure is not None)])
        if failed:
            reason = "write failed" if failure is None else write_failure(failure, directory)
            raise WriteError(f"{reason}: cannot write the model to {directory}")
        self._say(f"saved model to {directory}")

    @torch.no_grad()
    def _probe_logits(self) -> dict[str, torch.Tensor]:
        """The engine's logits on the first two training samples, with the batch. Collective."""
        self.engine.eval()
        batch = self._batch(self.train_dataset, list(range(min(2, len(self.train_dataset)))), 0)
        logits = self.engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return {**batch, "logits": logits.float().cpu()}

    def _log_peak_memory(self, step: int) -> None:
        """Each rank's peak memory so far: accelerator memory on a GPU, resident memory on CPU."""
        if self.rt.on_cpu:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
        else:
            peak = torch.cuda.max_memory_allocated(self.rt.device)
        mine = torch.tensor([peak / 2**20], dtype=torch.float64, device=self.rt.device)
        peaks = [torch.zeros_like(mine) for _ in range(self.rt.world_size)]
        dist.all_gather(peaks, mine)
        mib = [round(float(p), 1) for p in peaks]
        self._log({"peak_memory_mib": mib}, step)
        kind = "resident" if self.rt.on_cpu else "GPU"
        self._say(f"peak {kind} memory per rank (MiB): {', '.join(f'{m:,.0f}' for m in mib)}")

    def _log(self, row: dict[str, float], step: int) -> None:
        if self.tracker is not None:
            self.tracker.log(row, step)

    def _say(self, message: str) -> None:
        if self.rt.rank == 0:
            tqdm.write(message)
