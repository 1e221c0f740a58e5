"""Reward and cost models: loading one, rendering (context, reply) for it, scoring in batches.

A reward (or cost) model is any ``AutoModelForSequenceClassification`` checkpoint with one
output. A pair is rendered with the model tokenizer's chat template when it has one (the
context's turns, then the reply as the assistant turn), else in the plain format of the Beaver
reward and cost models:

    BEGINNING OF CONVERSATION: USER: {question} ASSISTANT:{reply}

(earlier turns of a conversation continue the same pattern:
``USER: q1 ASSISTANT:a1 USER: q2 ASSISTANT:{reply}``; a system turn follows the first marker).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from accelerate.utils.memory import clear_device_cache, should_reduce_batch_size
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from aligner.errors import UserError
from aligner.inference.model_loading import resolve_device, resolve_dtype
from aligner.inference.pairs import Context, as_messages
from aligner.model_files import check_embedding_rows

PLAIN_BEGIN = "BEGINNING OF CONVERSATION: "
PLAIN_USER = "USER: {content} ASSISTANT:"


class ScoringError(UserError):
    """A reward or cost model that cannot be used, or a pair it cannot score."""


def plain_conversation(context: Context, reply: str) -> str:
    """The pair in the plain format (see the module docstring)."""
    parts = [PLAIN_BEGIN]
    for turn in as_messages(context):
        if turn["role"] == "user":
            parts.append(PLAIN_USER.format(content=turn["content"]))
        else:
            parts.append(turn["content"] + " ")
    parts.append(reply)
    return "".join(parts)


def content_spans(text: str, contents: list[str]) -> list[tuple[int, int]]:
    """Where each message's content sits in the rendered text, found in order."""
    spans, start = [], 0
    for content in contents:
        found = text.find(content, start) if content else -1
        if found >= 0:
            spans.append((found, found + len(content)))
            start = found + len(content)
    return spans


