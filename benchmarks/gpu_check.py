"""The GPU check: `aligner train` rows and `aligner correct` speeds, each part under a timeout.

Usage:
    bash scripts/gpu-check.sh [--output DIR] [--only zero2 correct ...]   # one H100 / H200
    bash scripts/gpu-check.sh --cpu_smoke --output DIR                  # tiny shapes, CPU

Parts, each a child process with its own timeout inside one overall budget, so that a hang in
one leaves the others' numbers:

    prepare   a random-init Llama of 1.1B parameters (TinyLlama's shape: hidden 2048, 22 layers,
              32 heads / 4 KV heads, the 32k Llama vocabulary) in bf16, and synthetic correction
              records (median ~400 tokens, tail to 2k); nothing is downloaded
    zero2, zero3, grouped, packed, lora
              one `aligner train` run each (the real data pipeline, batch layout, collator, loss
              and DeepSpeed engine), read back from its metrics.jsonl after warm-up steps
    correct   `aligner correct` on the same model, greedy, at several batch sizes

Results in the output folder: gpu-check.json (a list of rows, each with its ``name``),
gpu-check.md (the same as tables), gpu-check.log (every part's output) and metrics.jsonl (the
training runs' own metrics rows, each tagged with its row's name). See
``benchmarks.train_figures`` for the FLOP count behind MFU and ``benchmarks.correct_speed``
for how generation is timed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from aligner.training.tracking import read_metrics
from benchmarks.correct_speed import RESULT_PREFIX, measure
from benchmarks.processes import REPO_ROOT, Finished, offline_env, run_logged
from benchmarks.report import write_report
from benchmarks.train_figures import (
    PEAK_BF16_TFLOPS,
    ModelCounts,
    planned_batches,
    train_figures,
)

TINYLLAMA_1B = {
    "hidden_size": 2048,
    "num_layers": 22,
    "num_heads": 32,
    "num_kv_heads": 4,
    "intermediate_size": 5632,
    "max_position_embeddings": 2048,
}
TRAIN_ROWS: dict[str, tuple[str, ...]] = {
    "zero2": ("--zero_stage", "2"),
    "zero3": ("--zero_stage", "3"),
    "grouped": ("--zero_stage", "2", "--group_by_length"),
    "packed": ("--zero_stage", "2", "--packing"),
    "lora": ("--zero_stage", "2", "--lora_r", "16"),
}
PART_NAMES = (*TRAIN_ROWS, "correct")
OUTPUT_FILES = ("gpu-check.json", "gpu-check.md", "gpu-check.log", "metrics.jsonl")
WORK_MARKER = ".gpu-check-work"
"""Marks a working folder as the check's own, so that a later check may reuse it."""


@dataclass(frozen=True)
class Settings:
    """Sizes and time limits of one mode of the check."""

    shape: dict[str, int]
    dtype: str  # of the model's weights and of training
    records: int
    max_length: int
    micro_batch: int
    accumulation: int
    warmup_steps: int
    timed_steps: int
    packing_max_tokens: int
    batch_sizes: tuple[int, ...]
    max_new_tokens: int
    budget_s: float
    timeouts_s: dict[str, float]  # prepare, train, zero3, correct: the most each part may take
    floors_s: dict[str, float]  # train, correct: the least time kept back for each later part
    workers: int  # parts run at once: one on a GPU, one per core on a CPU


