"""Tokenize and mask: prompt + correction + end of turn, with labels on the target only.

A record becomes a ``Request`` (a conversation ending with a user turn and the upstream answer to
it, or an already formatted user input), which a template renders into pieces (see
``aligner.prompts`` and ``aligner.chat``). The common case is one batched pass of the tokenizer
over ``prompt + correction + suffix``; the boundaries are found from character offsets, so the
prompt is tokenized exactly as it is alone at inference. Where a token crosses a boundary (a
tokenizer merging the prompt's last characters with the correction's first), the parts are
tokenized separately and concatenated, so the masked tokens are always exactly the prompt.

The target is the correction and what follows it: EOS for a string template; for a chat
template, what the template writes after a reply (its end-of-turn), plus EOS only if that holds
no control token. Record text is tokenized as plain text (``aligner.tokenizer.PieceEncoder``).

Too-long samples drop the conversation's oldest exchanges first, then shorten the upstream
answer, then the question (or the input); the correction is never cut. A sample whose correction
alone does not fit is dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from transformers import PreTrainedTokenizerBase

from aligner.chat import ChatRenderer, TemplateTimeout
from aligner.constants import IGNORE_INDEX
from aligner.datasets.base import DataError
from aligner.prompts import (
    ChatTemplate,
    Piece,
    PromptTemplate,
    Template,
    TemplateError,
    Turn,
    resolve_template,
    serialize_conversation,
)
from aligner.tokenizer import PieceEncoder, special_prefix

KEPT, TRUNCATED, DROPPED, UNRENDERABLE = 0, 1, 2, 3
"""Values of the ``status`` column: as is, prompt shortened, correction alone too long, and not
rendered by the template (the ``problem`` column says why)."""
TURNS_DROPPED, ANSWER_SHORTENED, QUESTION_SHORTENED = 1, 2, 4
"""Bits of the ``shortened`` column: what truncation took from the prompt."""

TOKENIZED_COLUMNS = (
    "input_ids",
    "labels",
    "length",
    "prompt_length",
    "status",
    "shortened",
    "split_boundary",
    "problem",
)


@dataclass(frozen=True)
class Request:
    """What the aligner is asked to correct.

    ``turns`` is the conversation up to and including the user turn that ``answer`` replies to
    (a single-turn record is one user turn), and the template's correction instruction frames
    them. Without an ``answer`` the turns are the whole request as the original toolkit wrote
    it: a formatted ``input`` (one user turn) or a ``dialogue``, rendered without instruction.
    """

    turns: tuple[Turn, ...]
    answer: str | None = None

    @property
    def instructed(self) -> bool:
        return self.answer is not None

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Request:
        """From a record's ``question`` or ``messages`` and ``answer``; or its ``input`` or
        ``dialogue`` (alternate user and assistant lines, ending with a user line)."""
        if record.get("messages") is not None:
            turns = tuple(
                {"role": turn["role"], "content": turn["content"]} for turn in record["messages"]
            )
            return cls(turns, record.get("answer"))
        if record.get("question") is not None:
            return cls(({"role": "user", "content": record["question"]},), record.get("answer"))
        if record.get("dialogue") is not None:
            roles = ("user", "assistant")
            lines = record["dialogue"]
            return cls(tuple({"role": roles[i % 2], "content": t} for i, t in enumerate(lines)))
        return cls(({"role": "user", "content": record["input"]},))

    def capped(self, limit: int) -> Request:
        """Every text cut to ``limit`` characters: more than that never fits anyway."""
        turns = tuple({**turn, "content": turn["content"][:limit]} for turn in self.turns)
        answer = None if self.answer is None else self.answer[:limit]
        return replace(self, turns=turns, answer=answer)

    def without_oldest_exchange(self) -> Request | None:
        """The request without its oldest user turn and the replies to it (system messages and
        the last user turn stay), or None when there is nothing left to drop."""
        users = [i for i, turn in enumerate(self.turns) if turn["role"] == "user"]
        if len(users) < 2:
            return None
        first, second = users[0], users[1]
        kept = [turn for i, turn in enumerate(self.turns) if not first <= i < second]
        return replace(self, turns=tuple(kept))

    @property
    def shrinkable(self) -> tuple[tuple[str, int], ...]:
        """The texts truncation may shorten, in order, with the bit that records it."""
        question = ("question", QUESTION_SHORTENED)
        return (("answer", ANSWER_SHORTENED), question) if self.instructed else (question,)

    def text(self, field: str) -> str:
        return self.turns[-1]["content"] if field == "question" else self.answer or ""

    def with_text(self, field: str, value: str) -> Request:
        if field == "question":
            return replace(self, turns=(*self.turns[:-1], {**self.turns[-1], "content": value}))
        return replace(self, answer=value)

    def minimal(self) -> Request:
        """The shortest prompt truncation can reach: no history and empty texts."""
        request = self
        while (shorter := request.without_oldest_exchange()) is not None:
            request = shorter
        for field, _ in self.shrinkable:
            request = request.with_text(field, "")
        return request


@dataclass(frozen=True)
class Rendered:
    prompt: list[Piece]
    target: str
    """The correction as the template writes it."""
    suffix: list[Piece]
    """The template's text after the correction."""


