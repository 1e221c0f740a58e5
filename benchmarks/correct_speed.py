"""Generated tokens per second of `aligner correct` at several batch sizes, start-up subtracted.

Each measurement calls the command itself (``aligner.commands.correct.main``, greedy) twice in
this process: on one batch of records, then on three. Both calls pay the same model load and
set-up, so the two extra batches' generated tokens over the difference in wall time is the
generation rate, output writing included. With the benchmark model's EOS muted (see
``benchmarks.assets.mute_token``) every correction is exactly ``max_new_tokens`` long. A
first call warms the process up (the CUDA context, the kernels, the weights in the page cache).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

RESULT_PREFIX = "CORRECT_SPEED "
BATCHES = 3
"""Batches of the second call; the first has one."""


def timed_correct(
    model: Path, records: list[dict[str, Any]], work: Path, batch_size: int, max_new_tokens: int
) -> float:
    """Seconds one `aligner correct` call takes to correct ``records``."""
    # Here, not at the top: the GPU check's parent and its prepare child import this module
    # for RESULT_PREFIX and need neither torch nor transformers from the command.
    from aligner.commands.correct import main as correct

    name = f"b{batch_size}-n{len(records)}-t{max_new_tokens}"
    source, output = work / f"{name}.input.jsonl", work / f"{name}.jsonl"
    source.write_text("".join(json.dumps(record) + "\n" for record in records))
    output.unlink(missing_ok=True)  # a left-over output would be resumed, not redone
    argv = [
        *("--model_name_or_path", str(model), "--template", "correction"),
        *("--input", str(source), "--output", str(output)),
        *("--batch_size", str(batch_size), "--max_new_tokens", str(max_new_tokens)),
    ]
    started = time.perf_counter()
    code = correct(argv)
    seconds = time.perf_counter() - started
    written = len(output.read_text().splitlines()) if output.is_file() else 0
    if code != 0 or written != len(records):
        raise RuntimeError(f"aligner correct exited {code} with {written}/{len(records)} records")
    return seconds


def measure(
    model: Path,
    records: list[dict[str, Any]],
    work: Path,
    batch_sizes: list[int],
    max_new_tokens: int,
) -> list[dict[str, Any]]:
    """One row per batch size, each printed (``RESULT_PREFIX``) as soon as it is measured."""
    needed = BATCHES * max(batch_sizes)
    if len(records) < needed:
        raise ValueError(f"{len(records)} records; the largest batch size needs {needed}")
    work.mkdir(parents=True, exist_ok=True)
    timed_correct(model, records[: min(batch_sizes)], work, min(batch_sizes), max_new_tokens)
    rows = []
    for size in batch_sizes:
        one = timed_correct(model, records[:size], work, size, max_new_tokens)
        more = timed_correct(model, records[: BATCHES * size], work, size, max_new_tokens)
        generated = (BATCHES - 1) * size * max_new_tokens
        row = {
            "name": f"correct-b{size}",
            "batch_size": size,
            "max_new_tokens": max_new_tokens,
            "seconds_1_batch": round(one, 3),
            "seconds_3_batches": round(more, 3),
            # None: the extra batches took no measurable time beyond the calls' own noise.
            "generated_tokens_per_s": round(generated / (more - one), 1) if more > one else None,
        }
        print(RESULT_PREFIX + json.dumps(row), flush=True)
        rows.append(row)
    return rows
