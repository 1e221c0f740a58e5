"""The GPU check's results as gpu-check.json (a list of rows) and gpu-check.md (tables)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aligner.files import write_atomically

TRAIN_COLUMNS = (
    ("row", "name"),
    ("tokens/s/GPU", "tokens_per_s_per_gpu"),
    ("target tokens/s/GPU", "target_tokens_per_s_per_gpu"),
    ("padding", "padding_share"),
    ("MFU", "mfu"),
    ("MFU, head at targets", "mfu_head_at_targets"),
    ("TFLOP/s/GPU", "tflops_per_gpu"),
    ("peak memory GiB", "peak_memory_gib"),
    ("step s (median)", "step_time_median_s"),
    ("loss first → last", None),
    ("part s", "part_seconds"),
    ("status", "status"),
)
CORRECT_COLUMNS = (
    ("row", "name"),
    ("batch", "batch_size"),
    ("new tokens", "max_new_tokens"),
    ("generated tokens/s", "generated_tokens_per_s"),
    ("1 batch s", "seconds_1_batch"),
    ("3 batches s", "seconds_3_batches"),
    ("status", "status"),
)


def _cell(row: dict[str, Any], key: str | None) -> str:
    if key is None:
        first, last = row.get("loss_first"), row.get("loss_last")
        return "" if first is None else f"{first} → {last}"
    value = row.get(key)
    if value is None:
        return ""
    if key in ("padding_share", "mfu", "mfu_head_at_targets"):
        return f"{value * 100:.3g}%"
    if isinstance(value, float) and value >= 100:
        return f"{value:,.0f}"
    return str(value)


def _table(rows: list[dict[str, Any]], columns: tuple[tuple[str, str | None], ...]) -> list[str]:
    lines = ["| " + " | ".join(title for title, _ in columns) + " |"]
    lines.append("|" + "|".join(" --- " for _ in columns) + "|")
    for row in rows:
        lines.append("| " + " | ".join(_cell(row, key) for _, key in columns) + " |")
    return lines


def render_markdown(
    rows: list[dict[str, Any]], environment: dict[str, Any], summary: dict[str, Any]
) -> str:
    versions = environment.get("versions", {})
    model = environment.get("model", {})
    s = summary
    lines = ["# GPU check", ""]
    if environment:
        cuda = [f"CUDA {environment['cuda']}"] if environment.get("cuda") else []
        installed = [f"{name} {v}" for name, v in versions.items() if v]
        facts = [environment["date"], environment["device"], *cuda]
        lines += [" · ".join([*facts, f"Python {environment['python']}", *installed]), ""]
    if model:
        count = model["parameters"]
        size = f"{count / 1e9:.2f}B" if count >= 1e8 else f"{count / 1e6:.1f}M"
        lines.append(
            f"Model: random-init Llama, {size} parameters (hidden {model['hidden_size']}, "
            f"{model['layers']} layers, vocabulary {model['vocab_size']}), {s['dtype']}."
        )
    lines += [
        f"Training: {s['records']} synthetic correction records, max length {s['max_length']}, "
        f"{s['ranks']} rank(s) x micro-batch {s['micro_batch']} x {s['accumulation']} "
        f"accumulation steps, {s['warmup_steps']} warm-up steps left out, {s['timed_steps']} "
        "timed (rates over the wall time from the end of the last warm-up step to the end of the "
        f"last step). MFU against {s['peak_tflops']:g} TFLOP/s per GPU: (6 x N + 12 x layers x "
        "hidden x sample length) per token, N without the input embedding, LM head counted at "
        "every token (4 x N under LoRA); 'head at targets' counts the LM head only where the "
        "trainer runs it.",
        "",
    ]
    if s["ranks"] == 1:
        lines += [
            "With one rank ZeRO has nothing to partition: the zero2 and zero3 peaks show each "
            "stage's own overhead, not the savings it brings on several GPUs.",
            "",
        ]
    train = [row for row in rows if not row["name"].startswith("correct")]
    measured = [row for row in train if "sample_tokens_median" in row]
    if measured:
        lines += [
            f"Tokens per sample in the timed steps: median {measured[0]['sample_tokens_median']}, "
            f"max {measured[0]['sample_tokens_max']}. Peak memory: the largest rank's peak of "
            "memory allocated by torch on its GPU (resident memory on a CPU).",
            "",
        ]
    if train:
        lines += [*_table(train, TRAIN_COLUMNS), ""]
        for row in train:
            if row.get("flags"):
                lines.append(f"- {row['name']}: `{' '.join(row['flags'])}`")
        lines.append("")
    generation = [row for row in rows if row["name"].startswith("correct")]
    if generation:
        lines.append(
            f"`aligner correct`, greedy, {s['max_new_tokens']} new tokens per record (EOS muted "
            "in the random model, so none stops early); generated tokens/s = the two extra "
            "batches' tokens / (3-batch call - 1-batch call), which subtracts load and start-up."
        )
        lines += ["", *_table(generation, CORRECT_COLUMNS), ""]
    return "\n".join(lines)


def write_report(
    output: Path, rows: list[dict[str, Any]], environment: dict[str, Any], summary: dict[str, Any]
) -> None:
    write_atomically(output / "gpu-check.json", json.dumps(rows, indent=2) + "\n")
    write_atomically(output / "gpu-check.md", render_markdown(rows, environment, summary))