GPU = Settings(
    shape=TINYLLAMA_1B,
    dtype="bfloat16",
    records=1200,
    max_length=2048,
    micro_batch=8,
    accumulation=4,
    warmup_steps=3,
    timed_steps=30,
    # With sdpa a packed micro-batch pays attention over its whole square; a few samples' worth
    # keeps that waste small.
    packing_max_tokens=4096,
    batch_sizes=(8, 32, 128),
    max_new_tokens=256,
    budget_s=510,
    timeouts_s={"prepare": 150, "train": 150, "zero3": 180, "correct": 240},
    floors_s={"train": 45, "correct": 60},
    workers=1,
)
SMOKE = Settings(
    shape={
        "hidden_size": 64,
        "num_layers": 2,
        "num_heads": 4,
        "num_kv_heads": 2,
        "intermediate_size": 128,
        "max_position_embeddings": 512,
    },
    dtype="float32",
    records=64,
    max_length=512,
    micro_batch=2,
    accumulation=2,
    warmup_steps=1,
    timed_steps=2,
    packing_max_tokens=1024,
    batch_sizes=(2, 4),
    max_new_tokens=16,
    budget_s=600,
    timeouts_s={"prepare": 120, "train": 120, "zero3": 120, "correct": 120},
    floors_s={"train": 10, "correct": 10},
    workers=max(1, min(2, os.cpu_count() or 1)),
)


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="gpu-check", description=__doc__.splitlines()[0], allow_abbrev=False
    )
    parser.add_argument(
        "--output",
        default=os.environ.get("GPU_CHECK_OUTPUT", "output/gpu-check"),
        help="results folder (default: $GPU_CHECK_OUTPUT, else output/gpu-check)",
    )
    parser.add_argument(
        "--work", default=None, help="models, data and runs (default: a temporary folder)"
    )
    parser.add_argument("--cpu_smoke", action="store_true", help="tiny shapes on CPU ranks")
    parser.add_argument(
        "--only", nargs="+", choices=PART_NAMES, default=list(PART_NAMES), help="parts to run"
    )
    parser.add_argument(
        "--ranks", type=int, default=1, help="ranks of each training run (GPUs, or CPU ranks)"
    )
    parser.add_argument(
        "--budget_s", type=float, default=None, help="the whole check's time limit in seconds"
    )
    parser.add_argument(
        "--peak_tflops", type=float, default=None, help="one GPU's dense bf16 peak for MFU"
    )
    parser.add_argument("--part", choices=("prepare", "correct"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ---- the parts that run in child processes ---------------------------------------------------


def prepare(work: Path, settings: Settings, on_gpu: bool) -> None:
    # torch and the model code load here, in the prepare child: the parent starts it without
    # waiting for them, and loads what it needs itself meanwhile (import_figure_modules).
    import torch

    from benchmarks.assets import write_bench_model, write_records

    if on_gpu and not torch.cuda.is_available():
        raise SystemExit("gpu-check: no CUDA device (--cpu_smoke checks the check on CPU)")
    device = "cuda" if on_gpu else "cpu"
    counts = write_bench_model(
        work / "model", settings.shape, dtype=getattr(torch, settings.dtype), device=device
    )
    write_records(work / "records.jsonl", settings.records)
    environment = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "device": torch.cuda.get_device_name() if on_gpu else "cpu",
        "cuda": torch.version.cuda if on_gpu else None,
        "python": sys.version.split()[0],
        "versions": package_versions(),
        "model": counts,
    }
    (work / "environment.json").write_text(json.dumps(environment, indent=2))
    print(json.dumps(environment, indent=2))


def package_versions() -> dict[str, str | None]:
    names = ("torch", "transformers", "deepspeed", "datasets", "peft", "accelerate", "flash-attn")
    found: dict[str, str | None] = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def correct(work: Path, settings: Settings) -> None:
    lines = (work / "records.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    measure(
        work / "model",
        records,
        work / "correct",
        list(settings.batch_sizes),
        settings.max_new_tokens,
    )


# ---- the parent: parts under timeouts, then the report ---------------------------------------


@dataclass
class Check:
    """One run of the check: where it works, how long it has, and the rows it has so far."""

    args: argparse.Namespace
    settings: Settings
    work: Path
    output: Path
    env: dict[str, str]
    deadline: float
    rows: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)  # parts may run at once

    @property
    def on_gpu(self) -> bool:
        return not self.args.cpu_smoke

    def child(self, name: str, command: list[str], timeout_s: float) -> Finished:
        finished = run_logged(command, self.env, self.work / "logs" / f"{name}.log", timeout_s)
        status = "timed out" if finished.timed_out else f"exit {finished.returncode}"
        with self.lock, (self.output / "gpu-check.log").open("a") as log:
            log.write(f"==== {name}: {status} after {finished.seconds:.1f}s\n")
            log.write(finished.log.read_text(errors="replace") + "\n")
        return finished

    def say(self, message: str) -> None:
        with self.lock:  # one whole line at a time, whichever part says it
            print(f"gpu-check: {message}", flush=True)

    def self_command(self, part: str) -> list[str]:
        command = [sys.executable, "-m", "benchmarks.gpu_check", "--part", part]
        command += ["--work", str(self.work)]
        return command + (["--cpu_smoke"] if self.args.cpu_smoke else [])

    def add(self, *rows: dict[str, Any]) -> None:
        """Keep ``rows`` (in the parts' order, however they finished) and rewrite the report."""
        order = [name for part in PART_NAMES for name in row_names(self, part)]
        with self.lock:
            self.rows = sorted([*self.rows, *rows], key=lambda row: order.index(row["name"]))
            write_report(self.output, self.rows, self.environment(), self.summary())

    def environment(self) -> dict[str, Any]:
        path = self.work / "environment.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def summary(self) -> dict[str, Any]:
        s = self.settings
        return {
            "dtype": s.dtype,
            "records": s.records,
            "max_length": s.max_length,
            "ranks": self.args.ranks,
            "micro_batch": s.micro_batch,
            "accumulation": s.accumulation,
            "warmup_steps": s.warmup_steps,
            "timed_steps": s.timed_steps,
            "peak_tflops": self.peak_tflops,
            "batch_sizes": list(s.batch_sizes),
            "max_new_tokens": s.max_new_tokens,
        }

    @property
    def peak_tflops(self) -> float:
        return self.args.peak_tflops or PEAK_BF16_TFLOPS


