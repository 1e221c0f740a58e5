#!/usr/bin/env bash
#
# Train an Aligner (correction SFT) with the DeepSpeed launcher.
#
# Usage:
#   bash scripts/sft-correction.sh --train_datasets FILE_OR_SPEC... \
#       --model_name_or_path MODEL --output_dir output/sft [flags]
#   bash scripts/sft-correction.sh --demo [--output_dir output/demo] [flags]
#   bash scripts/sft-correction.sh --demo real [--output_dir output/demo-real] [flags]
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
#   --demo real              the whole loop on a real model, SmolLM2-135M-Instruct (fetched once
#                            by scripts/get-real-model.sh): it answers checkable questions, a
#                            LoRA aligner trained from it on the corrected answers corrects its
#                            answers to held-out ones, and accuracy before and after is printed
# Training flags pass through to `aligner train`, whose defaults are the original toolkit's
# (`aligner train --help` lists every flag and its default; they are declared once, in
# aligner/config.py): --zero_stage 3 --epochs 3 --lr 2e-5 --per_device_train_batch_size 4
# --gradient_accumulation_steps 8 --max_length 2048 ..., bf16 where the GPU supports it.
# On top, the original script's own settings (`--defaults original`): wandb logging to project
# Aligner-SFT (offline with a notice when no API key is set), TF32 where the GPU supports it,
# and a 16-bit model save. Each can be turned off: --log_type none, --tf32 False,
# --save_16bit False (or --save_fp32); --defaults aligner takes `aligner train`'s neutral ones.
#
# Logs: stdout and stderr are appended to OUTPUT_DIR/stdout.log and stderr.log (with
# --node_rank N: stdout.nodeN.log and stderr.nodeN.log), each run under a header line with the
# date, the node rank and the command (secrets masked). Nothing is logged into a folder that is
# not empty and holds no aligner run, which training refuses unless --overwrite is given.
# Signals: SIGTERM, SIGINT or SIGHUP sent to this script stops every process of the launch
# (launcher and ranks) and waits for them to end. The launch runs in a process group of its own
# (a SIGKILL cannot be passed on: kill the session instead). Exit status: 0 done; 1 failed; 2
# refused before any work (a bad flag, record or output folder); 129, 130, 143 after SIGHUP,
# SIGINT, SIGTERM. On failure the last line is the trainer's own one-line error.
#
# Environment: PYTHON (default python3) is the interpreter with aligner and deepspeed installed.

set -euo pipefail
ORIGINAL_ARGS=("$@")

PYTHON="${PYTHON:-python3}"
MODEL_NAME_OR_PATH=""
OUTPUT_DIR=""
NUM_GPUS=""
MASTER_PORT="${MASTER_PORT:-}"
DEMO=0
DEVICES_CHOSEN=0
NODE_RANK=""
NUM_NODES=1
HOSTFILE=""
NO_SSH=""
TRAIN_DATASETS=()
LAUNCHER_ARGS=()
TRAINER_ARGS=()

# ---- stopping: a signal to this script stops the whole launch -----------------------------------

# Each launch runs in its own process group. Schedulers and `timeout` signal this script alone;
# the signal is passed to the whole group, and the script returns only once the group is gone.
LAUNCH_PID=""
STOPPED_BY=""
STOP_GRACE_S=20

on_signal() { # NAME STATUS
	STOPPED_BY="$1"
	local pid="${LAUNCH_PID:-$(jobs -p | head -n 1)}"
	if [[ -z "${pid}" ]]; then
		echo "sft-correction.sh: stopped by SIG$1 before training started" >&2
		exit "$2"
	fi
	# SIGTERM for either signal: ranks end at once on it, while SIGINT would raise
	# KeyboardInterrupt in the middle of a collective and print a traceback on every rank.
	kill -TERM -- "-${pid}" 2>/dev/null || true
}
trap 'on_signal TERM 143' TERM
trap 'on_signal INT 130' INT
trap 'on_signal HUP 129' HUP # the terminal closed: its hangup no longer reaches the launch

