"""Training throughput benchmark: this project's layouts against a naive loop and TRL's SFTTrainer.

Usage:
    python -m benchmarks.train [--records 64] [--quick] [--skip_memory]
        [--model FOLDER|real] [--modes "aligner padded,trl padded"]
    bash scripts/bench-train.sh [same flags]

Every mode trains the same tiny random Llama (hidden 256, 4 layers, the 32k Llama vocabulary),
or the pretrained model of ``--model`` (``real``: SmolLM2-135M-Instruct, aligner.real_model),
for one epoch over the same synthetic correction records (median ~400 tokens, long tail),
tokenized once by the project's pipeline, in fp32 with AdamW, micro-batches of 4 samples (or a
4 x max_length token budget when packing) and 2 accumulation steps, one process each:

    aligner padded     the trainer (DeepSpeed ZeRO-0), random global batches, length-sorted within
    aligner grouped    the same with --group_by_length
    aligner packed     the same with --packing (padding-free, restarting position_ids)
    naive padded       a plain PyTorch loop like the original toolkit's: random right-padded
                       batches, full-vocabulary logits and the model's own cross-entropy
    trl padded/packed  TRL's SFTTrainer on the same tokenized samples (labels mask the prompt),
                       when trl is installed

``--modes`` runs only the modes named (comma-separated, as above).

"real tokens" are the non-pad tokens a step processes; "target tokens" are those in the loss
(the correction and its EOS); "padding" is pad positions / all positions. Rates skip the first
optimizer step (warm-up) and use wall time between step ends. Then, unless --skip_memory, the
trainer runs a few steps on 2 CPU ranks under ZeRO-0 and ZeRO-3 and each rank's peak resident
memory is printed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from transformers import AutoModelForCausalLM, TrainerCallback

from aligner.constants import IGNORE_INDEX
from aligner.datasets.collate import PaddingCollator
from aligner.datasets.pipeline import build_dataset
from aligner.errors import CommandParser, UserError, run_command
from aligner.prompts import get_template
from aligner.real_model import ensure_model, model_folder
from aligner.tiny import write_tiny_llama
from aligner.tokenizer import load_tokenizer
from aligner.training.batching import global_batches
from aligner.training.layout import BatchLayout
from aligner.training.tracking import read_metrics
from benchmarks.processes import REPO_ROOT, offline_env, run_logged
from benchmarks.synthetic import synthetic_records

MICRO_BATCH = 4
ACCUMULATION = 2
SEED = 0
LEARNING_RATE = 1e-4
MODEL_SHAPE = {"hidden_size": 256, "num_layers": 4, "num_heads": 4, "intermediate_size": 688}
RESULT_PREFIX = "BENCH_RESULT "
MODES = (
    "aligner padded",
    "aligner grouped",
    "aligner packed",
    "naive padded",
    "trl padded",
    "trl packed",
)
REAL_MODEL = "real"


@dataclass
class Measured:
    """What one mode processed in its timed steps, and how long that took."""

    mode: str
    steps: int
    seconds: float
    real_tokens: int
    target_tokens: int
    positions: int  # real tokens + pad positions

    @property
    def real_per_s(self) -> float:
        return self.real_tokens / self.seconds

    @property
    def target_per_s(self) -> float:
        return self.target_tokens / self.seconds

    @property
    def padding_share(self) -> float:
        return 1 - self.real_tokens / self.positions


class StepLog:
    """Token counts at each optimizer step's end; rates are taken from the first step's end."""

    def __init__(self) -> None:
        self.counts = [0, 0, 0]  # real, target, positions since the start
        self.marks: list[tuple[float, list[int]]] = []

    def count(self, input_ids, attention_mask, labels) -> None:
        positions = input_ids.numel()
        real = int(attention_mask.sum()) if attention_mask is not None else positions
        targets = int((labels[..., 1:] != IGNORE_INDEX).sum())
        for slot, value in enumerate((real, targets, positions)):
            self.counts[slot] += value

    def step_end(self) -> None:
        self.marks.append((time.perf_counter(), list(self.counts)))

    def measured(self, mode: str) -> Measured:
        if len(self.marks) < 2:
            raise RuntimeError(f"{mode}: fewer than 2 optimizer steps; use more --records")
        (start, first), (end, last) = self.marks[0], self.marks[-1]
        real, target, positions = (b - a for a, b in zip(first, last, strict=True))
        return Measured(mode, len(self.marks) - 1, end - start, real, target, positions)


# ---- the modes that run inside a child process ---------------------------------------------


def _tokenized(work: Path, model: Path, max_length: int, records: str = "records.jsonl"):
    tokenizer = load_tokenizer(str(model))
    dataset, _ = build_dataset(
        [str(work / records)],
        tokenizer,
        get_template(),
        max_length=max_length,
        cache_dir=work / "cache",
    )
    return tokenizer, dataset


def run_naive(work: Path, model_dir: Path, max_length: int) -> Measured:
    """The original toolkit's loop: random right-padded batches, full logits, mean CE."""
    tokenizer, dataset = _tokenized(work, model_dir, max_length)
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, attn_implementation="sdpa", dtype=torch.float32
    ).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, betas=(0.9, 0.95))
    collate = PaddingCollator(tokenizer.pad_token_id)
    order = torch.randperm(len(dataset)).tolist()
    log = StepLog()
    step_size = MICRO_BATCH * ACCUMULATION
    for start in range(0, len(order), step_size):
        indices = order[start : start + step_size]
        for micro in range(0, len(indices), MICRO_BATCH):
            batch = collate(list(dataset.select(indices[micro : micro + MICRO_BATCH])))
            log.count(batch["input_ids"], batch["attention_mask"], batch["labels"])
            loss = model(**batch, use_cache=False).loss
            (loss / ACCUMULATION).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        log.step_end()
    return log.measured("naive padded")


