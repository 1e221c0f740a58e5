"""Benchmark: tokenize + mask throughput of the data pipeline against a naive per-record loop.

Usage:
    python -m benchmarks.data [--records 100000] [--num_proc 1 2] [--templates]

Synthetic correction records of realistic length (median about 400 tokens per sample, a long
tail to 2k) are written to a temporary JSONL file. The pipeline (load, validate, one batched
tokenizer pass with offsets, cache write) is timed end to end from that file; the naive loop is
the original toolkit's approach: per record, tokenize the prompt and then the full text
separately, returning tensors, and mask the prompt's length. ``--templates`` also times the
string template against the tokenizer's chat template on the same records, through the 131k
Tekken tokenizer with its fixture chat template (one process each).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from aligner.datasets.pipeline import build_dataset
from aligner.prompts import get_template
from aligner.tiny import write_llama_tokenizer, write_tekken_tokenizer
from aligner.tokenizer import load_tokenizer
from benchmarks.synthetic import synthetic_records


def naive_loop(records, tokenizer, template, max_length: int) -> None:
    for record in records:
        prompt = template.render(record["question"], record["answer"])
        text = prompt + record["correction"] + tokenizer.eos_token
        input_ids = tokenizer(text, max_length=max_length, truncation=True, return_tensors="pt")[
            "input_ids"
        ][0]
        labels = input_ids.clone()
        prompt_ids = tokenizer(prompt, max_length=max_length, truncation=True, return_tensors="pt")
        labels[: len(prompt_ids["input_ids"][0])] = -100
        torch.is_tensor(labels)


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.data", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--num_proc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--max_length", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--templates", action="store_true", help="also time string against chat rendering"
    )
    return parser.parse_args(argv)


def timed(run: Callable[[], object]) -> tuple[float, object]:
    """Seconds that ``run`` took, and what it returned."""
    start = time.perf_counter()
    result = run()
    return time.perf_counter() - start, result


def measure(args: argparse.Namespace, work: Path) -> tuple[dict, dict, np.ndarray]:
    """Seconds of each pipeline mode and of the naive loop, of each template's rendering (with
    ``--templates``), and the tokens per sample."""
    tokenizer = load_tokenizer(str(write_llama_tokenizer(work / "tokenizer")))
    template = get_template()
    records = synthetic_records(args.records, args.seed)
    data = work / "records.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))

    def pipeline(tokenizer, template, cache: str, num_proc: int = 1) -> Callable[[], object]:
        return lambda: build_dataset(
            [str(data)],
            tokenizer,
            template,
            max_length=args.max_length,
            num_proc=num_proc,
            cache_dir=work / f"cache-{cache}",
        )[0]

    results = {}
    for num_proc in args.num_proc:
        seconds, dataset = timed(pipeline(tokenizer, template, str(num_proc), num_proc))
        results[f"pipeline, num_proc={num_proc}"] = seconds
    lengths = np.asarray(dataset["length"])
    seconds, _ = timed(lambda: naive_loop(records, tokenizer, template, args.max_length))
    results["naive per-record loop"] = seconds
    rendering = {}
    if args.templates:
        tekken = load_tokenizer(str(write_tekken_tokenizer(work / "tekken")))
        for name in ("correction", "chat"):
            seconds, _ = timed(pipeline(tekken, get_template(name), name))
            rendering[f"Tekken, {name} template"] = seconds
    return results, rendering, lengths


def main(argv: list[str] | None = None) -> None:
    args = parse_arguments(argv)
    with tempfile.TemporaryDirectory() as work:
        results, rendering, lengths = measure(args, Path(work))
    print(
        f"{args.records} records; tokens per sample: median {np.median(lengths):.0f}, "
        f"p99 {np.percentile(lengths, 99):.0f}, max {lengths.max()}"
    )
    naive = results["naive per-record loop"]
    for name, seconds in results.items():
        print(
            f"  {name:<24} {args.records / seconds:>10,.0f} records/s  "
            f"({seconds:6.1f} s, {naive / seconds:4.1f}x the naive loop)"
        )
    for name, seconds in rendering.items():
        print(f"  {name:<24} {args.records / seconds:>10,.0f} records/s  ({seconds:6.1f} s)")


if __name__ == "__main__":
    main()
