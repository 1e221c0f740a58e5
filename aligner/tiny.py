"""Tiny offline assets: real tokenizers of two families and small random models of each family.

Nothing here downloads anything. Both tokenizers ship in the PyPI package ``mistral-common``: the
SentencePiece model of the 32k-token Llama/Mistral v1 vocabulary, and Tekken, a 131k-token
tiktoken-style byte-level BPE of the kind Llama 3, Qwen and Mistral NeMo use. The models are
randomly initialised from ``AutoConfig.for_model`` at a few million parameters, one per family in
FAMILIES. The demo, the benchmarks and the tests build on these.

Usage:
    python -m aligner.tiny FOLDER [--family llama] [--reward] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


TEKKEN_TOKENIZER_CONFIG = {
    # transformers reads tekken.json itself; the special tokens it holds must be named here.
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "model_max_length": 131072,
}

MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] + '\\n\\n' %}{% set messages = messages[1:] %}"
    "{% else %}{% set system = '' %}{% endif %}{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{{ '[INST]' + (system if loop.first else '') + message['content'] + '[/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% endif %}{% endfor %}"
)
"""A Mistral-style chat template: ``[INST]``/``[/INST]`` around user turns (a system message
opens the first one), EOS after replies."""


def _mistral_common_file(name: str) -> Path:
    import mistral_common

    path = Path(mistral_common.__file__).parent / "data" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: mistral-common no longer ships {name}")
    return path


def sentencepiece_model_path() -> Path:
    return _mistral_common_file("tokenizer.model.v1")


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


def write_tekken_tokenizer(
    directory: str | Path, *, chat_template: str | None = MISTRAL_CHAT_TEMPLATE
) -> Path:
    """Write a loadable Tekken tokenizer folder (131k byte-level BPE), with a chat template."""
    from transformers import AutoTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if not (directory / "tokenizer.json").is_file():
        shutil.copyfile(_mistral_common_file("tekken_240911.json"), directory / "tekken.json")
        config = dict(TEKKEN_TOKENIZER_CONFIG)
        if chat_template is not None:
            config["chat_template"] = chat_template
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
        # Converting tekken.json takes seconds; save the fast tokenizer once, then drop the
        # source so that later loads read tokenizer.json.
        AutoTokenizer.from_pretrained(directory).save_pretrained(directory)
        (directory / "tekken.json").unlink()
    return directory


def tiny_llama_config(
    tokenizer: object,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int | None = None,
    intermediate_size: int = 128,
    max_position_embeddings: int = 2048,
    **extra: object,
):
    """A tiny ``LlamaConfig`` for ``tokenizer``'s vocabulary and special tokens; fewer
    ``num_kv_heads`` than ``num_heads`` gives grouped-query attention."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads or num_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **extra,
    )


@dataclass(frozen=True)
class TinyFamily:
    """How one model family is built at a tiny size, keeping the traits that set it apart."""

    model_type: str
    """The ``AutoConfig.for_model`` name."""
    tokenizer: str
    """``llama`` (SentencePiece 32k) or ``tekken`` (byte-level BPE 131k)."""
    tie_word_embeddings: bool
    """What the family's small releases do (Qwen2.5-0.5B, Qwen3-0.6B and Gemma tie)."""
    config: dict[str, Any] = field(default_factory=dict)
    """Family-specific settings: grouped KV heads, head size, attention windows, layer types."""
    spare_rows: int = 0
    """Embedding rows beyond the tokenizer's tokens (Phi-3 and Qwen pad their tables)."""


