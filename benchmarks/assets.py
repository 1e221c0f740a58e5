"""The GPU check's offline inputs: a random Llama of a given shape, its tokenizer, and records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from aligner.tiny import tiny_llama_config, write_llama_tokenizer
from benchmarks.synthetic import synthetic_records

COUNTS_FILE = "parameter_counts.json"


def mute_token(model: torch.nn.Module, token_id: int) -> None:
    """Zero ``token_id``'s row of the output layer, so that its logit is exactly 0.

    A random model's other logits are spread around 0, so the largest of them is positive and
    greedy decoding never picks this token: with EOS muted, every generation runs to its
    ``max_new_tokens`` and its token count is known.
    """
    with torch.no_grad():
        model.get_output_embeddings().weight[token_id].zero_()


def parameter_counts(model: torch.nn.Module) -> dict[str, Any]:
    """What FLOP counts need: every parameter, the input embedding and the output layer."""
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    config = model.config
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "embedding": embedding.numel(),
        "lm_head": head.numel(),
        "tied": head is embedding,
        "layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
        "vocab_size": config.vocab_size,
    }


def write_bench_model(
    directory: Path, shape: dict[str, int], *, dtype: torch.dtype, device: str, seed: int = 0
) -> dict[str, Any]:
    """Write a random-init Llama of ``shape`` with the 32k Llama tokenizer and EOS muted;
    returns its parameter counts (also saved as ``COUNTS_FILE``)."""
    write_llama_tokenizer(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    config = tiny_llama_config(tokenizer, **shape, tie_word_embeddings=False)
    torch.manual_seed(seed)
    # Initialising on the accelerator takes a moment where a 1B model takes a minute on a CPU.
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    mute_token(model, tokenizer.eos_token_id)
    model.save_pretrained(directory)
    counts = parameter_counts(model)
    (directory / COUNTS_FILE).write_text(json.dumps(counts, indent=2))
    return counts


def write_records(path: Path, count: int, seed: int = 0) -> Path:
    """``count`` synthetic correction records (median ~400 tokens, tail to 2k) as JSON Lines."""
    records = synthetic_records(count, seed=seed)
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path