group_alive() { # PGID: whether a live (not zombie) process is left in the process group
	local stat fields
	for stat in /proc/[0-9]*/stat; do
		{ read -r fields; } <"${stat}" 2>/dev/null || continue # the process may be gone
		fields="${fields##*) }" # after "PID (COMMAND) ": STATE PPID PGRP ...
		read -r -a fields <<<"${fields}"
		[[ "${fields[2]}" == "$1" && "${fields[0]}" != Z ]] && return 0
	done
	return 1
}

supervise() { # FUNCTION: run it in its own process group; its exit status, once all have ended
	local status waited=0
	set -m
	"$@" &
	LAUNCH_PID=$!
	set +m
	while :; do
		wait "${LAUNCH_PID}" && status=0 || status=$?
		# A trapped signal interrupts `wait`; the group was told to stop, so wait on.
		kill -0 "${LAUNCH_PID}" 2>/dev/null || break
	done
	while group_alive "${LAUNCH_PID}"; do
		# A process that outlived the group's leader (one that ignores SIGTERM, say).
		if ((waited == STOP_GRACE_S * 5)); then
			kill -KILL -- "-${LAUNCH_PID}" 2>/dev/null || true
		fi
		((waited++ < STOP_GRACE_S * 10)) || break
		sleep 0.2
	done
	LAUNCH_PID=""
	return "${status}"
}

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
	--num_gpus) need_value "$@"; NUM_GPUS="$2"; shift 2 ;;
	--master_port) need_value "$@"; MASTER_PORT="$2"; shift 2 ;;
	--hostfile | --include | --exclude)
		need_value "$@"
		[[ "$1" == --hostfile ]] && HOSTFILE="$2"
		LAUNCHER_ARGS+=("$1" "$2")
		DEVICES_CHOSEN=1
		shift 2
		;;
	--num_nodes | --node_rank | --master_addr)
		need_value "$@"
		[[ "$1" == --node_rank ]] && NODE_RANK="$2"
		[[ "$1" == --num_nodes ]] && NUM_NODES="$2"
		LAUNCHER_ARGS+=("$1" "$2")
		shift 2
		;;
	--no_ssh) LAUNCHER_ARGS+=("$1"); NO_SSH=1; shift ;;
	--demo)
		DEMO=1
		if [[ "${2:-}" == real ]]; then DEMO=real; shift; fi
		shift
		;;
	-h | --help)
		sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	*) TRAINER_ARGS+=("$1"); shift ;;
	esac
done

