"""GPU throughput check: a random-init Llama-shaped model trained with the aligner loss and config.

Builds the model from a config (nothing is downloaded), feeds synthetic correction-shaped batches
(the first part of each sequence is prompt, masked out of the loss), and reports tokens/s per GPU,
model FLOPs utilisation and peak memory for one ZeRO stage. Run by scripts/gpu-check.sh.

Usage:
    python -m aligner.training.gpu_check --zero_stage 2 [--hidden_size 2048 --num_layers 16 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from aligner.training.distributed import ensure_process_env, init_process_group

PEAK_BF16_FLOPS = 989e12
"""Dense bf16 peak of an H100 / H200 SXM, per GPU."""


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--zero_stage", type=int, choices=(0, 1, 2, 3), default=2)
    parser.add_argument("--hidden_size", type=int, default=2048)
    parser.add_argument("--num_layers", type=int, default=16)
    parser.add_argument("--num_heads", type=int, default=16)
    parser.add_argument("--num_kv_heads", type=int, default=8)
    parser.add_argument("--intermediate_size", type=int, default=5632)
    parser.add_argument("--vocab_size", type=int, default=32000)
    parser.add_argument("--max_length", type=int, default=2048)
    parser.add_argument("--micro_batch_size", type=int, default=4)
    parser.add_argument("--prompt_share", type=float, default=0.6, help="masked share of tokens")
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument(
        "--packing",
        action="store_true",
        help="feed one padding-free row of micro_batch_size x max_length tokens made of samples "
        "of random lengths (restarting position_ids) instead of full-length rows",
    )
    parser.add_argument(
        "--attn_implementation", choices=("sdpa", "flash_attention_2", "eager"), default="sdpa"
    )
    parser.add_argument(
        "--lora_r", type=int, default=0, help="train LoRA adapters of this rank (0: every weight)"
    )
    parser.add_argument("--warmup_steps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--json", default=None, help="also append the result to this file")
    parser.add_argument(
        "--cpu_smoke",
        action="store_true",
        help="run on CPU (gloo) to check the script itself; use a tiny shape",
    )
    return parser.parse_args(argv)


def flops_per_token(
    params: int, layers: int, hidden: int, seq: float, *, frozen_weights: bool = False
) -> float:
    """6 x parameters (LM head included) plus the attention term 12 x layers x hidden x seq.

    With frozen weights (LoRA) the backward pass skips their weight gradients: 4 x parameters.
    Under packing, ``seq`` is the token-weighted mean sample length, sum(len^2) / sum(len).
    """
    return (4 if frozen_weights else 6) * params + 12 * layers * hidden * seq


def packed_lengths(total: int, max_length: int, generator: torch.Generator) -> list[int]:
    """Sample lengths, uniform in [max_length / 8, max_length], that fill ``total`` tokens."""
    lengths: list[int] = []
    while sum(lengths) < total:
        draw = int(torch.randint(max_length // 8, max_length + 1, (1,), generator=generator))
        lengths.append(min(draw, total - sum(lengths)))
    return lengths


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    on_gpu = not args.cpu_smoke
    if on_gpu and not torch.cuda.is_available():
        print("gpu_check: no CUDA device (--cpu_smoke checks the script on CPU)", file=sys.stderr)
        return 1
    ensure_process_env()

    import deepspeed
    from transformers import LlamaConfig, LlamaForCausalLM

    from aligner.constants import IGNORE_INDEX
    from aligner.training.ds_config import get_deepspeed_train_config
    from aligner.training.loss import CorrectionLM
    from aligner.training.optim import build_optimizer

    device = torch.device("cuda" if on_gpu else "cpu")
    init_process_group(on_cpu=not on_gpu, local_rank=int(os.environ["LOCAL_RANK"]), timeout_s=600)
    world_size = torch.distributed.get_world_size()
    rank = torch.distributed.get_rank()
    ds_config = get_deepspeed_train_config(
        micro_batch_size_per_gpu=args.micro_batch_size,
        gradient_accumulation_steps=1,
        world_size=world_size,
        stage=args.zero_stage,
        precision="bf16",
        on_cpu=not on_gpu,
    )
    config = LlamaConfig(
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.num_layers,
        num_attention_heads=args.num_heads,
        num_key_value_heads=args.num_kv_heads,
        max_position_embeddings=args.max_length,
        tie_word_embeddings=False,
        attn_implementation=args.attn_implementation,
    )
    torch.manual_seed(0)
    init = deepspeed.zero.Init(config_dict_or_path=ds_config) if args.zero_stage == 3 else None
    with init or device:
        lm = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
    params = sum(getattr(p, "ds_numel", p.numel()) for p in lm.parameters())
    if args.lora_r:
        from aligner.training.lora import LoraSettings, add_lora

        lm = add_lora(lm, LoraSettings(r=args.lora_r, alpha=2 * args.lora_r, dropout=0.0))
    model = CorrectionLM(lm)
    if args.gradient_checkpointing:
        model.enable_activation_checkpointing()
    optimizer = build_optimizer(
        model, lr=1e-5, weight_decay=0.0, betas=(0.9, 0.95), eps=1e-8, cpu_adam=False
    )
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)

    batch, seq = args.micro_batch_size, args.max_length
    generator = torch.Generator().manual_seed(rank)
    if args.packing:
        # One row of batch x seq tokens; each sample's first prompt_share is masked.
        lengths = packed_lengths(batch * seq, seq, generator)
        input_ids = torch.randint(0, args.vocab_size, (1, batch * seq), generator=generator)
        labels = input_ids.clone()
        position_ids = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
        starts = torch.tensor([0, *lengths[:-1]]).cumsum(0)
        for start, length in zip(starts.tolist(), lengths, strict=True):
            labels[0, start : start + max(1, int(length * args.prompt_share))] = IGNORE_INDEX
        inputs = {"input_ids": input_ids, "position_ids": position_ids, "labels": labels}
        attention_seq = sum(n * n for n in lengths) / sum(lengths)
    else:
        input_ids = torch.randint(0, args.vocab_size, (batch, seq), generator=generator)
        labels = input_ids.clone()
        labels[:, : int(seq * args.prompt_share)] = IGNORE_INDEX
        inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
        inputs["labels"] = labels
        attention_seq = seq
    inputs = {key: value.to(device) for key, value in inputs.items()}
    labels = inputs["labels"]
    targets = torch.tensor(float((labels[:, 1:] != IGNORE_INDEX).sum()), device=device)
    torch.distributed.all_reduce(targets)
    scale = world_size / targets.item()

    def step() -> float:
        out = engine(**inputs)
        engine.backward(out.loss_sum * scale)
        engine.step()
        return out.loss_sum.item() / out.tokens.item()

    for _ in range(args.warmup_steps):
        step()
    if on_gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    losses = [step() for _ in range(args.steps)]  # .item() waits for each step to finish
    seconds = (time.perf_counter() - started) / args.steps
    tokens_per_s = batch * seq / seconds
    flops = flops_per_token(
        params, args.num_layers, args.hidden_size, attention_seq, frozen_weights=args.lora_r > 0
    )
    result = {
        "zero_stage": args.zero_stage,
        "device": torch.cuda.get_device_name() if on_gpu else "cpu",
        "world_size": world_size,
        "params_b": round(params / 1e9, 3),
        "micro_batch": batch,
        "seq": seq,
        "packing": args.packing,
        "attn": args.attn_implementation,
        "lora_r": args.lora_r,
        "gradient_checkpointing": args.gradient_checkpointing,
        "step_s": round(seconds, 4),
        "tokens_per_s_per_gpu": round(tokens_per_s),
        "mfu": round(tokens_per_s * flops / PEAK_BF16_FLOPS, 4),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if on_gpu else None,
        "loss_first_last": [round(losses[0], 4), round(losses[-1], 4)],
    }
    if rank == 0:
        print("GPU_CHECK " + json.dumps(result), flush=True)
        if args.json:
            with open(args.json, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(result) + "\n")
    torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