def run_trl(work: Path, model_dir: Path, max_length: int, packing: bool) -> Measured:
    """TRL's SFTTrainer on the same tokenized samples; packed rows are padding-free (BFD)."""
    # trl is optional (the bench extra): it loads in the TRL modes' child processes alone.
    from trl import SFTConfig, SFTTrainer

    tokenizer, dataset = _tokenized(work, model_dir, max_length)
    log = StepLog()

    class CountingSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, *args: Any, **kwargs: Any):
            log.count(inputs["input_ids"], inputs.get("attention_mask"), inputs["labels"])
            return super().compute_loss(model, inputs, *args, **kwargs)

    class StepEnd(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            log.step_end()

    samples = datasets.Dataset.from_dict(
        {"input_ids": dataset["input_ids"], "labels": dataset["labels"]}
    )
    config = SFTConfig(
        output_dir=str(work / ("trl-packed" if packing else "trl-padded")),
        per_device_train_batch_size=MICRO_BATCH,
        gradient_accumulation_steps=ACCUMULATION,
        num_train_epochs=1,
        learning_rate=LEARNING_RATE,
        lr_scheduler_type="constant",
        adam_beta2=0.95,
        max_grad_norm=1.0,
        max_length=max_length,  # packed: rows of max_length, 4 per micro-batch, flattened
        packing=packing,
        activation_checkpointing=False,  # SFTConfig turns it on by default; the others run without
        bf16=False,  # fp32 like the others, whatever the model's config says
        logging_steps=10**6,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=SEED,
        dataloader_num_workers=0,
    )
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, attn_implementation="sdpa", dtype=torch.float32
    )
    trainer = CountingSFTTrainer(
        model=model,
        args=config,
        train_dataset=samples,
        processing_class=tokenizer,
        callbacks=[StepEnd()],
    )
    trainer.train()
    return log.measured("trl packed" if packing else "trl padded")


# ---- the parent: modes in fresh processes, then the table -----------------------------------


def _run(command: list[str], env: dict[str, str], log: Path) -> str:
    finished = run_logged(command, env, log)
    if finished.returncode != 0:
        tail = finished.tail()
        raise RuntimeError(f"{' '.join(command[:4])} ... failed ({finished.returncode}):\n{tail}")
    return log.read_text()


def _trainer_command(
    work: Path, model: Path, output_dir: Path, max_length: int, *flags: str
) -> list[str]:
    return [
        *("--model_name_or_path", str(model)),
        *("--train_datasets", str(work / "records.jsonl")),
        *("--output_dir", str(output_dir), "--overwrite"),
        *("--data_cache_dir", str(work / "cache")),
        *("--max_length", str(max_length), "--epochs", "1", "--seed", str(SEED)),
        *("--per_device_train_batch_size", str(MICRO_BATCH)),
        *("--gradient_accumulation_steps", str(ACCUMULATION)),
        *("--lr", str(LEARNING_RATE), "--lr_scheduler_type", "constant", "--lr_warmup_ratio", "0"),
        *("--gradient_checkpointing", "False", "--bf16", "False", "--defaults", "aligner"),
        *flags,
    ]


def run_aligner(
    work: Path, model: Path, mode: str, max_length: int, threads: int, *flags: str
) -> Measured:
    """The trainer in one process under ZeRO-0; the counts come from its metrics file."""
    output_dir = work / mode.replace(" ", "-")
    command = [sys.executable, "-m", "aligner.commands.train"]
    command += _trainer_command(work, model, output_dir, max_length, "--zero_stage", "0", *flags)
    _run(command, offline_env(threads), work / f"{output_dir.name}.log")
    rows = [row for row in read_metrics(output_dir / "metrics.jsonl") if "train_loss" in row]
    if len(rows) < 2:
        raise RuntimeError(f"{mode}: fewer than 2 optimizer steps; use more --records")
    timed = rows[1:]
    real = sum(round(row["tokens_per_s"] * row["step_time"]) for row in timed)
    positions = sum(
        round(row["tokens_per_s"] * row["step_time"] / (1 - row["padding_share"])) for row in timed
    )
    return Measured(
        mode,
        steps=len(timed),
        seconds=rows[-1]["time"] - rows[0]["time"],
        real_tokens=real,
        target_tokens=sum(row["target_tokens"] for row in timed),
        positions=positions,
    )


