#!/usr/bin/env bash
#
# Fill a folder with the wheels that scripts/gpu-check.sh needs on a GPU machine without network
# access: every distribution the check imports that such a machine (CPython 3.12 with torch,
# transformers, peft, accelerate, tokenizers, pyarrow, pandas, ... but no deepspeed, datasets or
# mistral-common) lacks. Run it where the package registry is reachable; carry the folder with
# the working tree. The wheels are pinned to the versions this project is tested with.
#
# Usage:
#   bash scripts/gpu-wheels.sh [--dest .whl] [--python-version 3.12]
#
# --python-version picks the interpreter the binary wheels are for (default 3.12, the GPU
# machine's); scripts/gpu-rehearsal.sh uses it to fetch the same versions for this machine.
# deepspeed publishes only a source distribution: its wheel is built here, without compiling
# any op (DS_BUILD_OPS=0; ops the check needs none of are compiled on first use, if ever), by
# PYTHON (default python3), which must have torch and setuptools installed. Prints each wheel's
# size and the total, and fails above 60 MiB.

set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
DEST=".whl"
PYTHON_VERSION="3.12"
LIMIT_MIB=60

while [[ $# -gt 0 ]]; do
	case "$1" in
	--dest) DEST="$2"; shift 2 ;;
	--python-version) PYTHON_VERSION="$2"; shift 2 ;;
	-h | --help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "gpu-wheels.sh: unknown flag $1 (see --help)" >&2; exit 2 ;;
	esac
done

# What the check imports beyond the GPU machine's own packages, and what those need in turn:
# deepspeed (hjson, pydantic and pydantic's own), datasets (dill, multiprocess), and
# mistral-common, whose package data holds the 32k Llama SentencePiece tokenizer (only that
# file is used, so its own requirements are not carried).
BUILT=(deepspeed==0.19.8)
DOWNLOADED=(
	hjson==3.1.0
	pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
	datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
	mistral-common==1.13.1
)

rm -rf "${DEST}"
mkdir -p "${DEST}"
PLATFORMS=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
	PLATFORMS+=(--platform "${tag}")
done
"${PYTHON}" -m pip download --quiet --no-deps --only-binary=:all: \
	--python-version "${PYTHON_VERSION}" --implementation cp "${PLATFORMS[@]}" \
	--dest "${DEST}" "${DOWNLOADED[@]}"

"${PYTHON}" -c 'import torch, setuptools' 2>/dev/null || {
	echo "gpu-wheels.sh: ${PYTHON} needs torch and setuptools to build deepspeed's wheel" >&2
	exit 1
}
# No build isolation: deepspeed's setup.py imports torch, which must not be downloaded again.
# The wheel holds no compiled op, so the accelerator it is built on (none here) does not
# matter: DeepSpeed detects CUDA where it runs.
DS_BUILD_OPS=0 "${PYTHON}" -m pip wheel --quiet --no-deps --no-build-isolation \
	--no-binary deepspeed --wheel-dir "${DEST}" "${BUILT[@]}"

"${PYTHON}" - "${DEST}" "${LIMIT_MIB}" <<'EOF'
import sys
from pathlib import Path

folder, limit = Path(sys.argv[1]), float(sys.argv[2])
wheels = sorted(folder.glob("*.whl"))
total = sum(wheel.stat().st_size for wheel in wheels)
for wheel in wheels:
    print(f"{wheel.stat().st_size / 2**20:8.2f} MiB  {wheel.name}")
print(f"{total / 2**20:8.2f} MiB  in all, {len(wheels)} wheels in {folder}")
if total > limit * 2**20:
    sys.exit(f"gpu-wheels.sh: {total / 2**20:.1f} MiB is over the {limit:.0f} MiB budget")
EOF