# Attention windows are shrunk to 32 tokens so that tests' 128-token rows cross them.
_WINDOW = 32
_GEMMA = {
    "num_key_value_heads": 2,
    "head_dim": 16,
    "query_pre_attn_scalar": 16,
    "sliding_window": _WINDOW,
}
FAMILIES: dict[str, TinyFamily] = {
    "llama": TinyFamily("llama", "llama", False),
    "mistral": TinyFamily(
        "mistral", "llama", False, {"num_key_value_heads": 2, "sliding_window": _WINDOW}
    ),
    "qwen2": TinyFamily("qwen2", "tekken", True, {"num_key_value_heads": 2}, spare_rows=64),
    "qwen3": TinyFamily("qwen3", "tekken", True, {"num_key_value_heads": 2, "head_dim": 16}),
    "gemma2": TinyFamily("gemma2", "llama", True, _GEMMA),
    "gemma3": TinyFamily(
        "gemma3_text",
        "llama",
        True,
        {**_GEMMA, "layer_types": ["sliding_attention", "full_attention"]},
    ),
    "phi3": TinyFamily("phi3", "llama", False, {"num_key_value_heads": 2}, spare_rows=64),
    "gpt_neox": TinyFamily("gpt_neox", "tekken", False),
}
"""The model families the toolkit is tested on, by the name tests and benchmarks use."""

_TOKENIZER_WRITERS = {"llama": write_llama_tokenizer, "tekken": write_tekken_tokenizer}


def write_tiny_model(
    directory: str | Path,
    family: str = "llama",
    *,
    tokenizer_dir: str | Path | None = None,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 128,
    max_position_embeddings: int = 2048,
    seed: int = 0,
) -> Path:
    """Write a random-init tiny model of ``family`` (a key of FAMILIES) with its tokenizer.

    ``tokenizer_dir`` is an already written tokenizer folder of the family's kind to copy
    (converting Tekken takes seconds); by default the tokenizer is written afresh.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    spec = FAMILIES[family]
    directory = Path(directory)
    if tokenizer_dir is None:
        _TOKENIZER_WRITERS[spec.tokenizer](directory)
    else:
        shutil.copytree(tokenizer_dir, directory, dirs_exist_ok=True)
    config = AutoConfig.for_model(
        spec.model_type,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        # No pad id: the tokenizer's pad is borrowed (UNK or EOS), and a pad id in the config
        # would make the embedding freeze that token's row at zero.
        pad_token_id=None,
        tie_word_embeddings=spec.tie_word_embeddings,
        **spec.config,
    )
    # The tokenizer class transformers picks can follow the config's model type (Qwen2's adds
    # a pad token): count the tokens as this folder will load them.
    config.save_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    config.vocab_size = len(tokenizer) + spec.spare_rows
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(directory)
    return directory


def write_tiny_llama(directory: str | Path, **sizes: int) -> Path:
    """Write a random-init tiny Llama with the Llama tokenizer into ``directory``; ``sizes`` are
    those of ``write_tiny_model``."""
    return write_tiny_model(directory, "llama", **sizes)


def write_tiny_reward_model(directory: str | Path, *, seed: int = 0, **sizes: int) -> Path:
    """Write a random-init tiny Llama reward model (one output) with the Llama tokenizer.

    ``sizes`` are those of ``tiny_llama_config`` (``hidden_size``, ``num_layers``, ...).
    """
    import torch
    from transformers import AutoTokenizer, LlamaForSequenceClassification

    directory = write_llama_tokenizer(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    config = tiny_llama_config(
        tokenizer, num_labels=1, pad_token_id=tokenizer.eos_token_id, **sizes
    )
    torch.manual_seed(seed)
    LlamaForSequenceClassification(config).save_pretrained(directory)
    return directory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aligner.tiny",
        description="Write a tiny random-init model with a real tokenizer into a new folder, to "
        "try the commands offline (nothing is downloaded).",
    )
    parser.add_argument("folder", help="where to write it: a new or empty folder")
    parser.add_argument("--family", default="llama", choices=sorted(FAMILIES))
    parser.add_argument(
        "--reward", action="store_true", help="a Llama reward model (one output) instead"
    )
    parser.add_argument("--seed", type=int, default=0, help="the seed of the random weights")
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        parser.error(f"{folder} exists and is not an empty folder")
    if args.reward and args.family != "llama":
        parser.error("--reward writes a Llama reward model: leave out --family")
    written = (
        write_tiny_reward_model(folder) if args.reward else write_tiny_model(folder, args.family)
    )
    print(written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
