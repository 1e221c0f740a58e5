"""Tokenize and mask: prompt + correction + EOS, with labels on the correction and EOS only.

The common case is one batched pass of the fast tokenizer over ``prompt + correction``; the
prompt/target boundary is found from character offsets, so the prompt is tokenized exactly as
it would be alone at inference. Where a token crosses the boundary (a tokenizer merging the
prompt's last characters with the correction's first), the two parts are tokenized separately
and concatenated, so the masked tokens are always exactly the prompt. Too-long samples shorten
the upstream answer inside the prompt (then the question), never the correction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase

from aligner.constants import IGNORE_INDEX
from aligner.prompts import PromptTemplate

KEPT, TRUNCATED, DROPPED = 0, 1, 2
"""Values of the ``status`` column: as is, prompt shortened, correction alone too long."""

TOKENIZED_COLUMNS = ("input_ids", "labels", "length", "prompt_length", "status", "split_boundary")


def special_prefix(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The ids the tokenizer puts before a text (BOS, if any); EOS is appended separately."""
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start])
    return []


class SampleEncoder:
    """Turns columns of records into ``input_ids`` / ``labels``; a ``datasets.map`` function."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, template: PromptTemplate, max_length: int
    ) -> None:
        self.backend = tokenizer.backend_tokenizer
        self.template = template
        self.max_length = max_length
        self.prefix = special_prefix(tokenizer)
        self.eos = tokenizer.eos_token_id
        self.min_prompt = {
            False: self._prompt_length(template.render("", "")),
            True: self._prompt_length(template.render_input("")),
        }

    def _prompt_length(self, prompt: str) -> int:
        return len(self.prefix) + len(self.backend.encode(prompt, add_special_tokens=False).ids)

    def render(self, fields: dict[str, str]) -> str:
        if "question" in fields:
            return self.template.render(fields["question"], fields["answer"])
        return self.template.render_input(fields["input"])

    def _encode_parts(self, prompt: str, correction: str) -> tuple[list[int], int]:
        prompt_ids = self.backend.encode(prompt, add_special_tokens=False).ids
        target_ids = self.backend.encode(correction, add_special_tokens=False).ids
        return prompt_ids + target_ids, len(prompt_ids)

    def _encode(
        self, prompt: str, correction: str, encoding: Any = None
    ) -> tuple[list[int], int, bool]:
        """Token ids of prompt + correction + EOS, the prompt's token count, and whether the
        boundary needed the two-part fallback."""
        if encoding is None:
            encoding = self.backend.encode(prompt + correction, add_special_tokens=False)
        boundary = len(prompt)
        token = encoding.char_to_token(boundary)
        split = False
        # token_to_chars, not .offsets: building every token's offsets costs more than the
        # two lookups the boundary needs.
        if (
            token is None
            or encoding.token_to_chars(token)[0] != boundary
            or (token > 0 and encoding.token_to_chars(token - 1)[1] > boundary)
        ):
            # The boundary character belongs to no token (e.g. dropped whitespace) or to one
            # that starts inside the prompt: fall back to tokenizing the two parts.
            ids, n_prompt = self._encode_parts(prompt, correction)
            split = True
        else:
            ids, n_prompt = encoding.ids, token
        ids = [*self.prefix, *ids, self.eos]
        return ids, len(self.prefix) + n_prompt, split

    def _truncate(
        self, fields: dict[str, str], correction: str
    ) -> tuple[list[int], int, bool] | None:
        """Shorten the answer, then the question (or the input), until the sample fits."""
        shrinkable = ("answer", "question") if "question" in fields else ("input",)
        fields = dict(fields)
        for name in shrinkable:
            while True:
                ids, n_prompt, split = self._encode(self.render(fields), correction)
                excess = len(ids) - self.max_length
                if excess <= 0:
                    return ids, n_prompt, split
                if not fields[name]:
                    break
                pieces = self.backend.encode(fields[name], add_special_tokens=False)
                keep = len(pieces.ids) - excess
                fields[name] = fields[name][: pieces.offsets[keep][0]] if keep > 0 else ""
        return None

    def __call__(self, batch: dict[str, Sequence[str | None]]) -> dict[str, list[Any]]:
        names = [n for n in ("question", "answer", "input") if n in batch]
        rows = [
            {n: batch[n][i] for n in names if batch[n][i] is not None}
            for i in range(len(batch["correction"]))
        ]
        prompts = [self.render(fields) for fields in rows]
        corrections = list(batch["correction"])
        encodings = self.backend.encode_batch(
            [p + c for p, c in zip(prompts, corrections, strict=True)], add_special_tokens=False
        )
        out: dict[str, list[Any]] = {column: [] for column in TOKENIZED_COLUMNS}
        for fields, prompt, correction, encoding in zip(
            rows, prompts, corrections, encodings, strict=True
        ):
            ids, n_prompt, split = self._encode(prompt, correction, encoding)
            status = KEPT
            if len(ids) > self.max_length:
                target = len(ids) - n_prompt
                fitted = None
                if target + self.min_prompt["question" not in fields] <= self.max_length:
                    fitted = self._truncate(fields, correction)
                if fitted is None:
                    ids, n_prompt, status = [], 0, DROPPED
                else:
                    (ids, n_prompt, split), status = fitted, TRUNCATED
            out["input_ids"].append(ids)
            out["labels"].append([IGNORE_INDEX] * n_prompt + ids[n_prompt:])
            out["length"].append(len(ids))
            out["prompt_length"].append(n_prompt)
            out["status"].append(status)
            out["split_boundary"].append(split)
        return out