def run_child(work: Path, model: Path, mode: str, max_length: int, threads: int) -> Measured:
    command = [sys.executable, "-m", "benchmarks.train", "--child", mode, "--work", str(work)]
    command += ["--model", str(model), "--max_length", str(max_length)]
    output = _run(command, offline_env(threads), work / f"{mode.replace(' ', '-')}.log")
    line = next(line for line in output.splitlines() if line.startswith(RESULT_PREFIX))
    return Measured(**json.loads(line.removeprefix(RESULT_PREFIX)))


def peak_memory(work: Path, model: Path, stage: int, max_length: int) -> list[float]:
    """Peak resident memory (MiB) of each of 2 CPU ranks running the trainer for 3 steps."""
    output_dir = work / f"zero{stage}-2ranks"
    command = ["bash", str(REPO_ROOT / "scripts" / "sft-correction.sh"), "--num_gpus", "2"]
    command += _trainer_command(work, model, output_dir, max_length, "--zero_stage", str(stage))
    command += ["--max_steps", "3", "--per_device_train_batch_size", "2"]
    env = offline_env(1) | {"PYTHON": sys.executable}
    _run(command, env, work / f"{output_dir.name}.log")
    (row,) = [row for row in read_metrics(output_dir / "metrics.jsonl") if "peak_memory_mib" in row]
    return row["peak_memory_mib"]


def plan_padding(lengths: list[int], world_size: int = 2) -> dict[str, float]:
    """Padding share of one epoch's micro-batches as the trainer would lay them out on
    ``world_size`` ranks (micro-batch 4, 8 accumulation steps): a plan, no training."""
    shares = {}
    for name, flags in {
        "padded": {},
        "grouped": {"group_by_length": True},
        "packed": {"packing": True, "max_tokens": MICRO_BATCH * max(lengths)},
    }.items():
        layouts = [
            BatchLayout(MICRO_BATCH, 8, world_size, r, 0, **flags) for r in range(world_size)
        ]
        real = positions = 0
        sizes = np.asarray(lengths)
        for batch in global_batches(layouts[0].epoch_order(lengths, SEED, 0), 32 * world_size):
            for layout in layouts:
                for micro in filter(None, layout.micro_batches(batch, lengths)):
                    real += sizes[micro].sum()
                    width = (
                        sizes[micro].sum() if layout.packing else sizes[micro].max() * len(micro)
                    )
                    positions += width
        shares[name] = 1 - real / positions
    return shares


