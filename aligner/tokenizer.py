"""Loading a tokenizer, fingerprinting it for the data cache, and the tokenization rules that
training and inference share: the special prefix, and record text tokenized as plain text."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from aligner.errors import UserError
from aligner.model_files import LOAD_ERRORS, TOKENIZER_FILES, check_source, load_failure

PAD_TOKEN = "<pad>"


class TokenizerError(UserError):
    """A tokenizer that cannot be loaded or used; one line naming its flag."""


def load_tokenizer(
    name_or_path: str,
    *,
    trust_remote_code: bool = False,
    add_pad_token: bool = False,
    flag: str = "--model_name_or_path",
) -> PreTrainedTokenizerBase:
    """Load a fast tokenizer and make sure it has a pad id.

    A tokenizer without a pad token borrows UNK (else EOS) as its pad id: the attention mask is
    built from sequence lengths and padded labels are IGNORE_INDEX, so the pad id's value is
    never trained on and the embeddings need no new row. ``add_pad_token`` adds a real
    ``<pad>`` token instead; the caller must then resize the model's embeddings.
    """
    check_source(name_or_path, flag)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            name_or_path, trust_remote_code=trust_remote_code, use_fast=True
        )
    except LOAD_ERRORS as error:
        raise TokenizerError(load_failure(name_or_path, flag, error, TOKENIZER_FILES)) from None
    if not tokenizer.is_fast:
        raise TokenizerError(
            f"{name_or_path}: a fast (Rust) tokenizer is required for offset-based masking"
        )
    if tokenizer.eos_token_id is None:
        raise TokenizerError(f"{name_or_path}: the tokenizer has no EOS token")
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


def special_prefix(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The ids the tokenizer puts before a text (BOS, if any); EOS is appended separately."""
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start])
    return []


SENTINEL_BASE = 0x100000
"""First code point of the stand-ins for a template's control tokens (Supplementary Private Use
Area-B, which no tokenizer or text uses)."""
_RESERVED = re.compile(f"[{chr(SENTINEL_BASE)}-{chr(SENTINEL_BASE + 0xFFFD)}]")


class PieceEncoder:
    """Tokenizes rendered pieces so that only the template's own markers are control tokens.

    Record text that spells ``</s>``, ``<|im_end|>`` or ``[INST]`` is tokenized as ordinary
    characters: otherwise a correction that mentions ``</s>`` teaches the model to stop mid-answer,
    and a user turn can forge a new turn. Control tokens are the tokenizer's special tokens and any
    added token written in the template's own text (``template_text``).

    How: a copy of the tokenizer encodes no control token from text at all; in the template's
    pieces each control token is replaced by a one-character stand-in that the copy knows as an
    ordinary added token, and its id is mapped back afterwards. The text between markers is thus
    split and tokenized exactly as the tokenizer itself would (same pre-tokenizer and the same
    "start of text" rules), so a prompt without such strings in its record text gets exactly the
    ids ``tokenizer(prompt)`` gives. transformers' ``apply_chat_template(sanitize_control_tokens=
    True)`` does the same for chat templates only, per record, and only in recent versions; this
    also serves string templates and batched encoding.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, template_text: str = "") -> None:
        from tokenizers import AddedToken, Tokenizer

        added = tokenizer.added_tokens_decoder  # id -> AddedToken
        control = {
            token_id: token
            for token_id, token in added.items()
            if token.special or (token.content.strip() and token.content in template_text)
        }
        spec = json.loads(tokenizer.backend_tokenizer.to_str())
        for entry in spec.get("added_tokens", []):
            if entry["id"] in control:
                entry["special"] = True  # so that encode_special_tokens covers it in record text
        self.backend = Tokenizer.from_str(json.dumps(spec))
        self.backend.encode_special_tokens = True
        ordered = sorted(control.items(), key=lambda item: len(item[1].content), reverse=True)
        self._stand_in: dict[str, str] = {}
        stand_ins = []
        for number, (_, token) in enumerate(ordered):
            stand_in = chr(SENTINEL_BASE + number)
            self._stand_in[token.content] = stand_in
            stand_ins.append(
                AddedToken(
                    stand_in,
                    special=False,
                    normalized=False,
                    lstrip=token.lstrip,
                    rstrip=token.rstrip,
                    single_word=token.single_word,
                )
            )
        self.backend.add_tokens(stand_ins)
        self._floor = self.backend.get_vocab_size(with_added_tokens=True) - len(stand_ins)
        self._real_id = {
            self.backend.token_to_id(self._stand_in[token.content]): token_id
            for token_id, token in ordered
        }
        pattern = "|".join(re.escape(token.content) for _, token in ordered)
        self._control = re.compile(pattern) if pattern else None
        self.control_ids = frozenset(control)

    def template_text(self, text: str) -> str:
        """Template text with each control token replaced by its stand-in."""
        if self._control is None:
            return text
        return self._control.sub(lambda match: self._stand_in[match.group()], text)

    @staticmethod
    def reserved_character(text: str) -> str | None:
        """A character of record text that would be taken for a control token, or None."""
        match = _RESERVED.search(text)
        return None if match is None else f"U+{ord(match.group()):06X}"

    def join(self, pieces: Sequence[tuple[str, bool]]) -> str:
        """The text to encode: record pieces as they are, template pieces with stand-ins."""
        return "".join(
            text if from_record else self.template_text(text) for text, from_record in pieces
        )

    def ids(self, encoding: Any) -> list[int]:
        """An encoding's ids, with the stand-ins turned back into the control tokens' ids."""
        ids = encoding.ids
        if ids and max(ids) >= self._floor:
            return [self._real_id.get(token_id, token_id) for token_id in ids]
        return list(ids)

    def encode(self, text: str) -> Any:
        return self.backend.encode(text, add_special_tokens=False)

    def encode_batch(self, texts: list[str]) -> list[Any]:
        return self.backend.encode_batch(texts, add_special_tokens=False)
