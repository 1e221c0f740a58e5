"""Corrections from an aligner that an OpenAI-compatible completions server runs (vLLM, SGLang).

The server is sent the prompt as token ids, rendered and tokenized here by the same encoder as
training, so its prompt cannot drift from the one the aligner learned; it stops at the same end
of turn or EOS as local generation, and decodes the reply without special tokens, as
``aligner.inference.generate`` does.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import httpx
from transformers import AutoConfig, GenerationConfig

from aligner.datasets.encode import Request, SampleEncoder
from aligner.errors import RunFailure
from aligner.inference.endpoint import Endpoint, endpoint_from_args, run_requests
from aligner.inference.generate import GenerationOptions, stop_token_ids

if TYPE_CHECKING:
    from aligner.config import CommandConfig


def sampling_params(options: GenerationOptions, stops: list[int], seed: int) -> dict[str, Any]:
    """The completions request's decoding fields: greedy is temperature 0; vLLM's
    ``stop_token_ids`` end the reply at the aligner's stops."""
    params: dict[str, Any] = {
        "max_tokens": options.max_new_tokens,
        "stop_token_ids": stops,
        "skip_special_tokens": True,
    }
    if not options.do_sample:
        return {**params, "temperature": 0.0}
    sampled = {"temperature": options.temperature, "top_p": options.top_p, "seed": seed}
    if options.top_k is not None:
        sampled["top_k"] = options.top_k or -1  # vLLM's "no top-k" is -1
    return {**params, **{name: value for name, value in sampled.items() if value is not None}}


def checkpoint_stops(model_name_or_path: str, template_stops: list[int]) -> list[int]:
    """The stops local generation uses, read from the folder's generation config (the model's
    weights are not loaded)."""
    try:
        config = GenerationConfig.from_pretrained(model_name_or_path)
    except OSError:  # no generation_config.json: transformers derives one from config.json
        try:
            config = GenerationConfig.from_model_config(
                AutoConfig.from_pretrained(model_name_or_path)
            )
        except (OSError, ValueError):  # an adapter-only folder: the template's stops alone
            config = GenerationConfig()
    return stop_token_ids(config, template_stops)


class RemoteAligner:
    """Corrections through the completions endpoint, each request retried as the endpoint
    says: ``generate(requests)`` sends a batch ``concurrency`` at a time; between ``start``
    and ``stop``, ``stream(prompt)`` streams one prompt's correction as the server decodes it
    (for ``aligner serve``)."""

    def __init__(
        self,
        endpoint: Endpoint,
        encoder: SampleEncoder,
        params: dict[str, Any],
        concurrency: int,
    ) -> None:
        self.endpoint, self.encoder, self.params = endpoint, encoder, params
        self.concurrency = concurrency
        self.client: httpx.AsyncClient | None = None

    async def correct(self, client: httpx.AsyncClient, prompt: list[int]) -> str:
        return (await self.endpoint.complete(client, prompt, **self.params)).text

    async def start(self) -> None:
        self.client = self.endpoint.client(self.concurrency)

    async def stream(self, prompt: list[int]) -> AsyncIterator[str]:
        assert self.client is not None, "start() first"
        pieces = self.endpoint.stream_completion(self.client, prompt, **self.params)
        async with contextlib.aclosing(pieces):  # a caller that stops early ends the request
            async for piece in pieces:
                yield piece

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    def generate(self, requests: list[Request]) -> list[str]:
        prompts = [self.encoder.prompt_ids(request) for request in requests]
        texts: dict[int, str] = {}
        failed = run_requests(
            self.endpoint,
            list(range(len(prompts))),
            lambda client, index: self.correct(client, prompts[index]),
            texts.__setitem__,
            concurrency=self.concurrency,
        )
        if failed:
            raise RunFailure(f"{failed[0][1]}; run the same command again to resume")
        return [texts[index] for index in range(len(prompts))]


def remote_aligner(
    endpoint: Endpoint,
    encoder: SampleEncoder,
    options: GenerationOptions,
    *,
    model_name_or_path: str,
    seed: int,
    concurrency: int,
) -> RemoteAligner:
    """The aligner that ``endpoint`` serves, stopping and decoding as the local one would."""
    stops = checkpoint_stops(model_name_or_path, encoder.stop_token_ids())
    return RemoteAligner(endpoint, encoder, sampling_params(options, stops, seed), concurrency)


def remote_aligner_from_flags(args: CommandConfig, encoder: SampleEncoder) -> RemoteAligner | None:
    """The aligner that ``--aligner_url`` serves, decoding as the generation flags say; None
    without ``--aligner_url`` (the aligner is then loaded here)."""
    endpoint = endpoint_from_args(args, "aligner")
    if endpoint is None:
        return None
    return remote_aligner(
        endpoint,
        encoder,
        GenerationOptions.from_args(args),
        model_name_or_path=args.model_name_or_path,
        seed=args.seed,
        concurrency=args.aligner_concurrency,
    )
