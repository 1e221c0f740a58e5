"""The HTTP face of ``aligner serve``: OpenAI's chat completions, models and a health check.

``POST /v1/chat/completions`` sends the conversation to the upstream model, then has the aligner
correct the upstream's reply given the conversation. The correction is the assistant message's
``content``, the upstream's reply its ``upstream_content``. With ``stream: true`` the correction
streams as server-sent events in OpenAI's chunk format, ending with ``data: [DONE]``; the first
chunk carries ``upstream_content``. Every refusal is a JSON body in OpenAI's error shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from aligner.config import LimitArgs
from aligner.datasets.encode import Request as Correction
from aligner.datasets.encode import SampleEncoder
from aligner.datasets.validation import check_messages
from aligner.inference.endpoint import Endpoint, EndpointError, EndpointUnavailable

T = TypeVar("T")


class Aligner(Protocol):
    """The aligner, local or remote: started with the server, stopped after its last request."""

    async def start(self) -> None: ...

    def stream(self, prompt: list[int]) -> AsyncIterator[str]:
        """The correction of a prompt (token ids), as pieces of text in order."""
        ...

    async def stop(self) -> None: ...


UPSTREAM_PARAMS = (
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "user",
)
"""What a client may ask of the upstream model; every field not named here is refused."""
OWN_FIELDS = ("model", "messages", "stream", "n")
IGNORED_FIELDS = ("stream_options", "metadata", "store", "service_tier")
"""Fields that change no reply, which clients such as LangChain send unasked: accepted and not
acted on (a stream's chunks carry no ``usage``)."""


class ApiError(Exception):
    """A refusal, sent as ``{"error": {...}}`` with ``status``."""

    def __init__(self, status: int, message: str, kind: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.code = status, message, kind, code

    def body(self) -> dict[str, Any]:
        error = {"message": self.message, "type": self.kind, "param": None, "code": self.code}
        return {"error": error}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def bad_request(message: str, code: str | None = None) -> ApiError:
    return ApiError(400, message, "invalid_request_error", code)


def failed_call(who: str, error: Exception) -> ApiError:
    """A server behind us that failed: 504 when it ran out of time, else 502."""
    message = f"{who}: {error}"
    if isinstance(error, EndpointUnavailable) and "no complete reply within" in str(error):
        return ApiError(504, message, "upstream_error", "upstream_timeout")
    return ApiError(502, message, "upstream_error", "upstream_failed")


class RequestCap:
    """At most ``limit`` requests to ``path`` at once; one more is refused at once with 429 and
    ``Retry-After: 1``, so that a burst cannot queue without end in front of the aligner.

    Written as ASGI middleware, not in the route, because a streamed reply outlives its route
    function: a request counts until its last byte is sent or its client goes. uvicorn's
    ``--limit-concurrency`` would count every connection, /health included, and refuse with a
    plain-text 503 rather than OpenAI's error shape."""

    def __init__(self, app: ASGIApp, *, limit: int, path: str) -> None:
        self.app, self.limit, self.path = app, limit, path
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            return await self.app(scope, receive, send)
        if self.in_flight >= self.limit:
            busy = ApiError(
                429,
                f"the server is busy: {self.limit} requests in flight; retry shortly",
                "requests",
                "rate_limit_exceeded",
            ).response()
            busy.headers["Retry-After"] = "1"
            return await busy(scope, receive, send)
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


@dataclass
class Service:
    """What the routes need: the upstream, the aligner and its encoder, the limits."""

    name: str
    upstream: Endpoint
    upstream_concurrency: int
    encoder: SampleEncoder
    aligner: Aligner
    api_key: str | None
    limits: LimitArgs


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes ``limit`` bytes."""
    too_big = ApiError(413, f"the body is over {limit} bytes", "invalid_request_error")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """``work``'s result, or cancelled as soon as the client goes away (its slot freed)."""

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task, watch = asyncio.ensure_future(work), asyncio.ensure_future(gone())
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:  # the client left, or this handler itself was cancelled: stop the work
        watch.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        # Nobody is listening: this answer is never sent, only logged as 499 as nginx does.
        raise ApiError(499, "the client closed the request", "client_closed_request")
    return task.result()


def text_of(content: Any) -> Any:
    """A message's text: a string, or OpenAI's list of text parts joined."""
    if isinstance(content, list) and all(
        isinstance(part, dict) and part.get("type") == "text" for part in content
    ):
        return "".join(str(part.get("text", "")) for part in content)
    return content


def parse_chat(body: bytes, limits: LimitArgs) -> tuple[list[dict[str, str]], dict[str, Any], bool]:
    """The conversation, the upstream's parameters and ``stream``, or a 400 naming the field."""
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise bad_request("the body is not JSON") from None
    if not isinstance(request, dict):
        raise bad_request("the body must be a JSON object")
    unknown = sorted(set(request) - {*UPSTREAM_PARAMS, *OWN_FIELDS, *IGNORED_FIELDS})
    if unknown:
        raise bad_request(f"unsupported field(s): {', '.join(unknown)}", "unsupported_parameter")
    if request.get("n", 1) != 1:
        raise bad_request("field 'n': only one choice is served", "unsupported_parameter")
    stream = request.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("field 'stream' must be true or false")
    messages = request.get("messages")
    if isinstance(messages, list):
        if len(messages) > limits.max_messages:
            raise bad_request(
                f"field 'messages' holds {len(messages)} turns, above {limits.max_messages}",
                "too_many_messages",
            )
        messages = [
            {"role": turn.get("role"), "content": text_of(turn.get("content"))}
            if isinstance(turn, dict)
            else turn
            for turn in messages
        ]
    problem = check_messages(messages)
    if problem:
        raise bad_request(problem)
    params = {name: request[name] for name in UPSTREAM_PARAMS if name in request}
    for name in ("max_tokens", "max_completion_tokens"):
        value = params.get(name)
        if value is not None and not (isinstance(value, int) and 0 < value <= limits.max_tokens):
            raise bad_request(
                f"field '{name}' must be a whole number from 1 to {limits.max_tokens}"
            )
    return messages, params, stream


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def completion(name: str, choice: dict[str, Any], *, chunk_of: str | None = None) -> dict[str, Any]:
    """A reply, or with ``chunk_of`` (the id every chunk of a stream shares) a stream chunk."""
    return {
        "id": chunk_of or completion_id(),
        "object": "chat.completion" if chunk_of is None else "chat.completion.chunk",
        "created": int(time.time()),
        "model": name,
        "choices": [{"index": 0, **choice}],
    }


def event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def check_key(service: Service, request: Request) -> None:
    """Refuse with 401 a request without the server's API key (when it has one)."""
    if service.api_key is None:
        return
    given = request.headers.get("authorization", "")
    expected = f"Bearer {service.api_key}"
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise ApiError(
            401,
            "missing or wrong API key: send it as 'Authorization: Bearer KEY'",
            "authentication_error",
            "invalid_api_key",
        )


def prompt_ids(service: Service, messages: list[dict[str, str]], answer: str) -> list[int]:
    return service.encoder.prompt_ids(Correction(tuple(messages), answer))


async def upstream_reply(
    service: Service, request: Request, messages: list[dict[str, str]], params: dict[str, Any]
) -> str:
    """The upstream's reply to the conversation, refused first if the conversation alone is
    too long for the aligner's prompt."""
    limit = service.limits.max_prompt_tokens
    if len(prompt_ids(service, messages, "")) > limit:
        raise bad_request(f"the conversation is over {limit} tokens", "context_length_exceeded")
    try:
        reply = await until_disconnected(
            request, service.upstream.chat(request.app.state.client, messages, **params)
        )
    except (EndpointError, EndpointUnavailable) as error:
        raise failed_call("upstream", error) from None
    return reply.text


def aligner_prompt(service: Service, messages: list[dict[str, str]], upstream: str) -> list[int]:
    """The aligner's prompt, or a 502 when the upstream's reply makes it too long."""
    prompt = prompt_ids(service, messages, upstream)
    limit = service.limits.max_prompt_tokens
    if len(prompt) > limit:
        raise ApiError(
            502,
            f"upstream: its reply makes the aligner's prompt {len(prompt)} tokens, above "
            f"{limit}; ask for fewer max_tokens",
            "upstream_error",
            "context_length_exceeded",
        )
    return prompt


async def whole_reply(
    service: Service, request: Request, prompt: list[int], upstream: str
) -> dict[str, Any]:
    """The completion holding the whole correction."""

    async def whole() -> str:
        async with contextlib.aclosing(service.aligner.stream(prompt)) as pieces:
            return "".join([piece async for piece in pieces])

    try:
        text = await until_disconnected(request, whole())
    except (EndpointError, EndpointUnavailable) as error:
        raise failed_call("aligner", error) from None
    message = {"role": "assistant", "content": text, "upstream_content": upstream}
    return completion(service.name, {"message": message, "finish_reason": "stop"})


async def streamed(name: str, pieces: AsyncIterator[str], upstream: str) -> AsyncIterator[str]:
    """The correction's pieces as server-sent chunks; the first carries ``upstream``."""
    chunk_of = completion_id()

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> str:
        choice = {"delta": delta, "finish_reason": finish_reason}
        return event(completion(name, choice, chunk_of=chunk_of))

    yield chunk({"role": "assistant", "content": "", "upstream_content": upstream})
    async with contextlib.aclosing(pieces):  # a client gone mid-stream stops its row
        try:
            async for piece in pieces:
                yield chunk({"content": piece})
        except (EndpointError, EndpointUnavailable) as error:
            yield event(failed_call("aligner", error).body())
            return
    yield chunk({}, "stop")
    yield "data: [DONE]\n\n"


def add_error_handlers(app: FastAPI) -> None:
    """Every refusal, ours or the framework's, as a JSON body in OpenAI's error shape."""

    @app.exception_handler(ApiError)
    async def refused(_request: Request, error: ApiError) -> JSONResponse:
        return error.response()

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, error: HTTPException) -> JSONResponse:
        return ApiError(error.status_code, str(error.detail), "invalid_request_error").response()

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        return bad_request(str(error)).response()


def create_app(service: Service) -> FastAPI:
    """The server's routes over ``service``; the aligner starts and stops with the app."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with service.upstream.client(service.upstream_concurrency) as client:
            app.state.client = client
            await service.aligner.start()
            try:
                yield
            finally:
                await service.aligner.stop()

    app = FastAPI(title="aligner serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    add_error_handlers(app)
    app.add_middleware(
        RequestCap,
        limit=service.limits.max_concurrent_requests,
        path="/v1/chat/completions",
    )

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        check_key(service, request)
        model = {"id": service.name, "object": "model", "created": 0, "owned_by": "aligner"}
        return {"object": "list", "data": [model]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        check_key(service, request)
        body = await read_body(request, service.limits.max_body_bytes)
        messages, params, stream = parse_chat(body, service.limits)
        upstream = await upstream_reply(service, request, messages, params)
        prompt = aligner_prompt(service, messages, upstream)
        if stream:
            pieces = service.aligner.stream(prompt)
            return StreamingResponse(
                streamed(service.name, pieces, upstream), media_type="text/event-stream"
            )
        return await whole_reply(service, request, prompt, upstream)

    return app
