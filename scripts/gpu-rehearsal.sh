#!/usr/bin/env bash
#
# Rehearse the GPU check's installation on this machine: a fresh virtual environment holding
# only what the GPU machine has (torch, transformers, peft, accelerate and the libraries of its
# image that the check uses), the wheels folder installed from with no index, and the check's
# CPU smoke mode run end to end through scripts/gpu-check.sh.
#
# Usage:
#   bash scripts/gpu-rehearsal.sh [--work DIR]     # default output/gpu-rehearsal
#
# Binary wheels are built for one Python version, and this machine's python is not
# necessarily the GPU machine's 3.12. So the rehearsal fills two folders with
# scripts/gpu-wheels.sh: .whl for 3.12, the folder to carry, and DIR/wheels for this
# interpreter; it checks that both hold the same distributions at the same versions (only the
# binary tags differ), then installs the second. Needs the package registry (for the fresh
# environment and the wheels) and PYTHON (default python3) with torch and setuptools, which
# builds deepspeed's wheel. Prints the wall time of each stage and the wheels' sizes.

set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
WORK="output/gpu-rehearsal"
while [[ $# -gt 0 ]]; do
	case "$1" in
	--work) WORK="$2"; shift 2 ;;
	-h | --help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "gpu-rehearsal.sh: unknown flag $1 (see --help)" >&2; exit 2 ;;
	esac
done

# The GPU machine's own packages that the check imports, pinned where its image's versions are
# known and exist for this python (its numpy 2.5 has no wheel for Python 3.11; its torch is
# 2.11 with CUDA, this machine's local build is 2.13 for the CPU). Its typer (a transformers
# requirement) is older than 0.29, which would bring pydantic, a package that image lacks.
GPU_MACHINE=(
	"torch==${ALIGNER_TORCH_VERSION:-2.13.0}" transformers==5.17.0 accelerate==1.15.0 peft
	tokenizers==0.23.2 safetensors==0.8.0 sentencepiece==0.2.2 huggingface-hub==1.33.0
	"typer<0.29" protobuf numpy pyarrow pandas xxhash fsspec aiohttp requests filelock tqdm
	pyyaml jinja2 matplotlib psutil py-cpuinfo msgpack einops ninja typing-extensions
)
CARRIED="deepspeed datasets mistral-common pydantic pydantic-core hjson dill multiprocess"
VERSION="$("${PYTHON}" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
START="${SECONDS}"
stage() { echo "== $1 ($((SECONDS - START))s so far)"; }

rm -rf "${WORK}"
mkdir -p "${WORK}"
stage "wheels for the GPU machine (Python 3.12) into .whl"
bash scripts/gpu-wheels.sh --dest .whl --python-version 3.12
stage "the same wheels for this python (${VERSION}) into ${WORK}/wheels"
bash scripts/gpu-wheels.sh --dest "${WORK}/wheels" --python-version "${VERSION}"
"${PYTHON}" - .whl "${WORK}/wheels" <<'EOF'
import sys
from pathlib import Path

def versions(folder: str) -> set[tuple[str, str]]:
    return {tuple(wheel.name.split("-")[:2]) for wheel in Path(folder).glob("*.whl")}

gpu, here = versions(sys.argv[1]), versions(sys.argv[2])
if gpu != here:
    sys.exit(f"gpu-rehearsal.sh: the two wheel sets differ: {sorted(gpu ^ here)}")
print(f"both folders hold the same {len(gpu)} distributions")
EOF

stage "a fresh environment with the GPU machine's packages only"
"${PYTHON}" -m venv "${WORK}/venv"
VENV_PYTHON="${WORK}/venv/bin/python"
"${VENV_PYTHON}" -m pip install --quiet --upgrade pip
"${VENV_PYTHON}" -m pip install --quiet "${GPU_MACHINE[@]}"
for name in ${CARRIED}; do
	if "${VENV_PYTHON}" -m pip show --quiet "${name}" >/dev/null 2>&1; then
		echo "gpu-rehearsal.sh: ${name} came in with the GPU machine's packages;" \
			"the rehearsal would not show that the wheels are enough" >&2
		exit 1
	fi
done

stage "the check's CPU smoke mode, installing from ${WORK}/wheels"
SMOKE_START="${SECONDS}"
PYTHON="${VENV_PYTHON}" GPU_CHECK_SITE="${WORK}/site" bash scripts/gpu-check.sh --cpu_smoke \
	--wheels "${WORK}/wheels" --output "${WORK}/results" --work "${WORK}/check"
echo "gpu-rehearsal.sh: passed; the smoke run took $((SECONDS - SMOKE_START))s," \
	"the whole rehearsal $((SECONDS - START))s"
