"""The aligners of ``aligner serve``: local (batching, streaming, freeing a gone client's row)
and on a completions server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

from transformers import AutoModelForCausalLM

from aligner.datasets.encode import Request, SampleEncoder
from aligner.inference.generate import GenerationOptions, generate
from aligner.inference.model_loading import checkpoint_template
from aligner.serving.app import Aligner
from aligner.serving.batcher import LocalAligner
from aligner.tokenizer import load_tokenizer

QUESTIONS = ["Hi", "Capital of Italy?", "What is the boiling point of water?", "Why?"] * 2


def aligner_for(folder: Path, max_new_tokens: int) -> tuple[LocalAligner, SampleEncoder]:
    tokenizer = load_tokenizer(str(folder))
    encoder = SampleEncoder(tokenizer, checkpoint_template(str(folder)), max_length=1 << 30)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    options = GenerationOptions(max_new_tokens=max_new_tokens)
    return LocalAligner(model, tokenizer, encoder.stop_token_ids(), options, 16), encoder


def prompts(encoder: SampleEncoder) -> list[list[int]]:
    return [
        encoder.prompt_ids(Request(({"role": "user", "content": q},), "An answer."))
        for q in QUESTIONS
    ]


async def collect(aligner: Aligner, prompt: list[int]) -> list[str]:
    return [piece async for piece in aligner.stream(prompt)]


def test_concurrent_requests_share_a_batch_and_stream_what_generate_gives(
    tiny_checkpoint_dir: Path,
) -> None:
    aligner, encoder = aligner_for(tiny_checkpoint_dir, 12)
    ids = prompts(encoder)

    async def run() -> list[list[str]]:
        await aligner.start()
        try:
            return await asyncio.gather(*(collect(aligner, prompt) for prompt in ids))
        finally:
            await aligner.stop()

    streamed = asyncio.run(run())
    expected = generate(
        aligner.model, aligner.tokenizer, ids, aligner.options, encoder.stop_token_ids()
    )
    assert ["".join(pieces) for pieces in streamed] == expected
    assert max(len(pieces) for pieces in streamed) > 1  # text arrives as it decodes
    sizes = [len(batch) for batch in aligner.decoded]
    assert max(sizes) > 1 and sum(sizes) == len(ids)


def test_a_client_that_leaves_frees_its_row(tiny_checkpoint_dir: Path) -> None:
    aligner, encoder = aligner_for(tiny_checkpoint_dir, 200)
    leaving, staying = prompts(encoder)[:2]

    async def leave() -> None:
        pieces = aligner.stream(leaving)
        await anext(pieces)
        await pieces.aclose()  # what a dropped connection does to the response's stream

    async def run() -> list[str]:
        await aligner.start()
        try:
            _, kept = await asyncio.gather(leave(), collect(aligner, staying))
            return kept
        finally:
            await aligner.stop()

    kept = asyncio.run(run())
    decoded = sorted(count for batch in aligner.decoded for count in batch)
    assert decoded[0] < 10  # stopped within a few tokens of its client leaving
    assert decoded[1] == 200 and "".join(kept)  # the other decoded on to its full length


def test_an_aligner_on_a_completions_server_streams_its_correction_piece_by_piece(
    chat_checkpoint: Path,
) -> None:
    from aligner.inference.endpoint import Endpoint
    from aligner.inference.remote import remote_aligner
    from tests.conftest import CHAT_MEMORISED
    from tests.standins import completions_app, serving

    record = CHAT_MEMORISED[-1]
    encoder = SampleEncoder(
        load_tokenizer(str(chat_checkpoint)), checkpoint_template(str(chat_checkpoint)), 1 << 30
    )
    prompt = encoder.prompt_ids(Request.from_record(record))

    async def run(url: str) -> list[str]:
        endpoint = Endpoint(url, "aligner", flag="--aligner_url")
        aligner = remote_aligner(
            endpoint,
            encoder,
            GenerationOptions(max_new_tokens=16),
            model_name_or_path=str(chat_checkpoint),
            seed=0,
            concurrency=2,
        )
        await aligner.start()
        try:
            return await collect(aligner, prompt)
        finally:
            await aligner.stop()

    with serving(completions_app(chat_checkpoint)) as url:
        pieces = asyncio.run(run(url))
    assert len(pieces) > 3 and "".join(pieces) == record["correction"]


def test_a_stream_is_retried_until_its_first_piece_and_not_after() -> None:
    """The first try fails with a 500, the second ends before any text, the third sends two
    pieces and breaks off: the caller gets both pieces, then one error; no fourth try."""
    import json

    import pytest
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, StreamingResponse

    from aligner.inference.endpoint import Endpoint, EndpointUnavailable
    from tests.standins import serving

    app, tries = FastAPI(), []

    def events(*texts: str) -> Iterator[str]:
        for text in texts:
            yield f"data: {json.dumps({'choices': [{'index': 0, 'text': text}]})}\n\n"
        if len(tries) == 3:
            raise ConnectionResetError("the server went away")  # the connection is cut

    @app.post("/v1/completions")
    async def complete() -> object:
        tries.append(1)
        if len(tries) == 1:
            return JSONResponse({"error": {"message": "overloaded"}}, status_code=500)
        return StreamingResponse(events() if len(tries) == 2 else events("Hel", "lo"))

    async def run(url: str) -> tuple[list[str], str]:
        endpoint = Endpoint(url, "aligner", retries=5, backoff=0.01, flag="--aligner_url")
        received = []
        async with endpoint.client(1) as client:
            with pytest.raises(EndpointUnavailable) as failure:
                async for piece in endpoint.stream_completion(client, [1, 2, 3]):
                    received.append(piece)
        return received, str(failure.value)

    with serving(app) as url:
        received, error = asyncio.run(run(url))
    assert received == ["Hel", "lo"] and len(tries) == 3
    assert "the stream broke off" in error