class StringRenderer:
    """Requests through a string template; the conversation fills the question slot."""

    add_prefix = True
    """String templates hold no BOS: the tokenizer's special prefix goes before them."""

    def __init__(self, template: PromptTemplate, eos_token: str) -> None:
        self.template = template
        self.eos_token = eos_token
        self.template_text = "".join(
            (template.begin, template.user, template.assistant, template.instruction)
        )

    def render(self, request: Request, correction: str | None) -> Rendered:
        if request.instructed:
            question = serialize_conversation(list(request.turns))
            prompt = self.template.pieces(question, request.answer or "")
        else:
            prompt = self.template.dialogue_pieces(request.turns, self.eos_token)
        return Rendered([piece for piece in prompt if piece[0]], correction or "", [])


class ChatRequestRenderer:
    """Requests through the tokenizer's chat template; every turn is a turn of the template."""

    add_prefix = False
    """Chat templates write their own BOS."""

    def __init__(self, template: ChatTemplate, tokenizer: PreTrainedTokenizerBase) -> None:
        self.chat = ChatRenderer(template, tokenizer)
        self.template_text = template.chat_template or ""

    def render(self, request: Request, correction: str | None) -> Rendered:
        messages = self.chat.messages(list(request.turns), request.answer)
        rendering = self.chat.render(messages, correction)
        suffix = [(rendering.suffix, False)] if rendering.suffix else []
        return Rendered(rendering.prompt, rendering.correction, suffix)


def _longest_token_chars(tokenizer: PreTrainedTokenizerBase) -> int:
    """An upper bound on the characters one token covers."""
    return max((len(token) for token in tokenizer.get_vocab()), default=1)


