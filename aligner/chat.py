"""Rendering a correction request through a tokenizer's chat template, as template and record
pieces.

The aligner's conversation is: a system turn (``--system_prompt``, and any system message of the
record), the record's earlier turns as they are, then one user turn holding the correction
instruction with the last user message as ``{question}`` and the upstream answer as ``{answer}``;
the correction is the assistant's reply. The prompt is everything the template writes before
the reply's text (exactly ``apply_chat_template(..., add_generation_prompt=True)`` for usual
templates), and the target is the correction followed by what the template writes after a reply
(its end-of-turn: ``</s>``, ``<|im_end|>\\n``, ``<|eot_id|>``...), found from the template's own
output rather than assumed.

Each conversation shape (its sequence of roles) is rendered once with placeholder contents to
find the template's own text around every message; a record's pieces are that text with its
messages in between, checked against the template's real rendering of the record. A template
whose rendering of the prompt is not a prefix of its rendering of the whole conversation (one
that rewrites earlier turns once a reply follows) is refused: no mask can be right for it.
"""

from __future__ import annotations

import re
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from aligner.prompts import ChatTemplate, Piece, TemplateError, Turn

_PLACEHOLDER = "\U000f0100{}\U000f0101"
"""Stands for message ``{}`` while a shape is rendered (Supplementary Private Use Area-A)."""
_PLACEHOLDER_RE = re.compile("\U000f0100(\\d+)\U000f0101")

RENDER_TIME_LIMIT = 10.0
"""Processor seconds one rendering of a chat template may take (a real template takes
milliseconds): a template that loops, say over nested ``range(100000)``, is stopped and
refused."""


class TemplateTimeout(TemplateError):
    """A chat template that did not finish rendering within ``RENDER_TIME_LIMIT``: a fault of
    the template, not of a record."""


class _Expired(BaseException):
    """Raised into the rendering by the timer; not an ``Exception``, so that no handler in the
    template engine takes it for the template's own error."""


@contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise ``_Expired`` in the block once it has used ``seconds`` of processor time.

    A timer signal is the one way to stop pure Python code that never returns. The processor
    time timer (SIGVTALRM) leaves SIGALRM to others. Signals reach the main thread only, so
    elsewhere (or while another holds this timer) the block runs without a limit; every command
    renders on its main thread, and so do the tokenizing processes.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getitimer(signal.ITIMER_VIRTUAL)[0] > 0
    ):
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise _Expired

    previous = signal.signal(signal.SIGVTALRM, expire)
    signal.setitimer(signal.ITIMER_VIRTUAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_VIRTUAL, 0)
        signal.signal(signal.SIGVTALRM, previous)


@dataclass(frozen=True)
class Shape:
    """The template's own text around the messages of one conversation shape."""

    literals: tuple[str, ...]
    """Text before message 0, between messages 0 and 1, ..., and before the reply."""
    suffix: str
    """Text after the reply: the template's end of turn (and anything it writes at the end)."""


@dataclass(frozen=True)
class ChatRendering:
    prompt: list[Piece]
    correction: str
    """The correction as the template writes it (some templates trim message text)."""
    suffix: str


