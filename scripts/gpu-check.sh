#!/usr/bin/env bash
#
# GPU check for one H100 / H200, prepared so that a short GPU lease is spent measuring.
#
#   1. Throughput: a random-init Llama-shaped model of 0.9B parameters (hidden 2048, 16 layers,
#      GQA 16/8 heads, vocab 32000), bf16, sequences of 2048 tokens, micro-batch 4, trained with
#      the aligner's loss for 5 + 25 steps under ZeRO-2 and then ZeRO-3; then ZeRO-2 with
#      padding-free packed rows (flash-attention varlen when flash-attn is installed), with LoRA
#      (r 16), and a 1.5B shape (28 layers). Prints tokens/s per GPU,
#      MFU (6 x params + attention FLOPs per token, 4 x params under LoRA, against
#      989 TFLOP/s) and peak memory.
#   2. The trainer itself on the GPU (when the package's data dependencies are installed):
#      the embedded demo under ZeRO-3 with the default precision (bf16 on these GPUs) for 30
#      steps, then a reload of the saved model.
#
# Needs torch, transformers and deepspeed (plus the package's dependencies for part 2);
# downloads nothing; about 5 minutes, at most 16 (each part has its own timeout).
# Results: $OUT (the device runner's output folder) or output/gpu-check: gpu-check.jsonl,
# the demo's folder and logs. Extra flags go to every throughput run, e.g.
#   bash scripts/gpu-check.sh --gradient_checkpointing --micro_batch_size 8

set -uo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
RESULTS="${OUT:-output/gpu-check}"
mkdir -p "${RESULTS}"
STATUS=0

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"${PYTHON}" -c 'import torch, transformers, deepspeed; print("torch", torch.__version__,
"transformers", transformers.__version__, "deepspeed", deepspeed.__version__)' 2>/dev/null

throughput() { # NAME FLAGS...: one throughput run, its result line or its log's tail
	local name="$1"
	shift
	echo "== throughput, ${name}"
	timeout 150 "${PYTHON}" -m aligner.training.gpu_check "$@" \
		--json "${RESULTS}/gpu-check.jsonl" ${EXTRA[@]+"${EXTRA[@]}"} >"${RESULTS}/${name}.log" 2>&1
	local code=$?
	grep '^GPU_CHECK' "${RESULTS}/${name}.log" || tail -n 20 "${RESULTS}/${name}.log"
	[[ ${code} == 0 ]] || { echo "${name} throughput run failed (${code})"; STATUS=1; }
}

EXTRA=("$@")
# Packed rows skip the masked attention work only with flash-attention's variable-length kernel.
PACKED_ATTN=sdpa
"${PYTHON}" -c 'import flash_attn' 2>/dev/null && PACKED_ATTN=flash_attention_2
throughput zero2 --zero_stage 2
throughput zero3 --zero_stage 3
throughput zero2-packed --zero_stage 2 --packing --attn_implementation "${PACKED_ATTN}"
throughput zero2-lora --zero_stage 2 --lora_r 16
# A 1.5B shape (28 layers): the MFU target is stated for this size.
throughput zero2-1.5b --zero_stage 2 --num_layers 28

echo "== trainer on the GPU: demo, ZeRO-3, default precision, 30 steps"
if "${PYTHON}" -c 'import aligner.datasets, mistral_common' 2>/dev/null; then
	timeout 180 bash scripts/sft-correction.sh --demo --output_dir "${RESULTS}/demo" \
		--num_gpus 1 --zero_stage 3 --max_steps 30 >"${RESULTS}/demo.log" 2>&1
	code=$?
	grep -E 'precision|training on|eval at|trained|saved model' "${RESULTS}/demo.log" | tail -n 8
	if [[ ${code} == 0 ]]; then
		"${PYTHON}" - "${RESULTS}/demo" <<-'EOF' || STATUS=1
			import sys
			import torch
			from transformers import AutoModelForCausalLM
			model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
			weights = next(model.parameters())
			assert torch.isfinite(weights).all(), "non-finite weights"
			print(f"reloaded {sys.argv[1]}: dtype {weights.dtype}, {model.num_parameters():,} params")
		EOF
	else
		echo "demo run failed (${code}); see ${RESULTS}/demo.log"
		STATUS=1
	fi
else
	echo "skipped: install the package (pip install -e .) to run the trainer check"
fi
exit "${STATUS}"