def failed(finished: Finished) -> str | None:
    """A finished part's status when it did not succeed."""
    if finished.timed_out:
        return f"timed out after {finished.seconds:.0f}s"
    return None if finished.returncode == 0 else f"failed: exit {finished.returncode}"


def packed_attention(on_gpu: bool) -> str:
    """flash-attention's varlen kernel skips the work packing masks out; sdpa computes it."""
    has_flash = importlib.util.find_spec("flash_attn") is not None
    return "flash_attention_2" if on_gpu and has_flash else "sdpa"


def train_argv(check: Check, name: str) -> list[str]:
    s, work = check.settings, check.work
    flags = list(TRAIN_ROWS[name])
    if name == "packed":
        flags += ["--packing_max_tokens", str(s.packing_max_tokens)]
        flags += ["--attn_implementation", packed_attention(check.on_gpu)]
    return [
        *("--model_name_or_path", str(work / "model")),
        *("--train_datasets", str(work / "records.jsonl")),
        *("--output_dir", str(work / "runs" / name), "--overwrite"),
        *("--data_cache_dir", str(work / "cache"), "--max_length", str(s.max_length)),
        *("--epochs", "1", "--max_steps", str(s.warmup_steps + s.timed_steps), "--seed", "0"),
        *("--per_device_train_batch_size", str(s.micro_batch)),
        *("--gradient_accumulation_steps", str(s.accumulation)),
        *("--lr", "1e-5", "--lr_scheduler_type", "constant", "--lr_warmup_ratio", "0"),
        *("--gradient_checkpointing", "False", "--bf16", str(s.dtype == "bfloat16")),
        *("--save_16bit", "True", "--log_type", "none"),
        *flags,
    ]


