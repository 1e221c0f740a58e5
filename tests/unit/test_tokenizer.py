"""Tokenizer loading: a pad id without new embeddings, and a fingerprint for the cache."""

from __future__ import annotations

from aligner.tokenizer import load_tokenizer, tokenizer_fingerprint


def test_missing_pad_token_is_borrowed_without_growing_the_vocabulary(
    bpe_tokenizer_dir, llama_tokenizer_dir
) -> None:
    bpe = load_tokenizer(str(bpe_tokenizer_dir))
    assert bpe.pad_token_id == bpe.eos_token_id and len(bpe) == bpe.vocab_size
    llama = load_tokenizer(str(llama_tokenizer_dir))
    assert llama.pad_token_id == llama.unk_token_id and len(llama) == 32000


def test_pad_token_is_added_only_when_asked(bpe_tokenizer_dir) -> None:
    tokenizer = load_tokenizer(str(bpe_tokenizer_dir), add_pad_token=True)
    assert tokenizer.pad_token == "<pad>" and tokenizer.pad_token_id == len(tokenizer) - 1


def test_fingerprint_tells_tokenizers_apart(
    bpe_tokenizer, llama_tokenizer, llama_tokenizer_dir
) -> None:
    assert tokenizer_fingerprint(bpe_tokenizer) != tokenizer_fingerprint(llama_tokenizer)
    again = load_tokenizer(str(llama_tokenizer_dir))
    assert tokenizer_fingerprint(again) == tokenizer_fingerprint(llama_tokenizer)
