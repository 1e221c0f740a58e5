#!/usr/bin/env bash
#
# Train an Aligner (correction SFT) with the DeepSpeed launcher.
#
# Usage:
#   bash scripts/sft-correction.sh --train_datasets FILE_OR_SPEC... \
#       --model_name_or_path MODEL --output_dir output/sft [flags]
#   bash scripts/sft-correction.sh --demo [--output_dir output/demo] [flags]
#
# Launcher flags (taken by this script):
#   --hostfile FILE          multi-node run (DeepSpeed hostfile); with --no_ssh, --node_rank,
#                            --master_addr, --num_nodes for a manual multi-node launch
#   --num_gpus N             ranks on this machine (GPUs; on a CPU-only machine, CPU ranks:
#                            default 2, or 1 on a single core)
#   --include / --exclude    DeepSpeed device filters, e.g. --include localhost:0,2
#   --master_port PORT       default: a free port
#   --demo                   train a tiny model on the bundled correction set (no downloads),
#                            then correct its held-out set and print accuracy before and after
# Training flags with their defaults here (the original toolkit's):
#   --zero_stage 3 --offload none --epochs 3 --lr 2e-5 --lr_scheduler_type cosine
#   --lr_warmup_ratio 0.03 --weight_decay 0.0 --per_device_train_batch_size 4
#   --gradient_accumulation_steps 8 --max_length 2048 --gradient_checkpointing True --seed 42
#   bf16 where the GPU supports it, else fp32 (see `aligner train --help` for every flag).
# Every other flag passes through to the trainer. stdout and stderr are copied to
# OUTPUT_DIR/stdout.log and OUTPUT_DIR/stderr.log; the exit status is the training's (with
# --demo, then the held-out correction's and its report's).
#
# Environment: PYTHON (default python3) is the interpreter with aligner and deepspeed installed.

set -euo pipefail

PYTHON="${PYTHON:-python3}"
MODEL_NAME_OR_PATH=""
OUTPUT_DIR=""
ZERO_STAGE=""
OFFLOAD="none"
NUM_GPUS=""
MASTER_PORT="${MASTER_PORT:-}"
DEMO=0
DEVICES_CHOSEN=0
TRAIN_DATASETS=()
LAUNCHER_ARGS=()
TRAINER_ARGS=()

# Accept --flag=value as well as --flag value.
ARGS=()
for arg in "$@"; do
	if [[ "${arg}" == --*=* ]]; then
		ARGS+=("${arg%%=*}" "${arg#*=}")
	else
		ARGS+=("${arg}")
	fi
done
set -- ${ARGS[@]+"${ARGS[@]}"}

need_value() {
	if [[ $# -lt 2 || "$2" == --* ]]; then
		echo "sft-correction.sh: $1 needs a value" >&2
		exit 2
	fi
}

while [[ $# -gt 0 ]]; do
	case "$1" in
	--train_datasets)
		need_value "$@"
		shift
		TRAIN_DATASETS=() # a repeated flag replaces the earlier list, as argparse does
		while [[ $# -gt 0 && "$1" != --* ]]; do
			TRAIN_DATASETS+=("$1")
			shift
		done
		;;
	--model_name_or_path) need_value "$@"; MODEL_NAME_OR_PATH="$2"; shift 2 ;;
	--output_dir) need_value "$@"; OUTPUT_DIR="$2"; shift 2 ;;
	--zero_stage) need_value "$@"; ZERO_STAGE="$2"; shift 2 ;;
	--offload) need_value "$@"; OFFLOAD="$2"; shift 2 ;;
	--num_gpus) need_value "$@"; NUM_GPUS="$2"; shift 2 ;;
	--master_port) need_value "$@"; MASTER_PORT="$2"; shift 2 ;;
	--hostfile | --include | --exclude)
		need_value "$@"
		LAUNCHER_ARGS+=("$1" "$2")
		DEVICES_CHOSEN=1
		shift 2
		;;
	--num_nodes | --node_rank | --master_addr)
		need_value "$@"
		LAUNCHER_ARGS+=("$1" "$2")
		shift 2
		;;
	--no_ssh) LAUNCHER_ARGS+=("$1"); shift ;;
	--demo) DEMO=1; shift ;;
	-h | --help)
		sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	*) TRAINER_ARGS+=("$1"); shift ;;
	esac
done