DEMO_ARGS=()
DEMO_MODULE=aligner.demo
DEMO_MAX_NEW_TOKENS=32
if [[ "${DEMO}" == real ]]; then
	OUTPUT_DIR="${OUTPUT_DIR:-output/demo-real}"
	DEMO_MODULE=aligner.real_demo
	DEMO_MAX_NEW_TOKENS=24
	# The model (built once into a cache), and questions whose answers can be checked.
	MODEL_NAME_OR_PATH="$("${PYTHON}" -m aligner.real_demo prepare "${OUTPUT_DIR}" | tail -n 1)"
	# The upstream answers them; a rerun resumes what an interrupted one left.
	"${PYTHON}" -m aligner.cli answer --model_name_or_path "${MODEL_NAME_OR_PATH}" \
		--input "${OUTPUT_DIR}/demo-questions.jsonl" --output "${OUTPUT_DIR}/demo-answers.jsonl" \
		--batch_size 64 --max_new_tokens 16
	# Right answers kept, wrong ones corrected from the known truth; training and held out.
	read -r DEMO_TRAIN DEMO_EVAL < <("${PYTHON}" -m aligner.real_demo split "${OUTPUT_DIR}")
	[[ ${#TRAIN_DATASETS[@]} -gt 0 ]] || TRAIN_DATASETS=("${DEMO_TRAIN}")
	# LoRA on the model's own chat template, with a short system message (the template's
	# default one costs 20 tokens a sample). ZeRO-0: nothing to shard in 135M parameters. No
	# eval during training: on 2 CPU cores it would cost more than the training itself.
	DEMO_ARGS=(
		--defaults aligner --zero_stage 0 --prompt_template chat --system_prompt "Correct the answer."
		--lora_r 16 --lora_alpha 32 --overwrite --epochs 2 --lr 2e-3 --lr_warmup_ratio 0.05
		--per_device_train_batch_size 4 --gradient_accumulation_steps 1 --max_length 160
		--gradient_checkpointing False
	)
elif [[ "${DEMO}" == 1 ]]; then
	OUTPUT_DIR="${OUTPUT_DIR:-output/demo}"
	# A tiny random Llama with a real tokenizer, written offline; the bundled correction set.
	MODEL_NAME_OR_PATH="$("${PYTHON}" -m aligner.demo prepare "${OUTPUT_DIR}" | tail -n 1)"
	read -r DEMO_TRAIN DEMO_EVAL < <("${PYTHON}" -c \
		'from aligner.demo import DEMO_TRAIN_FILE as t, DEMO_EVAL_FILE as e; print(t, e)')
	[[ ${#TRAIN_DATASETS[@]} -gt 0 ]] || TRAIN_DATASETS=("${DEMO_TRAIN}")
	# A random tiny model needs a large learning rate; ZeRO-2 is the fastest sharded stage here.
	# 6 epochs of 32 steps of 16 records (8 per rank on 2) learn the lookups and the copying.
	# The demo always starts over (--overwrite): its folder holds only what the demo wrote.
	# The demo is offline and self-contained: no tracker, and the model saved as trained.
	# Flags given on the command line come after these, so they win.
	DEMO_ARGS=(
		--defaults aligner --zero_stage 2
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

# DeepSpeed finds the other nodes in a hostfile (its default: /job/hostfile), or each node is
# launched by hand with --no_ssh; without either it fails with a traceback.
if [[ "${NUM_NODES}" != 1 && -z "${NO_SSH}" && -z "${HOSTFILE}" && ! -f /job/hostfile ]]; then
	echo "sft-correction.sh: --num_nodes ${NUM_NODES} needs the other nodes: pass --hostfile FILE," \
		"or launch each node with --no_ssh --node_rank N --master_addr HOST" >&2
	exit 2
fi

# ---- logs ----------------------------------------------------------------------------------------

flag_given() { # NAME ARGS...: whether boolean flag NAME is among ARGS and not set false
	local name="$1" value
	shift
	while [[ $# -gt 0 ]]; do
		if [[ "$1" == "${name}" ]]; then
			value="${2:-}"
			[[ "${value,,}" =~ ^(false|0|no|n|off)$ ]] || return 0
		fi
		shift
	done
	return 1
}

may_log_into() { # FOLDER: new, empty, a run of ours, or --overwrite was given; never the model's
	local entry
	# Training refuses an output folder that is the base model's, --overwrite or not.
	[[ "$(realpath -m -- "$1")" != "$(realpath -m -- "${MODEL_NAME_OR_PATH}")" ]] || return 1
	[[ -e "$1" ]] || return 0
	[[ -d "$1" && -w "$1" ]] || return 1
	[[ -f "$1/aligner_run.json" ]] && return 0
	flag_given --overwrite ${TRAINER_ARGS[@]+"${TRAINER_ARGS[@]}"} ${DEMO_ARGS[@]+"${DEMO_ARGS[@]}"} &&
		return 0
	for entry in "$1"/* "$1"/.[!.]*; do
		[[ -e "${entry}" ]] || continue
		# A rank's writability probe (aligner/files.py) is there for an instant on a shared folder.
		[[ "${entry##*/}" =~ ^((stdout|stderr)(\.node[0-9]+)?\.log|model|\.aligner-write-check-.*)$ ]] ||
			return 1
	done
	return 0
}

STDOUT_LOG=/dev/null
STDERR_LOG=/dev/null
if may_log_into "${OUTPUT_DIR}" && mkdir -p "${OUTPUT_DIR}" 2>/dev/null; then
	STDOUT_LOG="${OUTPUT_DIR}/stdout${NODE_RANK:+.node${NODE_RANK}}.log"
	STDERR_LOG="${OUTPUT_DIR}/stderr${NODE_RANK:+.node${NODE_RANK}}.log"
	# Appended, never truncated: the logs of a run that crashed stay for the one that resumes it.
	HEADER="$(
		"${PYTHON}" -c 'import shlex, sys; from aligner.secrets import redact
print(redact(shlex.join(sys.argv[1:])))' bash "$0" ${ORIGINAL_ARGS[@]+"${ORIGINAL_ARGS[@]}"}
	)"
	HEADER="==== $(date '+%Y-%m-%d %H:%M:%S %z') on ${HOSTNAME}, node rank ${NODE_RANK:-0}: ${HEADER}"
	echo "${HEADER}" | tee -a "${STDOUT_LOG}" >>"${STDERR_LOG}" || true
fi
ERRORS="$(mktemp)"
trap 'rm -f "${ERRORS}"' EXIT

say() { # MESSAGE: to stderr and the stderr log
	echo "$*" >&2
	echo "$*" >>"${STDERR_LOG}" 2>/dev/null || true
}

logged() { # COMMAND...: run it with stdout and stderr copied to the logs (and stderr to ERRORS)
	# The copies ignore SIGTERM and SIGINT, so that they keep the run's last lines and end when
	# the run's output does; they never keep the run alive. The status is the command's, even
	# when a log cannot be written (a full disk).
	set +e
	"$@" 2> >(
		trap '' TERM INT
		exec tee -a "${STDERR_LOG}" "${ERRORS}" >&2
	) | (
		trap '' TERM INT
		exec tee -a "${STDOUT_LOG}"
	)
	return "${PIPESTATUS[0]}"
}

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
	--module aligner.commands.train
	--train_datasets "${TRAIN_DATASETS[@]}"
	--model_name_or_path "${MODEL_NAME_OR_PATH}"
	--output_dir "${OUTPUT_DIR}"
	--defaults original
	${DEMO_ARGS[@]+"${DEMO_ARGS[@]}"}
	${TRAINER_ARGS[@]+"${TRAINER_ARGS[@]}"}
)

finish() { # STATUS WHAT: exit as the script promises, the cause on the last line
	local status="$1" what="$2"
	if [[ -n "${STOPPED_BY}" ]]; then
		say "sft-correction.sh: stopped by SIG${STOPPED_BY}; every process of the run has ended" \
			"(continue with --resume_from_checkpoint auto)"
		case "${STOPPED_BY}" in
		TERM) exit 143 ;;
		INT) exit 130 ;;
		*) exit 129 ;;
		esac
	fi
	[[ "${status}" == 0 ]] && return 0
	local logs="logs: ${STDOUT_LOG}, ${STDERR_LOG}"
	[[ "${STDOUT_LOG}" == /dev/null ]] && logs="no logs in a folder that is not this run's"
	say "sft-correction.sh: ${what} failed with exit status ${status} (${logs})"
	# The trainer's own one-line error last, below the launcher's lines about the failure.
	local cause
	# (from where it starts: a progress bar may share its line)
	cause="$(grep -ao 'aligner [a-z]*: error: .*' "${ERRORS}" | tail -n 1 || true)"
	# Rank 0's line, else the line of the rank that alone met the error.
	[[ -n "${cause}" ]] || cause="$(grep -aoE 'aligner [a-z]* \(rank [0-9]+\): error: .*' "${ERRORS}" | tail -n 1 || true)"
	[[ -n "${cause}" ]] && say "${cause}"
	case "${status}" in
	1 | 2 | 130 | 143) exit "${status}" ;;
	*) exit 1 ;; # a rank killed by a signal, say: the run failed
	esac
}

supervise logged "${COMMAND[@]}" && STATUS=0 || STATUS=$?
finish "${STATUS}" training

demo_correct() {
	"${PYTHON}" -m aligner.cli correct --model_name_or_path "${OUTPUT_DIR}" --input "${DEMO_EVAL}" \
		--output "${OUTPUT_DIR}/demo-corrections.jsonl" --overwrite --batch_size 64 \
		--max_new_tokens "${DEMO_MAX_NEW_TOKENS}" &&
		"${PYTHON}" -m "${DEMO_MODULE}" report "${OUTPUT_DIR}/demo-corrections.jsonl" \
			--output "${OUTPUT_DIR}/demo-report.json" | tee "${OUTPUT_DIR}/demo-report.txt"
}

if [[ "${DEMO}" != 0 ]]; then
	# The demo's proof of learning: correct the held-out set, score before against after.
	# It starts afresh (--overwrite): corrections left by an earlier run are not resumed.
	supervise logged demo_correct && STATUS=0 || STATUS=$?
	finish "${STATUS}" "the demo's correction"
fi
