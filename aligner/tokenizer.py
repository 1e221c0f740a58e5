"""Loading a tokenizer for training or inference, and fingerprinting it for the data cache."""

from __future__ import annotations

import hashlib
import json

from transformers import AutoTokenizer, PreTrainedTokenizerBase

PAD_TOKEN = "<pad>"


def load_tokenizer(
    name_or_path: str, *, trust_remote_code: bool = False, add_pad_token: bool = False
) -> PreTrainedTokenizerBase:
    """Load a fast tokenizer and make sure it has a pad id.

    A tokenizer without a pad token borrows UNK (else EOS) as its pad id: the attention mask is
    built from sequence lengths and padded labels are IGNORE_INDEX, so the pad id's value is
    never trained on and the embeddings need no new row. ``add_pad_token`` adds a real
    ``<pad>`` token instead; the caller must then resize the model's embeddings.
    """
    tokenizer = AutoTokenizer.from_pretrained(
        name_or_path, trust_remote_code=trust_remote_code, use_fast=True
    )
    if not tokenizer.is_fast:
        raise ValueError(
            f"{name_or_path}: a fast (Rust) tokenizer is required for offset-based masking"
        )
    if tokenizer.eos_token_id is None:
        raise ValueError(f"{name_or_path}: the tokenizer has no EOS token")
    if tokenizer.pad_token_id is None:
        if add_pad_token:
            tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
        elif tokenizer.unk_token_id is not None:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash that changes whenever the tokenizer would produce different ids."""
    digest = hashlib.sha256()
    digest.update(tokenizer.backend_tokenizer.to_str().encode())
    special = {
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "pad": tokenizer.pad_token_id,
        "class": type(tokenizer).__name__,
    }
    digest.update(json.dumps(special, sort_keys=True).encode())
    return digest.hexdigest()[:16]
