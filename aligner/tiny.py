"""Tiny offline assets: a real Llama-family tokenizer and a small random model from a config.

Nothing here downloads anything. The tokenizer is the SentencePiece model that the PyPI package
``mistral-common`` ships (the 32k-token Llama/Mistral v1 vocabulary); the model is a randomly
initialised Llama of a few million parameters. The demo and the tests build on these.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

TOKENIZER_CONFIG = {
    "tokenizer_class": "LlamaTokenizer",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "add_bos_token": True,
    "add_eos_token": False,
    "legacy": False,
    "model_max_length": 4096,
}


def sentencepiece_model_path() -> Path:
    import mistral_common

    path = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: mistral-common no longer ships tokenizer.model.v1")
    return path


def write_llama_tokenizer(directory: str | Path) -> Path:
    """Write a loadable Llama tokenizer folder (SentencePiece model + converted tokenizer.json)."""
    from transformers import AutoTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if not (directory / "tokenizer.json").is_file():
        shutil.copyfile(sentencepiece_model_path(), directory / "tokenizer.model")
        (directory / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2))
        # Converting the SentencePiece model takes seconds; save the fast tokenizer once.
        AutoTokenizer.from_pretrained(directory).save_pretrained(directory)
    return directory


def write_tiny_llama(
    directory: str | Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 128,
    max_position_embeddings: int = 2048,
    seed: int = 0,
) -> Path:
    """Write a random-init tiny Llama with the Llama tokenizer into ``directory``."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    directory = write_llama_tokenizer(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(directory)
    return directory