@dataclass
class RewardModel:
    """A loaded sequence-classification model with one output, and how to feed it."""

    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    batch_size: int
    """Sequences per forward pass; halved for good after an out-of-memory batch."""

    @property
    def reads_last_token(self) -> bool:
        # Decoder reward models (Llama, Qwen, Gemma, GPT-2, ...) put a ``score`` head on the
        # last real token; encoder classifiers (BERT, DeBERTa) pool their first token instead.
        return hasattr(self.model, "score") and self.model.base_model is not self.model

    @property
    def max_length(self) -> int | None:
        return getattr(self.model.config, "max_position_embeddings", None)

    def encode(self, contexts: list[Context], replies: list[str]) -> list[list[int]]:
        """Token ids of each (context, reply), rendered for this model (see the module doc)."""
        tokenizer = self.tokenizer
        if not tokenizer.chat_template:
            texts = [plain_conversation(c, r) for c, r in zip(contexts, replies, strict=True)]
            # Record text is text: a literal "</s>" in an answer is not an end of sequence.
            return tokenizer(texts, split_special_tokens=True)["input_ids"]
        conversations = [
            [*as_messages(c), {"role": "assistant", "content": r}]
            for c, r in zip(contexts, replies, strict=True)
        ]
        texts = [tokenizer.apply_chat_template(conv, tokenize=False) for conv in conversations]
        encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        special = {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
        sequences = []
        for text, conversation, ids, offsets in zip(
            texts, conversations, encoded["input_ids"], encoded["offset_mapping"], strict=True
        ):
            spans = content_spans(text, [turn["content"] for turn in conversation])
            forged = any(
                token in special and any(a <= s and e <= b for a, b in spans)
                for token, (s, e) in zip(ids, offsets, strict=True)
            )
            sequences.append(self._encode_as_text(text, spans) if forged else ids)
        return sequences

    def _encode_as_text(self, text: str, spans: list[tuple[int, int]]) -> list[int]:
        """Tokenize the template's parts as usual and the messages' contents as plain text.

        Only for texts where a content holds a control-token string (``<|im_end|>``): the
        common case keeps the one-pass tokenization the reward model was trained with.
        """
        ids, position = [], 0
        for start, end in spans:
            ids += self.tokenizer(text[position:start], add_special_tokens=False)["input_ids"]
            content = self.tokenizer(
                text[start:end], add_special_tokens=False, split_special_tokens=True
            )
            ids += content["input_ids"]
            position = end
        return ids + self.tokenizer(text[position:], add_special_tokens=False)["input_ids"]

    def score(self, sequences: list[list[int]]) -> list[float]:
        """One score per token sequence; equal sequences are scored once, so score equally."""
        unique = sorted({tuple(ids) for ids in sequences}, key=len, reverse=True)
        scores: dict[tuple[int, ...], float] = {}
        start = 0
        # Longest first: neighbours pad little, and a batch too large fails at once.
        while start < len(unique):
            batch = unique[start : start + self.batch_size]
            try:
                values = self.forward([list(ids) for ids in batch])
            except RuntimeError as error:
                if not should_reduce_batch_size(error):
                    raise
                self._shrink(len(batch[0]))
                continue
            scores.update(zip(batch, values, strict=True))
            start += len(batch)
        return [scores[tuple(ids)] for ids in sequences]

    def _shrink(self, length: int) -> None:
        # Accelerate's find_executable_batch_size restarts the whole function and its back-off
        # factor differs between versions; this halves at the failing batch and goes on.
        clear_device_cache(garbage_collection=True)
        if self.batch_size == 1:
            raise ScoringError(
                f"{self.name}: one sequence of {length} tokens does not fit in memory on "
                f"{self.model.device}; use a smaller --dtype or --device_map auto"
            )
        self.batch_size //= 2
        print(
            f"{self.name}: out of memory; --batch_size lowered to {self.batch_size}",
            file=sys.stderr,
        )

    @torch.inference_mode()
    def forward(self, batch: list[list[int]]) -> list[float]:
        """Scores of one batch, padded on the tokenizer's side and masked by length."""
        width = max(len(ids) for ids in batch)
        left = self.tokenizer.padding_side == "left" and self.reads_last_token
        pad_id = self.tokenizer.pad_token_id or 0
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # (B, L)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)  # (B, L)
        for row, ids in enumerate(batch):
            columns = slice(width - len(ids), width) if left else slice(0, len(ids))
            input_ids[row, columns] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, columns] = 1
        device = self.model.device
        if not self.reads_last_token:
            # Encoders pool the first token: pad on the right whatever the tokenizer says.
            logits = self.model(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)
            ).logits  # (B, 1)
            return logits[:, 0].float().tolist()
        # The model's own forward finds the last token by comparing ids with the pad id, which
        # is wrong wherever the pad id is a real token (pad = EOS, and a template ends with
        # EOS). The last real token is found here from the lengths, and positions count real
        # tokens only, so that left padding does not shift them.
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, L)
        hidden = self.model.base_model(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            position_ids=position_ids.to(device),
            use_cache=False,
        ).last_hidden_state  # (B, L, H)
        last = [width - 1 if left else len(ids) - 1 for ids in batch]
        rows = torch.arange(len(batch), device=hidden.device)
        picked = hidden[rows, torch.tensor(last, device=hidden.device)]  # (B, H)
        return self.model.score(picked)[:, 0].float().tolist()


def load_reward_model(
    name: str,
    path: str,
    *,
    batch_size: int,
    device: str = "auto",
    dtype: str = "auto",
    device_map: str | None = None,
    trust_remote_code: bool = False,
    local_rank: int = 0,
) -> RewardModel:
    """Load a reward or cost model (``name`` says which flag named it, for messages)."""
    if device_map:
        placement = {"device_map": device_map}
        target = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        placement, target = {}, resolve_device(device, local_rank)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model, info = AutoModelForSequenceClassification.from_pretrained(
            path,
            dtype=resolve_dtype(dtype, target),
            trust_remote_code=trust_remote_code,
            output_loading_info=True,
            **placement,
        )
    except (OSError, ValueError) as error:
        # transformers explains a missing or broken checkpoint over several lines: keep one.
        raise ScoringError(f"{name} {path}: {str(error).strip().splitlines()[0]}") from None
    if not tokenizer.is_fast:
        raise ScoringError(f"{name} {path}: a fast (Rust) tokenizer is required")
    # A causal LM loads as a classifier with a freshly random head: refuse it, it would score.
    head = sorted(
        key for key in info["missing_keys"] if not key.startswith(model.base_model_prefix + ".")
    )
    if head:
        raise ScoringError(
            f"{name} {path}: not a reward model: the checkpoint lacks its classification head "
            f"({', '.join(head)})"
        )
    if model.config.num_labels != 1:
        raise ScoringError(
            f"{name} {path}: a reward or cost model has one output; this one has "
            f"{model.config.num_labels} (num_labels)"
        )
    rows = model.get_input_embeddings().num_embeddings
    check_embedding_rows(f"{name} {path}", len(tokenizer), rows)
    if not device_map:
        model = model.to(target)
    return RewardModel(name, model.eval(), tokenizer, batch_size)