def train_row(check: Check, name: str, timeout_s: float) -> dict[str, Any]:
    """One `aligner train` run and its figures; its output folder is removed afterwards."""
    argv = train_argv(check, name)
    ranks = check.args.ranks
    if ranks == 1:
        command = [sys.executable, "-m", "aligner.commands.train", *argv]
    else:
        command = ["bash", str(REPO_ROOT / "scripts" / "sft-correction.sh")]
        command += ["--num_gpus", str(ranks), *argv]
    finished = check.child(name, command, timeout_s)
    flags = argv[argv.index("--log_type") + 2 :]  # what sets this row apart from the others
    row = {"name": name, "status": "ok", "part_seconds": round(finished.seconds, 1), "flags": flags}
    run_dir = check.work / "runs" / name
    problem = failed(finished)
    try:
        if problem:
            return {**row, "status": problem, "log_tail": finished.tail()}
        metrics = read_metrics(run_dir / "metrics.jsonl")
        with (check.output / "metrics.jsonl").open("a") as handle:
            handle.writelines(json.dumps({"row": name, **m}) + "\n" for m in metrics)
        counts = ModelCounts.from_dict(check.environment()["model"])
        figures = train_figures(
            metrics,
            planned_batches(argv, ranks),
            counts,
            warmup_steps=check.settings.warmup_steps,
            world_size=ranks,
            frozen="--lora_r" in flags,
            peak_tflops=check.peak_tflops,
        )
        return {**row, **figures}
    except (OSError, ValueError, KeyError) as error:
        return {**row, "status": f"failed: {error}"}
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)  # a 1B run's weights: gigabytes


def correct_rows(check: Check, timeout_s: float) -> list[dict[str, Any]]:
    finished = check.child("correct", check.self_command("correct"), timeout_s)
    measured = {}
    for line in finished.log.read_text(errors="replace").splitlines():
        if line.startswith(RESULT_PREFIX):
            row = json.loads(line.removeprefix(RESULT_PREFIX))
            measured[row["name"]] = {"name": row["name"], "status": "ok", **row}
    rows = []
    for size in check.settings.batch_sizes:
        name = f"correct-b{size}"
        problem = failed(finished) or "failed: no result printed"
        rows.append(measured.get(name) or {"name": name, "status": problem})
    if any(row["status"] != "ok" for row in rows):
        rows[-1]["log_tail"] = finished.tail()
    return rows


def row_names(check: Check, part: str) -> list[str]:
    if part == "correct":
        return [f"correct-b{size}" for size in check.settings.batch_sizes]
    return [part]


def run_part(check: Check, part: str, timeout_s: float) -> list[dict[str, Any]]:
    if part == "correct":
        return correct_rows(check, timeout_s)
    return [train_row(check, part, timeout_s)]


def _kind(part: str) -> str:
    return "correct" if part == "correct" else "train"


def run_chosen(check: Check, chosen: list[str], index: int, blocked: str | None) -> None:
    """Run ``chosen[index]`` with what the budget leaves it: at most its own timeout, less the
    least time each later part needs; list its rows as skipped when it cannot run."""
    timeouts, floors = check.settings.timeouts_s, check.settings.floors_s
    part = chosen[index]
    later = sum(floors[_kind(name)] for name in chosen[index + 1 :]) / check.settings.workers
    timeout_s = min(timeouts.get(part, timeouts[_kind(part)]), check.deadline - time.time() - later)
    skipped = blocked
    if not skipped and timeout_s < floors[_kind(part)]:
        skipped = "no time left in the budget"
    if skipped:
        names = row_names(check, part)
        check.add(*({"name": name, "status": f"skipped: {skipped}"} for name in names))
        return
    check.say(f"{part} (at most {timeout_s:.0f}s)")
    rows = run_part(check, part, timeout_s)
    check.add(*rows)
    check.say(f"{part}: {', '.join(row['status'] for row in rows)}")


