#!/usr/bin/env bash
# Install aligner into ./.venv (or the active virtual environment).
#   bash scripts/install.sh          the package and its dependencies
#   bash scripts/install.sh --test   the same, plus the test tools
#   bash scripts/install.sh --cpu    take torch's CPU-only build (about 200 MB instead of GBs)
# torch is installed first, pinned, only when it is missing, so a machine with its own torch
# (a GPU machine's CUDA build) keeps it. From the public package index `torch==2.13.0` is the
# CUDA build, several GB with its CUDA libraries: on a machine without a GPU, pass --cpu (or set
# ALIGNER_TORCH_INDEX_URL) to take it from PyTorch's CPU wheel index instead.
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
torch_index="${ALIGNER_TORCH_INDEX_URL:-}"
for arg in "$@"; do
	case "${arg}" in
	--test) extras="[test]" ;;
	--cpu) torch_index="${torch_index:-https://download.pytorch.org/whl/cpu}" ;;
	*)
		echo "install.sh: unknown option ${arg} (use --test and/or --cpu)" >&2
		exit 2
		;;
	esac
done

if [[ -z "${VIRTUAL_ENV:-}" ]]; then
	[[ -x .venv/bin/python ]] || python3 -m venv .venv
	source .venv/bin/activate
fi
python -m pip install --quiet --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
	torch_args=("torch==${ALIGNER_TORCH_VERSION:-2.13.0}")
	[[ -n "${torch_index}" ]] && torch_args+=(--index-url "${torch_index}")
	python -m pip install --quiet "${torch_args[@]}"
fi
python -m pip install --quiet -e ".${extras}"
python -c "import aligner, torch; print(f'aligner {aligner.__version__} installed (torch {torch.__version__}) in {__import__(\"sys\").prefix}')"
