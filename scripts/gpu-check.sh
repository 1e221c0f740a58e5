#!/usr/bin/env bash
#
# GPU check for one H100 / H200, prepared so that a short GPU lease is spent measuring: real
# `aligner train` runs of a random 1.1B Llama in bf16 (ZeRO-2, ZeRO-3, length-grouped, packed,
# LoRA: tokens/s per GPU, MFU, peak memory) and `aligner correct` on the same model (generated
# tokens/s at batch sizes 8, 32 and 128, greedy, 256 new tokens). Budgeted to end within 9
# minutes, each part under its own timeout. Downloads nothing.
#
# Usage:
#   bash scripts/gpu-check.sh [--output DIR] [--wheels DIR] [--only PART...] [--budget_s S]
#   bash scripts/gpu-check.sh --cpu_smoke [--output DIR]    # the same parts, tiny, on CPU
#
# The machine needs python with torch, transformers, peft, accelerate, tokenizers, pyarrow,
# pandas and matplotlib. Whatever else the check imports (deepspeed, datasets, mistral-common
# and what they need) comes from the wheels folder (default .whl, filled by
# scripts/gpu-wheels.sh): only the wheels of distributions this python lacks, installed with
# no index and no dependency resolution into a folder of their own that goes first on
# PYTHONPATH, so the machine's torch and transformers stay as they are. The repository goes
# on PYTHONPATH too: aligner itself needs no install.
#
# Results in DIR (default $GPU_CHECK_OUTPUT, else output/gpu-check): gpu-check.json (a list of
# rows), gpu-check.md (tables, also printed at the end), gpu-check.log (every part's output),
# metrics.jsonl (the training runs' metrics). Exit status 0 when every row succeeded.
# Environment: PYTHON (default python3); GPU_CHECK_SITE, the folder the wheels are installed
# into (default: a new temporary one).

set -uo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
WHEELS=".whl"
ARGS=()
while [[ $# -gt 0 ]]; do
	case "$1" in
	--wheels) WHEELS="$2"; shift 2 ;;
	-h | --help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) ARGS+=("$1"); shift ;;
	esac
done

# The wheels of distributions this python does not have; those it has are its own to keep.
MISSING=()
for wheel in "${WHEELS}"/*.whl; do
	[[ -e "${wheel}" ]] || continue
	name="$(basename "${wheel}")"
	"${PYTHON}" -c 'import importlib.metadata as m, sys; m.version(sys.argv[1])' "${name%%-*}" \
		2>/dev/null || MISSING+=("${wheel}")
done
if [[ ${#MISSING[@]} -gt 0 ]]; then
	SITE="${GPU_CHECK_SITE:-$(mktemp -d -t aligner-gpu-site-XXXXXX)}"
	echo "gpu-check.sh: installing ${#MISSING[@]} wheels from ${WHEELS} into ${SITE} (no index)"
	"${PYTHON}" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir \
		--disable-pip-version-check --upgrade --target "${SITE}" "${MISSING[@]}" || {
		echo "gpu-check.sh: the wheels in ${WHEELS} do not install into ${PYTHON}" \
			"($("${PYTHON}" --version)); fill the folder with scripts/gpu-wheels.sh" \
			"--python-version of that python" >&2
		exit 1
	}
	export PYTHONPATH="${SITE}${PYTHONPATH:+:${PYTHONPATH}}"
fi
export PYTHONPATH="${PWD}${PYTHONPATH:+:${PYTHONPATH}}"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
# Each part still runs and reports its own failure; this says why up front.
"${PYTHON}" - <<'EOF' || echo "gpu-check.sh: fill ${WHEELS} with scripts/gpu-wheels.sh" >&2
import importlib.util, sys
missing = [m for m in ("deepspeed", "datasets", "mistral_common") if not importlib.util.find_spec(m)]
sys.exit(f"gpu-check.sh: {', '.join(missing)} not installed" if missing else 0)
EOF
exec "${PYTHON}" -m benchmarks.gpu_check ${ARGS[@]+"${ARGS[@]}"}