def import_figure_modules() -> None:
    """What ``train_figures.planned_batches`` imports: transformers, datasets, the pipeline."""
    import aligner.datasets.pipeline
    import aligner.tokenizer
    import aligner.training.layout  # noqa: F401


def run_parts(check: Check) -> None:
    """prepare, then the chosen parts, ``settings.workers`` at a time."""
    chosen = [name for name in PART_NAMES if name in check.args.only]
    later = sum(check.settings.floors_s[_kind(name)] for name in chosen) / check.settings.workers
    timeout_s = min(check.settings.timeouts_s["prepare"], check.deadline - time.time() - later)
    blocked = "no time left in the budget" if timeout_s <= 0 else None  # why nothing can run
    if not blocked:
        if set(chosen) & set(TRAIN_ROWS):
            # The training rows' figures replay each run's batches through the data pipeline in
            # this process; importing it meanwhile uses what prepare leaves of the machine.
            threading.Thread(target=import_figure_modules, daemon=True).start()
        finished = check.child("prepare", check.self_command("prepare"), timeout_s)
        problem = failed(finished)
        if problem:
            blocked = f"prepare {problem}"
            print(f"gpu-check: {blocked}:\n{finished.tail()}", file=sys.stderr)
    with ThreadPoolExecutor(check.settings.workers) as pool:
        runs = [pool.submit(run_chosen, check, chosen, i, blocked) for i in range(len(chosen))]
        for run in runs:
            run.result()  # re-raises what a part's thread raised


def foreign_files(output: Path, work: Path | None) -> str | None:
    """Why these folders are not the check's to write into, if they are not: the output folder
    must be new, empty or an earlier check's results; the working folder new, empty or an
    earlier check's (its runs are deleted as the check goes)."""
    if output.is_dir():
        names = {path.name for path in output.iterdir()}
        if names and (OUTPUT_FILES[0] not in names or not names <= set(OUTPUT_FILES)):
            return f"--output {output} holds files an earlier gpu check did not write"
    if work is not None and work.is_dir():
        names = {path.name for path in work.iterdir()}
        if names and WORK_MARKER not in names:
            return f"--work {work} holds files an earlier gpu check did not write"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    settings = SMOKE if args.cpu_smoke else GPU
    if args.part:
        work = Path(args.work)
        if args.part == "prepare":
            prepare(work, settings, on_gpu=not args.cpu_smoke)
        else:
            correct(work, settings)
        return 0
    started = time.time()
    output = Path(args.output).resolve()
    problem = foreign_files(output, Path(args.work).resolve() if args.work else None)
    if problem:
        print(f"gpu-check: error: {problem}; choose a new or empty folder", file=sys.stderr)
        return 2
    output.mkdir(parents=True, exist_ok=True)
    for name in OUTPUT_FILES:
        (output / name).unlink(missing_ok=True)  # an earlier check's results
    with tempfile.TemporaryDirectory(prefix="aligner-gpu-check-") as scratch:
        work = Path(args.work or scratch).resolve()
        work.mkdir(parents=True, exist_ok=True)
        (work / WORK_MARKER).touch()
        # One thread per CPU process: more only contend with each other on a small machine.
        threads = 1 if args.cpu_smoke else None
        env = offline_env(
            threads,
            HF_HOME=str(work / "hf"),
            HF_DATASETS_CACHE=str(work / "hf" / "datasets"),
            ALIGNER_CACHE_DIR=str(work / "cache"),
            PYTHON=sys.executable,
        )
        budget = settings.budget_s if args.budget_s is None else args.budget_s
        check = Check(args, settings, work, output, env, started + budget)
        run_parts(check)
    ok = sum(row["status"] == "ok" for row in check.rows)
    print((output / "gpu-check.md").read_text())
    took = time.time() - started
    print(f"gpu-check: {ok}/{len(check.rows)} rows ok in {took:.0f}s; results in {output}")
    return 0 if ok == len(check.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