class ChatRenderer:
    """Renders requests through ``template.chat_template`` with the tokenizer's special tokens."""

    def __init__(self, template: ChatTemplate, tokenizer: PreTrainedTokenizerBase) -> None:
        if template.chat_template is None:
            raise TemplateError(f"template {template.name!r} has no chat template resolved")
        self.template = template
        self.tokenizer = tokenizer
        self._shapes: dict[tuple[str, ...], Shape] = {}

    # ---- the aligner's conversation -------------------------------------------------------------

    def messages(self, turns: list[Turn], answer: str | None) -> list[Turn]:
        """The aligner's conversation for a request, without the reply. Without an ``answer``
        the turns are used as they are (the original toolkit's formatted input or dialogue)."""
        systems = [self.template.system_prompt] if self.template.system_prompt else []
        systems += [turn["content"] for turn in turns if turn["role"] == "system"]
        messages = [{"role": "system", "content": "\n\n".join(systems)}] if systems else []
        history = [turn for turn in turns[:-1] if turn["role"] != "system"]
        last = turns[-1]["content"]
        if answer is not None:
            last = self.template.instruction.format(question=last, answer=answer)
        return [*messages, *history, {"role": "user", "content": last}]

    # ---- rendering ------------------------------------------------------------------------------

    def _render(self, messages: list[Turn], *, generation_prompt: bool) -> str:
        roles = ", ".join(message["role"] for message in messages)
        try:
            with _time_limit(RENDER_TIME_LIMIT):
                return self.tokenizer.apply_chat_template(
                    messages,
                    chat_template=self.template.chat_template,
                    add_generation_prompt=generation_prompt,
                    tokenize=False,
                )
        except _Expired:
            raise TemplateTimeout(
                f"chat template of --prompt_template {self.template.name} did not finish "
                f"rendering a conversation of roles ({roles}) within {RENDER_TIME_LIMIT:g} s of "
                "processor time; it was stopped (does it loop?)"
            ) from None
        except Exception as error:  # the template's own raise_exception, or a Jinja error
            first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            raise TemplateError(
                f"chat template of --prompt_template {self.template.name} fails on a "
                f"conversation of roles ({roles}): {first}"
            ) from None

    def shape(self, roles: tuple[str, ...]) -> Shape:
        """The template's text around messages of these roles, followed by a reply."""
        if roles not in self._shapes:
            self._shapes[roles] = self._find_shape(roles)
        return self._shapes[roles]

    def _find_shape(self, roles: tuple[str, ...]) -> Shape:
        messages = [
            {"role": role, "content": _PLACEHOLDER.format(number)}
            for number, role in enumerate(roles)
        ]
        reply = {"role": "assistant", "content": _PLACEHOLDER.format(len(roles))}
        full = self._render([*messages, reply], generation_prompt=False)
        prompt = self._render(messages, generation_prompt=True)
        reply_at = full.find(_PLACEHOLDER.format(len(roles)))
        if reply_at >= 0 and not full[:reply_at].startswith(prompt):
            raise TemplateError(
                f"chat template of --prompt_template {self.template.name} renders the earlier "
                "turns differently once a reply follows (its generation prompt is not a prefix "
                "of the conversation), so no training mask would match what inference feeds"
            )
        parts = _PLACEHOLDER_RE.split(full)
        literals, numbers = parts[0::2], [int(n) for n in parts[1::2]]
        if numbers != list(range(len(roles) + 1)):
            raise TemplateError(
                f"chat template of --prompt_template {self.template.name} does not write each "
                "message's text once and in order; aligner cannot tell its markers from the text"
            )
        return Shape(literals=tuple(literals[:-1]), suffix=literals[-1])

    def render(self, messages: list[Turn], correction: str | None) -> ChatRendering:
        """The pieces of ``messages`` with the prompt for the reply; with ``correction``, checked
        against the template's rendering of the whole conversation, else against its generation
        prompt."""
        shape = self.shape(tuple(message["role"] for message in messages))
        for strip in (False, True):
            # Some templates trim each message's text (Llama 3's does); accept exactly that.
            contents = [m["content"].strip() if strip else m["content"] for m in messages]
            reply = None if correction is None else correction.strip() if strip else correction
            prompt: list[Piece] = []
            for literal, content in zip(shape.literals, [*contents, ""], strict=True):
                prompt.append((literal, False))
                if content:
                    prompt.append((content, True))
            prompt = [piece for piece in prompt if piece[0]]
            text = "".join(piece for piece, _ in prompt)
            if reply is None:
                expected = self._render(messages, generation_prompt=True)
                matches = text.startswith(expected)
            else:
                reply_message = {"role": "assistant", "content": correction}
                expected = self._render([*messages, reply_message], generation_prompt=False)
                matches = expected == text + reply + shape.suffix
            if matches:
                return ChatRendering(prompt, reply or "", shape.suffix)
        raise TemplateError(
            f"chat template of --prompt_template {self.template.name} changes the text of a "
            "message in a way aligner cannot follow (beyond trimming surrounding whitespace)"
        )
