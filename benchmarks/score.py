"""Benchmark: reward-model scoring throughput (records/s) of a tiny random reward model.

Usage:
    python -m benchmarks.score [--records 128] [--batch_sizes 1 8 32]

Each record is a synthetic (question, answer, correction) of realistic length (see
``benchmarks.synthetic``); scoring it renders, tokenizes and scores both (question, answer)
and (question, correction), exactly as ``aligner eval --reward_model`` does, longest first.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from aligner.inference.pairs import read_pairs
from aligner.inference.reward import load_reward_model
from aligner.inference.scoring import score_chunk
from aligner.tiny import write_tiny_reward_model
from benchmarks.synthetic import synthetic_records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=128)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rows = synthetic_records(args.records, args.seed)
    pairs = read_pairs(rows, "synthetic")
    pairs.sort(key=lambda p: len(p.context) + len(p.answer) + len(p.correction), reverse=True)
    with tempfile.TemporaryDirectory() as work:
        model_dir = write_tiny_reward_model(Path(work) / "reward")
        print("| batch size | records/s | seconds |")
        print("| ---: | ---: | ---: |")
        for batch_size in args.batch_sizes:
            scorer = load_reward_model("--reward_model", str(model_dir), batch_size=batch_size)
            score_chunk({"reward": scorer}, pairs[-batch_size:])  # warm-up, not timed
            start = time.perf_counter()
            score_chunk({"reward": scorer}, pairs)
            seconds = time.perf_counter() - start
            print(f"| {batch_size} | {len(pairs) / seconds:.1f} | {seconds:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
