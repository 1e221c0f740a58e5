"""The local aligner of ``aligner serve``: concurrent requests batched into one ``generate``.

One worker thread owns the model. It takes every request waiting when it is free (up to
``max_batch``) into one left-padded ``generate`` call, and hands each request its text as the
tokens arrive, so replies stream while the batch decodes. A request whose client went away is
dropped from the queue, or stopped within a token if it is decoding, freeing its row.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import torch
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.streamers import BaseStreamer

from aligner.inference.generate import GenerationOptions, left_pad, stop_token_ids

RECENT_BATCHES = 256
DONE = None
"""What a job's queue receives after its last piece of text."""


@dataclass(eq=False)
class Job:
    """One correction: its prompt ids, and the event loop and queue its text goes to."""

    prompt: list[int]
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[str | BaseException | None] = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    ids: list[int] = field(default_factory=list)
    sent: str = ""
    finished: bool = False

    def send(self, item: str | BaseException | None) -> None:
        self.loop.call_soon_threadsafe(self.out.put_nowait, item)


class _RowStreamer(BaseStreamer):
    """Splits each decoding step's tokens (B,) among the batch's jobs, sending each job the
    text its new token completes. Text is held back while it ends in a partial character."""

    def __init__(
        self, jobs: list[Job], tokenizer: PreTrainedTokenizerBase, stops: list[int]
    ) -> None:
        self.jobs, self.tokenizer, self.stops = jobs, tokenizer, set(stops)
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate first hands over the prompt itself
            self.prompt_seen = True
            return
        for job, token in zip(
            self.jobs, value.reshape(len(self.jobs), -1)[:, 0].tolist(), strict=True
        ):
            if job.finished:
                continue
            if token in self.stops or job.cancelled:
                self._finish(job)
                continue
            job.ids.append(token)
            text = self._text(job)
            if not text.endswith("\ufffd") and text.startswith(job.sent) and text != job.sent:
                job.send(text[len(job.sent) :])
                job.sent = text

    def end(self) -> None:  # generate's last call: every row still open is done
        for job in self.jobs:
            if not job.finished:
                self._finish(job)

    def _text(self, job: Job) -> str:
        return self.tokenizer.decode(job.ids, skip_special_tokens=True)

    def _finish(self, job: Job) -> None:
        job.finished = True
        text = self._text(job)
        if text.startswith(job.sent) and text != job.sent:
            job.send(text[len(job.sent) :])
        job.send(DONE)


class _Cancelled(StoppingCriteria):
    """Ends the rows whose client went away (generate pads them from then on)."""

    def __init__(self, jobs: list[Job]) -> None:
        self.jobs = jobs

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        flags = [job.cancelled or job.finished for job in self.jobs]
        return torch.tensor(flags, dtype=torch.bool, device=input_ids.device)


class LocalAligner:
    """``stream(prompt)`` yields the correction's text as the batched worker generates it."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        template_stops: list[int],
        options: GenerationOptions,
        max_batch: int,
    ) -> None:
        self.model, self.tokenizer, self.options = model, tokenizer, options
        self.stops = stop_token_ids(model.generation_config, template_stops)
        self.max_batch = max_batch
        self.pending: queue.Queue[Job | None] = queue.Queue()
        self.decoded: deque[list[int]] = deque(maxlen=RECENT_BATCHES)
        """How many tokens each request of the recent batches decoded, oldest batch first."""
        self.worker = threading.Thread(target=self._work, name="aligner-batcher", daemon=True)

    async def start(self) -> None:
        self.worker.start()

    async def stop(self) -> None:
        """Finish the batch in hand, then stop the worker."""
        self.pending.put(None)
        await asyncio.to_thread(self.worker.join)

    async def stream(self, prompt: list[int]) -> AsyncIterator[str]:
        job = Job(prompt, asyncio.get_running_loop())
        self.pending.put(job)
        try:
            while (item := await job.out.get()) is not DONE:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            job.cancelled = True  # a no-op once done; else the worker skips or stops its row

    def _work(self) -> None:
        while (job := self.pending.get()) is not None:
            batch = [job]
            while len(batch) < self.max_batch:
                try:
                    more = self.pending.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self.pending.put(None)  # stop after this batch
                    break
                batch.append(more)
            batch = [job for job in batch if not job.cancelled]
            if batch:
                self._generate(batch)

    def _generate(self, jobs: list[Job]) -> None:
        streamer = _RowStreamer(jobs, self.tokenizer, self.stops)
        input_ids, attention_mask = left_pad(
            [job.prompt for job in jobs], self.tokenizer.pad_token_id
        )
        try:
            with torch.inference_mode():
                self.model.generate(
                    input_ids=input_ids.to(self.model.device),
                    attention_mask=attention_mask.to(self.model.device),
                    generation_config=self.options.generation_config(
                        self.tokenizer.pad_token_id, self.stops
                    ),
                    streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([_Cancelled(jobs)]),
                )
        except Exception as error:  # each waiting request gets the failure
            for job in jobs:
                if not job.finished:
                    job.finished = True
                    job.send(error)
        finally:
            self.decoded.append([len(job.ids) for job in jobs])