DEMO_ARGS=()
if [[ "${DEMO}" == 1 ]]; then
	OUTPUT_DIR="${OUTPUT_DIR:-output/demo}"
	# A tiny random Llama with a real tokenizer, written offline; the bundled correction set.
	MODEL_NAME_OR_PATH="$("${PYTHON}" -m aligner.demo prepare "${OUTPUT_DIR}" | tail -n 1)"
	read -r DEMO_TRAIN DEMO_EVAL < <("${PYTHON}" -c \
		'from aligner.demo import DEMO_TRAIN_FILE as t, DEMO_EVAL_FILE as e; print(t, e)')
	[[ ${#TRAIN_DATASETS[@]} -gt 0 ]] || TRAIN_DATASETS=("${DEMO_TRAIN}")
	# A random tiny model needs a large learning rate; ZeRO-2 is the fastest sharded stage here.
	# 6 epochs of 32 steps of 16 records (8 per rank on 2) learn the lookups and the copying.
	ZERO_STAGE="${ZERO_STAGE:-2}"
	# The demo always starts over (--overwrite): its folder holds only what the demo wrote.
	DEMO_ARGS=(
		--overwrite --eval_datasets "${DEMO_EVAL}" --epochs 6 --lr 3e-3 --lr_warmup_ratio 0.05
		--per_device_train_batch_size 8 --gradient_accumulation_steps 1 --max_length 128
		--gradient_checkpointing False --per_device_eval_batch_size 32
	)
fi

if [[ ${#TRAIN_DATASETS[@]} -eq 0 || -z "${MODEL_NAME_OR_PATH}" || -z "${OUTPUT_DIR}" ]]; then
	echo "sft-correction.sh: --train_datasets, --model_name_or_path and --output_dir are required" \
		"(or --demo); see --help" >&2
	exit 2
fi
mkdir -p "${OUTPUT_DIR}"
ZERO_STAGE="${ZERO_STAGE:-3}"

if [[ -z "${MASTER_PORT}" ]]; then
	MASTER_PORT="$("${PYTHON}" -c \
		'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')"
fi

GPU_COUNT="$("${PYTHON}" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)"
if [[ "${GPU_COUNT}" == 0 && "${DEVICES_CHOSEN}" == 0 ]]; then
	# CPU ranks talk over gloo; split the cores between them so they do not oversubscribe.
	CORES="$(nproc)"
	NUM_GPUS="${NUM_GPUS:-$((CORES >= 2 ? 2 : 1))}"
	export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$((CORES / NUM_GPUS > 0 ? CORES / NUM_GPUS : 1))}"
	echo "sft-correction.sh: no GPU found, training on ${NUM_GPUS} CPU rank(s)" \
		"with ${OMP_NUM_THREADS} thread(s) each"
fi
if [[ -n "${NUM_GPUS}" ]]; then
	LAUNCHER_ARGS+=(--num_gpus "${NUM_GPUS}")
fi

COMMAND=(
	"${PYTHON}" -m deepspeed.launcher.runner --master_port "${MASTER_PORT}"
	${LAUNCHER_ARGS[@]+"${LAUNCHER_ARGS[@]}"}
	--module aligner.training.main
	--train_datasets "${TRAIN_DATASETS[@]}"
	--model_name_or_path "${MODEL_NAME_OR_PATH}"
	--output_dir "${OUTPUT_DIR}"
	--zero_stage "${ZERO_STAGE}"
	--offload "${OFFLOAD}"
	--epochs 3 --lr 2e-5 --lr_scheduler_type cosine --lr_warmup_ratio 0.03 --weight_decay 0.0
	--per_device_train_batch_size 4 --gradient_accumulation_steps 8 --max_length 2048
	--gradient_checkpointing True --seed 42
	${DEMO_ARGS[@]+"${DEMO_ARGS[@]}"}
	${TRAINER_ARGS[@]+"${TRAINER_ARGS[@]}"}
)

set +e
"${COMMAND[@]}" 2> >(tee "${OUTPUT_DIR}/stderr.log" >&2) | tee "${OUTPUT_DIR}/stdout.log"
STATUS="${PIPESTATUS[0]}"
set -e
if [[ "${STATUS}" != 0 ]]; then
	echo "sft-correction.sh: training failed with exit status ${STATUS}" \
		"(logs in ${OUTPUT_DIR}/stdout.log and stderr.log)" >&2
	exit "${STATUS}"
fi
if [[ "${DEMO}" == 1 ]]; then
	# The demo's proof of learning: correct the held-out set, score before against after.
	# A corrections file left by an earlier run would be resumed, not redone: start afresh.
	rm -f "${OUTPUT_DIR}/demo-corrections.jsonl"
	"${PYTHON}" -m aligner.cli correct --model_name_or_path "${OUTPUT_DIR}" --input "${DEMO_EVAL}" \
		--output "${OUTPUT_DIR}/demo-corrections.jsonl" --batch_size 64 --max_new_tokens 32
	"${PYTHON}" -m aligner.demo report "${OUTPUT_DIR}/demo-corrections.jsonl" \
		--output "${OUTPUT_DIR}/demo-report.json" | tee "${OUTPUT_DIR}/demo-report.txt"
fi
