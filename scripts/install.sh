#!/usr/bin/env bash
# Install aligner into ./.venv (or the active virtual environment).
#   bash scripts/install.sh          the package and its dependencies
#   bash scripts/install.sh --test   the same, plus the test tools
# torch is installed first, pinned, only when it is missing: on a CPU-only machine
# `pip install torch==2.13.0` takes the CPU build; an unpinned torch may pull a multi-GB
# CUDA build. A GPU machine with its own torch keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[[ "${1:-}" == "--test" ]] && extras="[test]"

if [[ -z "${VIRTUAL_ENV:-}" ]]; then
    [[ -x .venv/bin/python ]] || python3 -m venv .venv
    source .venv/bin/activate
fi
python -m pip install --quiet --upgrade pip
python -c "import torch" 2>/dev/null || python -m pip install --quiet "torch==${ALIGNER_TORCH_VERSION:-2.13.0}"
python -m pip install --quiet -e ".${extras}"
python -c "import aligner, torch; print(f'aligner {aligner.__version__} installed (torch {torch.__version__}) in {__import__(\"sys\").prefix}')"