def print_table(results: list[Measured], lengths: list[int], model: str) -> None:
    print(
        f"\n{model}, {len(lengths)} records, tokens per sample: median {np.median(lengths):.0f}, "
        f"p90 {np.percentile(lengths, 90):.0f}, max {max(lengths)}"
    )
    trl = [r for r in results if r.mode.startswith("trl")]
    reference = max(trl, key=lambda r: r.target_per_s) if trl else None
    naive = next((r for r in results if r.mode.startswith("naive")), None)
    versus = f"x {reference.mode}" if reference else "x trl (n/a)"
    header = (
        f"{'mode':<16} {'steps':>5} {'real tok/s':>10} {'target tok/s':>12} "
        f"{'padding':>8} {'x naive':>8} {versus:>14}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        ratio = f"{r.target_per_s / reference.target_per_s:.2f}" if reference else "-"
        to_naive = f"{r.target_per_s / naive.target_per_s:.2f}" if naive else "-"
        print(
            f"{r.mode:<16} {r.steps:>5} {r.real_per_s:>10,.0f} {r.target_per_s:>12,.0f} "
            f"{r.padding_share:>8.1%} {to_naive:>8} {ratio:>14}"
        )
    print(
        "real tok/s: non-pad tokens processed per second; target tok/s: loss-bearing tokens "
        "per second; ratios compare target tok/s."
    )


def parse_modes(text: str) -> list[str]:
    """``--modes``: comma-separated mode names, each once, in the order given."""
    modes = [" ".join(part.split()) for part in text.split(",") if part.strip()]
    for mode in modes:
        if mode not in MODES:
            raise UserError(f"--modes: unknown mode {mode!r}; choose from {', '.join(MODES)}")
    if not modes or len(set(modes)) < len(modes):
        raise UserError("--modes: name each mode once, separated by commas")
    return modes


def check_options(args: argparse.Namespace) -> argparse.Namespace:
    """Resolve ``--modes`` and ``--model`` before any work; a bad one is a ``UserError``."""
    trl_installed = importlib.util.find_spec("trl") is not None
    if args.modes is None:
        args.trl_missing = not args.skip_trl and not trl_installed
        skip = args.skip_trl or not trl_installed
        args.modes = [m for m in MODES if not (skip and m.startswith("trl"))]
    else:
        args.modes = parse_modes(args.modes)
        args.trl_missing = False
        asked_trl = any(m.startswith("trl") for m in args.modes)
        if asked_trl and args.skip_trl:
            raise UserError("--modes names a trl mode and --skip_trl leaves TRL out; drop one")
        if asked_trl and not trl_installed:
            raise UserError("--modes: trl is not installed (pip install 'aligner[bench]' or trl)")
    args.build_model = args.model == REAL_MODEL  # built at the start of the run when missing
    if args.build_model:
        args.model = model_folder()
    elif args.model is not None:
        args.model = Path(args.model)
        if not (args.model / "config.json").is_file():
            raise UserError(
                f"--model {args.model}: no config.json there; give a Hugging Face model folder "
                f"or '{REAL_MODEL}'"
            )
    return args


def run_benchmark(args: argparse.Namespace) -> int:
    if args.quick:
        args.records, args.max_length = 32, 256
    with tempfile.TemporaryDirectory(prefix="aligner-bench-") as scratch:
        work = Path(args.work or scratch)
        work.mkdir(parents=True, exist_ok=True)
        if args.model is None:
            model = work / "model"
            write_tiny_llama(model, **MODEL_SHAPE)
            described = "tiny random Llama (hidden {hidden_size}, {num_layers} layers)".format(
                **MODEL_SHAPE
            )
        else:
            model = ensure_model(args.model) if args.build_model else args.model
            described = model.name
        records = synthetic_records(args.records, seed=SEED)
        (work / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        _, dataset = _tokenized(work, model, args.max_length)
        common = (args.max_length, args.threads)
        aligner_flags = {"padded": (), "grouped": ("--group_by_length",), "packed": ("--packing",)}
        results = []
        for mode in args.modes:
            family, layout = mode.split()
            if family == "aligner":
                results.append(run_aligner(work, model, mode, *common, *aligner_flags[layout]))
            else:
                results.append(run_child(work, model, mode, *common))
            print(f"measured {results[-1].mode}", flush=True)
        print_table(results, dataset["length"], described)
        if args.trl_missing:
            print("TRL's SFTTrainer: not measured (pip install 'aligner[bench]' or trl)")
        if args.plan_records:
            records = synthetic_records(args.plan_records, seed=SEED + 1)
            (work / "plan.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
            _, planned = _tokenized(work, model, args.max_length, "plan.jsonl")
            shares = plan_padding(planned["length"])
            print(
                f"\npadding share of one epoch over {len(planned)} records, 2 ranks x 8 "
                "micro-batches of 4 (the trainer's layout, no training): "
                + ", ".join(f"{name} {share:.1%}" for name, share in shares.items())
            )
        if not args.skip_memory:
            print("\npeak resident memory per rank, 2 CPU ranks, 3 steps of the trainer:")
            for stage in (0, 3):
                ranks = peak_memory(work, model, stage, args.max_length)
                print(
                    f"  ZeRO-{stage}: "
                    + ", ".join(f"rank {i} {m:,.0f} MiB" for i, m in enumerate(ranks))
                )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(prog="bench-train", description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=64)
    parser.add_argument("--max_length", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run (32 records)")
    parser.add_argument("--skip_trl", action="store_true", help="leave out TRL's SFTTrainer")
    parser.add_argument("--skip_memory", action="store_true", help="leave out the 2-rank runs")
    parser.add_argument(
        "--model",
        default=None,
        help="a pretrained Hugging Face model folder to train instead of the tiny random Llama; "
        f"'{REAL_MODEL}': SmolLM2-135M-Instruct, built once into the model cache",
    )
    parser.add_argument(
        "--modes",
        default=None,
        help=f"comma-separated modes to run (default: all): {', '.join(MODES)}",
    )
    parser.add_argument(
        "--plan_records",
        type=int,
        default=4096,
        help="records of the padding-share plan at a realistic dataset size (0: skip)",
    )
    parser.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        work, model = Path(args.work), Path(args.model)
        if args.child == "naive padded":
            result = run_naive(work, model, args.max_length)
        else:
            result = run_trl(work, model, args.max_length, packing=args.child == "trl packed")
        print(RESULT_PREFIX + json.dumps(asdict(result)), flush=True)
        return 0
    return run_command("bench-train", argv, parser.parse_args, check_options, run_benchmark)


if __name__ == "__main__":
    sys.exit(main())
