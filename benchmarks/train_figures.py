"""Figures of one `aligner train` run: the batches it trained, their FLOPs, tokens/s and MFU.

FLOPs of an optimizer step, with T its real (non-pad) tokens and len each sample's length:

    k x (N_body + N_head) x T  +  12 x layers x hidden x sum(len^2)

N_body is every parameter but the input embedding (a lookup) and the output layer; N_head is
the output layer (counted even when tied to the embedding). k is 6 (forward 2, backward 4) when
every weight trains and 4 under LoRA, whose frozen weights get no weight gradient (the adapters'
own FLOPs are left out). The attention term counts each sample's own square (per-sample
lengths, also under packing), never padding. ``mfu`` counts the output layer at every token, as
is usual; the trainer runs it only where the next token is a target, and
``mfu_head_at_targets`` counts it there alone: the work actually done.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from aligner.prompts import get_template
from aligner.training.batching import global_batches

if TYPE_CHECKING:
    from aligner.config import DataArgs

PEAK_BF16_TFLOPS = 989.0
"""Dense bf16 peak of one H100 or H200 SXM (the vendor's datasheet)."""


@dataclass(frozen=True)
class ModelCounts:
    parameters: int
    embedding: int
    lm_head: int
    tied: bool
    layers: int
    hidden_size: int

    @classmethod
    def from_dict(cls, counts: dict[str, Any]) -> ModelCounts:
        return cls(**{name: counts[name] for name in cls.__dataclass_fields__})

    @property
    def body(self) -> int:
        """Parameters that do matrix work at every token, the output layer aside."""
        return self.parameters - self.embedding - (0 if self.tied else self.lm_head)


def step_flops(
    counts: ModelCounts,
    lengths: list[int],
    head_tokens: int | None = None,
    *,
    frozen: bool = False,
) -> float:
    """FLOPs of one step over samples of ``lengths``, the output layer run at ``head_tokens``
    positions (default: every token)."""
    factor = 4 if frozen else 6
    tokens = sum(lengths)
    head = tokens if head_tokens is None else head_tokens
    attention = 12 * counts.layers * counts.hidden_size * sum(n * n for n in lengths)
    return factor * (counts.body * tokens + counts.lm_head * head) + attention


def planned_batches(train_argv: list[str], world_size: int) -> list[list[int]]:
    """The sample lengths of each global batch of the first epoch that ``aligner train`` run
    with ``train_argv`` on ``world_size`` ranks trains, in order (the data order is a pure
    function of the flags, and the tokenized data comes from the run's cache)."""
    # Here and in sample_lengths, not at the top: these load torch, transformers and datasets,
    # which the GPU check's parent imports in the background (gpu_check.import_figure_modules).
    from aligner.config import TrainConfig
    from aligner.training.layout import BatchLayout

    config = TrainConfig.parse(train_argv)
    lengths, pad_token_id = sample_lengths(config.model.model_name_or_path, config.data)
    layout = BatchLayout.from_flags(
        config.layout, world_size=world_size, rank=0, pad_token_id=pad_token_id
    )
    order = layout.epoch_order(lengths, config.data.seed, 0)
    return [lengths[batch].tolist() for batch in global_batches(order, layout.global_batch_size)]


_LOADED_LENGTHS: dict[str, tuple[Any, int]] = {}


def sample_lengths(model: str, data: DataArgs) -> tuple[Any, int]:
    """The tokenized training samples' lengths and the pad id; runs that differ only in their
    batch layout (the GPU check's rows) share one load."""
    key = f"{model}\n{data!r}"
    if key not in _LOADED_LENGTHS:
        from aligner.datasets.pipeline import training_sets
        from aligner.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(model)
        dataset, _, _ = training_sets(data, tokenizer, get_template(data.prompt_template))
        _LOADED_LENGTHS[key] = np.asarray(dataset["length"]), tokenizer.pad_token_id
    return _LOADED_LENGTHS[key]


def train_figures(
    metrics: list[dict[str, Any]],
    batches: list[list[int]],
    counts: ModelCounts,
    *,
    warmup_steps: int,
    world_size: int,
    frozen: bool = False,
    peak_tflops: float = PEAK_BF16_TFLOPS,
) -> dict[str, Any]:
    """Per-GPU rates and MFU over the steps after ``warmup_steps``, from a run's metrics rows.

    The time is the wall time from the end of the last warm-up step to the end of the last
    step. Each timed step's real tokens must equal its planned batch's: otherwise the FLOPs
    would be counted for samples the run did not train on.
    """
    steps = [row for row in metrics if "train_loss" in row]
    if not 1 <= warmup_steps < len(steps):
        raise ValueError(f"{len(steps)} steps logged; need more than {warmup_steps} warm-up steps")
    timed = steps[warmup_steps:]
    seconds = timed[-1]["time"] - steps[warmup_steps - 1]["time"]
    real = positions = targets = 0.0
    flops = flops_at_targets = 0.0
    for row in timed:
        lengths = batches[row["step"] - 1]
        tokens = round(row["tokens_per_s"] * row["step_time"])
        if tokens != sum(lengths):
            raise ValueError(
                f"step {row['step']}: the run trained {tokens} tokens, its planned batch holds "
                f"{sum(lengths)}"
            )
        real += tokens
        positions += tokens / (1 - row["padding_share"])
        targets += row["target_tokens"]
        flops += step_flops(counts, lengths, frozen=frozen)
        flops_at_targets += step_flops(counts, lengths, row["target_tokens"], frozen=frozen)
    gpu_seconds = seconds * world_size
    samples = sorted(n for row in timed for n in batches[row["step"] - 1])
    peak_memory = [row["peak_memory_mib"] for row in metrics if "peak_memory_mib" in row]
    return {
        "timed_steps": len(timed),
        "timed_seconds": round(seconds, 3),
        "tokens_per_s_per_gpu": round(real / gpu_seconds, 1),
        "target_tokens_per_s_per_gpu": round(targets / gpu_seconds, 1),
        "padding_share": round(1 - real / positions, 4),
        "mfu": _significant(flops / gpu_seconds / (peak_tflops * 1e12)),
        "mfu_head_at_targets": _significant(flops_at_targets / gpu_seconds / (peak_tflops * 1e12)),
        "tflops_per_gpu": _significant(flops / gpu_seconds / 1e12),
        "peak_memory_gib": round(max(peak_memory[-1]) / 1024, 2) if peak_memory else None,
        "step_time_median_s": round(statistics.median(r["step_time"] for r in timed), 4),
        "sample_tokens_median": statistics.median(samples),
        "sample_tokens_max": samples[-1],
        "loss_first": round(steps[0]["train_loss"], 4),
        "loss_last": round(steps[-1]["train_loss"], 4),
    }


def _significant(value: float, digits: int = 4) -> float:
    """``value`` to ``digits`` significant digits (a CPU's MFU is a tiny fraction)."""
    return float(f"{value:.{digits}g}")