class SampleEncoder:
    """Turns columns of records into ``input_ids`` / ``labels``; a ``datasets.map`` function.

    The same object gives inference its prompt ids (``prompt_ids``) and stop tokens, so that
    training and inference tokenize alike.
    """

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, template: Template, max_length: int
    ) -> None:
        self.tokenizer = tokenizer
        self.template = resolve_template(template, tokenizer)
        if isinstance(self.template, ChatTemplate):
            self.renderer: StringRenderer | ChatRequestRenderer = ChatRequestRenderer(
                self.template, tokenizer
            )
        else:
            self.renderer = StringRenderer(self.template, tokenizer.eos_token)
        self.pieces = PieceEncoder(tokenizer, self.renderer.template_text)
        self.max_length = max_length
        self.prefix = special_prefix(tokenizer) if self.renderer.add_prefix else []
        self.eos = tokenizer.eos_token_id
        # Text beyond this many characters cannot fit in max_length tokens: cutting it before
        # tokenizing keeps time and memory proportional to max_length, not to the record. The
        # factor 2 keeps the cut far from any token that truncation could keep.
        self.max_chars = 2 * max_length * _longest_token_chars(tokenizer) + 64

    # ---- pieces to ids --------------------------------------------------------------------------

    def _ends_eos(self, rendered: Rendered) -> bool:
        """Whether EOS follows the suffix: when the template ends a reply with no control token
        (always so for a string template, whose suffix is empty)."""
        return not any(self.pieces.template_text(text) != text for text, _ in rendered.suffix)

    def prompt_ids(self, request: Request) -> list[int]:
        """The ids inference feeds the model for ``request``: what training masks as the prompt."""
        rendered = self.renderer.render(request, None)
        encoding = self.pieces.encode(self.pieces.join(rendered.prompt))
        return [*self.prefix, *self.pieces.ids(encoding)]

    def stop_token_ids(self) -> list[int]:
        """The ids that end a generated correction: EOS, and the template's end-of-turn token."""
        rendered = self.renderer.render(
            Request(turns=({"role": "user", "content": "x"},), answer="y"), "z"
        )
        stops = [self.eos]
        for text, _ in rendered.suffix:
            ids = self.pieces.ids(self.pieces.encode(self.pieces.template_text(text)))
            controls = [token for token in ids if token in self.pieces.control_ids]
            if controls and controls[0] not in stops:
                stops.insert(0, controls[0])
        return stops

    @staticmethod
    def _clean(encoding: Any, boundary: int, length: int) -> bool:
        """Whether no token crosses character ``boundary``."""
        if boundary >= length:
            return True
        token = encoding.char_to_token(boundary)
        # token_to_chars, not .offsets: building every token's offsets costs more than the
        # two lookups a boundary needs.
        return (
            token is not None
            and encoding.token_to_chars(token)[0] == boundary
            and (token == 0 or encoding.token_to_chars(token - 1)[1] <= boundary)
        )

    def encode_rendered(
        self, rendered: Rendered, encoding: Any = None
    ) -> tuple[list[int], int, bool]:
        """Token ids of the whole sample, the prompt's token count, and whether the boundaries
        needed the part-by-part fallback."""
        prompt = self.pieces.join(rendered.prompt)
        suffix = self.pieces.join(rendered.suffix)
        full = prompt + rendered.target + suffix
        if encoding is None:
            encoding = self.pieces.encode(full)
        boundaries = (len(prompt), len(prompt) + len(rendered.target))
        split = not all(self._clean(encoding, b, len(full)) for b in boundaries)
        if split:
            # A token starts inside the prompt and ends in the correction (or the correction's
            # in the suffix): tokenize the parts alone, so that the prompt is what inference sees.
            parts = [
                self.pieces.ids(self.pieces.encode(text))
                for text in (prompt, rendered.target, suffix)
                if text
            ]
            n_prompt = len(parts[0]) if prompt else 0
            ids = [token for part in parts for token in part]
        else:
            ids = self.pieces.ids(encoding)
            n_prompt = (
                len(ids) if boundaries[0] >= len(full) else encoding.char_to_token(boundaries[0])
            )
        eos = [self.eos] if self._ends_eos(rendered) else []
        return [*self.prefix, *ids, *eos], len(self.prefix) + n_prompt, split

    # ---- truncation -----------------------------------------------------------------------------

    def _fit(self, request: Request, correction: str) -> tuple[list[int], int, bool, int] | None:
        """Shorten the request until the sample fits: oldest exchanges, then the answer, then the
        question (or input). None when even the shortest prompt leaves no room."""
        minimal = self.encode_rendered(self.renderer.render(request.minimal(), correction))
        if len(minimal[0]) > self.max_length:
            return None
        shortened = 0
        while True:
            ids, n_prompt, split = self.encode_rendered(self.renderer.render(request, correction))
            excess = len(ids) - self.max_length
            if excess <= 0:
                return ids, n_prompt, split, shortened
            shorter = request.without_oldest_exchange()
            if shorter is not None:
                request, shortened = shorter, shortened | TURNS_DROPPED
                continue
            for field, bit in request.shrinkable:
                text = request.text(field)
                if not text:
                    continue
                tokens = self.pieces.encode(text)
                keep = len(tokens.ids) - excess
                cut = text[: tokens.offsets[keep][0]] if keep > 0 else ""
                request, shortened = request.with_text(field, cut), shortened | bit
                break
            else:
                return None

    # ---- datasets.map ---------------------------------------------------------------------------

    def _requests(self, batch: Mapping[str, Sequence[Any]]) -> list[Request]:
        names = [n for n in ("question", "messages", "dialogue", "answer", "input") if n in batch]
        requests = []
        for i in range(len(batch["correction"])):
            record = {n: batch[n][i] for n in names if batch[n][i] is not None}
            requests.append(Request.from_record(record).capped(self.max_chars))
        return requests

    def _check_text(self, request: Request, correction: str) -> None:
        texts = [turn["content"] for turn in request.turns]
        texts += [request.answer or "", correction]
        for text in texts:
            character = self.pieces.reserved_character(text)
            if character is not None:
                raise DataError(
                    f"a record's text holds the private-use character {character}, which "
                    "aligner reserves for the template's control tokens"
                )

    def _render(self, request: Request, correction: str) -> Rendered | str:
        """The sample rendered, or why the template cannot render it (a conversation shape it
        refuses, say); a template that runs out of time fails for every record, and raises."""
        try:
            return self.renderer.render(request, correction)
        except TemplateTimeout:
            raise
        except TemplateError as error:
            return str(error)

    def __call__(self, batch: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
        requests = self._requests(batch)
        corrections = list(batch["correction"])
        rendered: list[Rendered | str | None] = []
        for request, correction in zip(requests, corrections, strict=True):
            self._check_text(request, correction)
            fits = len(correction) <= self.max_chars
            rendered.append(self._render(request, correction) if fits else None)
        texts = [
            self.pieces.join(r.prompt) + r.target + self.pieces.join(r.suffix)
            for r in rendered
            if isinstance(r, Rendered)
        ]
        encodings = iter(self.pieces.encode_batch(texts))
        out: dict[str, list[Any]] = {column: [] for column in TOKENIZED_COLUMNS}
        for request, correction, sample in zip(requests, corrections, rendered, strict=True):
            status, shortened, ids, n_prompt, split = DROPPED, 0, [], 0, False
            problem = sample if isinstance(sample, str) else None
            if isinstance(sample, Rendered):
                ids, n_prompt, split = self.encode_rendered(sample, next(encodings))
                status = KEPT
                if len(ids) > self.max_length:
                    fitted = self._fit(request, correction)
                    if fitted is None:
                        status, ids, n_prompt, split = DROPPED, [], 0, False
                    else:
                        (ids, n_prompt, split, shortened), status = fitted, TRUNCATED
            if problem is not None:
                status = UNRENDERABLE
            out["input_ids"].append(ids)
            out["labels"].append([IGNORE_INDEX] * n_prompt + ids[n_prompt:])
            out["length"].append(len(ids))
            out["prompt_length"].append(n_prompt)
            out["status"].append(status)
            out["shortened"].append(shortened)
            out["split_boundary"].append(split)
            out["problem"].append(problem)
        return out
