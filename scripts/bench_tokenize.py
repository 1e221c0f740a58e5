"""Benchmark: tokenize + mask throughput of the data pipeline against a naive per-record loop.

Usage:
    python scripts/bench_tokenize.py [--records 100000] [--num_proc 1 2] [--templates]

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
from pathlib import Path


def naive_loop(records, tokenizer, template, max_length: int) -> None:
    import torch

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--num_proc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--max_length", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--templates", action="store_true", help="also time string against chat rendering"
    )
    args = parser.parse_args()

    import numpy as np

    from aligner.bench.synthetic import synthetic_records
    from aligner.datasets.pipeline import build_dataset
    from aligner.prompts import get_template
    from aligner.tiny import write_llama_tokenizer, write_tekken_tokenizer
    from aligner.tokenizer import load_tokenizer

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        tokenizer = load_tokenizer(str(write_llama_tokenizer(work / "tokenizer")))
        template = get_template()
        records = synthetic_records(args.records, args.seed)
        data = work / "records.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in records))

        results = {}
        for num_proc in args.num_proc:
            start = time.perf_counter()
            dataset, _ = build_dataset(
                [str(data)],
                tokenizer,
                template,
                max_length=args.max_length,
                num_proc=num_proc,
                cache_dir=work / f"cache-{num_proc}",
            )
            results[f"pipeline, num_proc={num_proc}"] = time.perf_counter() - start
        lengths = np.asarray(dataset["length"])
        start = time.perf_counter()
        naive_loop(records, tokenizer, template, args.max_length)
        results["naive per-record loop"] = time.perf_counter() - start
        rendering = {}
        if args.templates:
            tekken = load_tokenizer(str(write_tekken_tokenizer(work / "tekken")))
            for name in ("correction", "chat"):
                start = time.perf_counter()
                build_dataset(
                    [str(data)],
                    tekken,
                    get_template(name),
                    max_length=args.max_length,
                    cache_dir=work / f"cache-{name}",
                )
                rendering[f"Tekken, {name} template"] = time.perf_counter() - start

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
