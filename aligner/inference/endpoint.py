"""Calls to OpenAI-compatible endpoints: deadlines, retries, capped replies, no redirects.

One client serves every place the toolkit talks to a model server: the judge, the upstream
model's answers, an aligner served by vLLM or SGLang, and ``aligner serve``'s upstream. It is
httpx's async client, which gives connection pools, timeouts and cancellation; what is added
here is what a batch job against a remote server needs on top:

- an overall deadline per request (connect, send and the whole body), not only per socket
  read: a server that trickles a byte a second is cut off;
- a cap on the reply's size, read as it streams in, so a huge body never sits in memory;
- no redirect is ever followed: a 3xx is one line naming where it pointed, and the key is
  never sent anywhere but ``base_url``;
- retries, with exponential backoff or the server's ``Retry-After``, of a 429, a 5xx, a
  timeout, a dropped connection or a reply that is no completion; any other 4xx stops the run;
- bounded concurrency, results handed back as they arrive, and Ctrl-C that ends the run within
  a second or two (pending requests are cancelled, not waited for);
- streamed completions (``stream_completion``) under the same deadline, cap and retries,
  retried only until their first piece of text has been handed on.

``base_url`` is the server's base URL as OpenAI clients take it (``http://host:8000/v1``). The
key, if any, is sent as a bearer token and appears in no message, repr or file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from aligner.config import check_base_url
from aligner.errors import UserError

if TYPE_CHECKING:
    from aligner.config import CommandConfig

Item = TypeVar("Item")
Result = TypeVar("Result")

MAX_RETRY_AFTER = 60.0
"""Most seconds a server's Retry-After makes a request wait."""
ERROR_DETAIL_BYTES = 300
"""How much of a refusal's body is quoted in its one-line error."""


class EndpointError(UserError):
    """A request the server refuses for good (a bad key, model or body, a redirect): the run
    stops with this one line."""


class EndpointUnavailable(RuntimeError):
    """No reply after every retry: the server kept failing, timing out or sending garbage."""


class _Retry(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


def api_key_from_env(variable: str | None) -> str | None:
    """The key held by the environment variable named ``variable``; None without one (then
    requests carry no key). Read when a run starts and kept in memory only."""
    return (os.environ.get(variable) or None) if variable else None


def retry_after(headers: httpx.Headers) -> float | None:
    """The seconds a 429 or 503 asks the client to wait, capped; None if it names none."""
    value = headers.get("Retry-After")
    try:
        return min(max(float(value), 0.0), MAX_RETRY_AFTER) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


@dataclass(frozen=True)
class Reply:
    """The text of the first choice, and why generation ended (``stop``, ``length``...)."""

    text: str
    finish_reason: str | None = None


@dataclass(frozen=True)
class Endpoint:
    """One OpenAI-compatible server and model, and how hard to try each request."""

    base_url: str
    model: str
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 120.0
    """Overall seconds per request: connecting, sending, and reading the whole reply."""
    retries: int = 5
    """Retries after a 429, a 5xx, a timeout, a dropped connection or a malformed reply."""
    backoff: float = 1.0
    """Seconds before the first retry; doubled for each further one, with jitter."""
    max_reply_bytes: int = 8 << 20
    """A longer reply is cut off and counts as a failed try."""
    flag: str = "--judge_url"
    """The flag that named the URL, for messages."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "base_url", check_base_url(self.base_url, self.flag))

    def redact(self, text: str) -> str:
        return text.replace(self.api_key, "***") if self.api_key else text

    def client(self, concurrency: int) -> httpx.AsyncClient:
        """A client with a pool of ``concurrency`` connections that never follows a redirect
        and never reads proxy settings or credentials from the environment (``trust_env``)."""
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        return httpx.AsyncClient(
            timeout=httpx.Timeout(self.timeout),
            limits=limits,
            follow_redirects=False,
            trust_env=False,
        )

    async def chat(
        self, client: httpx.AsyncClient, messages: list[dict[str, Any]], **params: Any
    ) -> Reply:
        """The reply to a conversation (``POST {base_url}/chat/completions``)."""
        body = {"model": self.model, "messages": messages, **params}
        payload = await self.post(client, "/chat/completions", body)
        return _first_choice(payload, lambda choice: choice["message"]["content"])

    async def complete(
        self, client: httpx.AsyncClient, prompt: list[int] | str, **params: Any
    ) -> Reply:
        """The continuation of a prompt, text or token ids (``POST {base_url}/completions``)."""
        body = {"model": self.model, "prompt": prompt, **params}
        payload = await self.post(client, "/completions", body)
        return _first_choice(payload, lambda choice: choice["text"])

    async def post(self, client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> Any:
        """The JSON reply to ``body``, retried as documented, else ``EndpointUnavailable``."""
        url = self.base_url + path
        data = json.dumps(body).encode()
        reason = ""
        for attempt in range(self.retries + 1):
            try:
                return await asyncio.wait_for(self._attempt(client, url, data), self.timeout)
            except asyncio.TimeoutError:
                reason, wait = f"no complete reply within {self.timeout:g} s", None
            except _Retry as problem:
                reason, wait = self.redact(str(problem)), problem.retry_after
            await self._back_off(attempt, wait)
        raise EndpointUnavailable(f"{url}: no reply after {self.retries + 1} tries ({reason})")

    async def stream_completion(
        self, client: httpx.AsyncClient, prompt: list[int] | str, **params: Any
    ) -> AsyncIterator[str]:
        """The continuation of a prompt, each piece of text as the server streams it
        (``"stream": true``: server-sent events ending with ``[DONE]``).

        Retried as ``post`` is until the first piece is handed on; after that a failure raises
        ``EndpointUnavailable``, since text already passed on cannot be taken back. A task of
        its own reads the stream under the deadline, so that a caller holding a piece never
        stops the clock, and leaving the loop early ends the request."""
        url = self.base_url + "/completions"
        body = {"model": self.model, "prompt": prompt, **params, "stream": True}
        data = json.dumps(body).encode()
        reason = ""
        for attempt in range(self.retries + 1):
            pieces: asyncio.Queue[str | Exception | None] = asyncio.Queue()
            reader = asyncio.create_task(self._read_stream(client, url, data, pieces))
            handed_on = False
            try:
                while (piece := await pieces.get()) is not None:
                    if isinstance(piece, Exception):
                        raise piece
                    handed_on = True
                    yield piece
                return
            except _Retry as problem:
                reason, wait = self.redact(str(problem)), problem.retry_after
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
            if handed_on:
                raise EndpointUnavailable(f"{url}: the stream broke off ({reason})")
            await self._back_off(attempt, wait)
        raise EndpointUnavailable(f"{url}: no reply after {self.retries + 1} tries ({reason})")

    async def _back_off(self, attempt: int, wait: float | None) -> None:
        """Sleep before the next try (the doubled backoff with jitter, or the server's
        Retry-After if longer); not after the last."""
        if attempt < self.retries:
            delay = self.backoff * 2**attempt * random.uniform(0.5, 1.0)
            await asyncio.sleep(max(delay, wait or 0.0))

    @asynccontextmanager
    async def _response(
        self, client: httpx.AsyncClient, url: str, data: bytes, accept: str = "application/json"
    ) -> AsyncIterator[httpx.Response]:
        """The response to a POST of ``data`` whose status says a reply follows: a redirect
        or another 4xx stops the run; a 429, a 5xx or a transport failure, also while the
        body is read, is retried."""
        headers = {"Content-Type": "application/json", "Accept": accept}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        try:
            async with client.stream("POST", url, content=data, headers=headers) as response:
                if response.is_redirect:
                    where = response.headers.get("Location", "elsewhere")
                    raise EndpointError(
                        f"{self.flag} {url}: the server redirects (HTTP {response.status_code}) "
                        f"to {where}; redirects are not followed, give the final URL"
                    )
                if response.status_code == 429 or response.status_code >= 500:
                    raise _Retry(f"HTTP {response.status_code}", retry_after(response.headers))
                if response.status_code >= 400:
                    body = await self._read_capped(response)
                    detail = body[:ERROR_DETAIL_BYTES].decode("utf-8", "replace").strip()
                    raise EndpointError(
                        self.redact(
                            f"{url}: HTTP {response.status_code} {response.reason_phrase}: "
                            + " ".join(detail.split())
                        )
                    )
                yield response
        except httpx.TransportError as error:  # refused, unreachable, dropped, read timeout
            raise _Retry(f"{type(error).__name__}: {error}") from None

    async def _attempt(self, client: httpx.AsyncClient, url: str, data: bytes) -> Any:
        async with self._response(client, url, data) as response:
            body = await self._read_capped(response)
        try:
            return json.loads(body)
        except ValueError:
            raise _Retry("a reply that is not JSON") from None

    async def _read_stream(
        self,
        client: httpx.AsyncClient,
        url: str,
        data: bytes,
        pieces: asyncio.Queue[str | Exception | None],
    ) -> None:
        """One try at a stream: its pieces into ``pieces``, then None, or the failure."""

        async def read() -> None:
            size, pending = 0, b""
            async with self._response(client, url, data, "text/event-stream") as response:
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > self.max_reply_bytes:
                        raise _Retry(f"a reply longer than {self.max_reply_bytes} bytes")
                    *lines, pending = (pending + chunk).split(b"\n")
                    for line in lines:
                        payload = line.strip()
                        if not payload.startswith(b"data:"):
                            continue  # a blank line between events, or a comment
                        payload = payload.removeprefix(b"data:").strip()
                        if payload == b"[DONE]":
                            return
                        try:
                            event = json.loads(payload)
                        except ValueError:
                            raise _Retry("a stream event that is not JSON") from None
                        text = _first_choice(event, lambda choice: choice["text"]).text
                        if text:
                            pieces.put_nowait(text)
            raise _Retry("a stream that ended before its [DONE]")

        try:
            await asyncio.wait_for(read(), self.timeout)
        except asyncio.TimeoutError:
            pieces.put_nowait(_Retry(f"no complete reply within {self.timeout:g} s"))
        except Exception as error:  # raised where the pieces are read; none may end unheard
            pieces.put_nowait(error)
        else:
            pieces.put_nowait(None)

    async def _read_capped(self, response: httpx.Response) -> bytes:
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_reply_bytes:
            raise _Retry(f"a reply of {int(declared)} bytes, above {self.max_reply_bytes}")
        chunks, size = [], 0
        async for chunk in response.aiter_raw():
            size += len(chunk)
            if size > self.max_reply_bytes:
                raise _Retry(f"a reply longer than {self.max_reply_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)


def endpoint_from_args(args: CommandConfig, prefix: str) -> Endpoint | None:
    """The endpoint the ``--{prefix}_*`` flags of a parsed (so checked) config name; None
    without ``--{prefix}_url``.

    The key is read from its environment variable here and kept in memory only.
    """
    url, model = getattr(args, f"{prefix}_url"), getattr(args, f"{prefix}_model")
    if url is None:
        return None
    return Endpoint(
        base_url=url,
        model=model,
        api_key=api_key_from_env(getattr(args, f"{prefix}_api_key_env")),
        timeout=getattr(args, f"{prefix}_timeout"),
        retries=getattr(args, f"{prefix}_retries"),
        backoff=getattr(args, f"{prefix}_backoff"),
        max_reply_bytes=getattr(args, f"{prefix}_max_reply_bytes"),
        flag=f"--{prefix}_url",
    )


def _first_choice(payload: Any, text_of: Callable[[dict[str, Any]], Any]) -> Reply:
    try:
        choice = payload["choices"][0]
        text = text_of(choice)
    except (KeyError, IndexError, TypeError):
        raise _Retry("a reply that is not a completion") from None
    return Reply(text if isinstance(text, str) else "", choice.get("finish_reason"))


def run_requests(
    endpoint: Endpoint,
    items: Sequence[Item],
    request: Callable[[httpx.AsyncClient, Item], Awaitable[Result]],
    on_done: Callable[[Item, Result], None],
    *,
    concurrency: int,
) -> list[tuple[Item, EndpointUnavailable]]:
    """Run ``request`` for every item, ``concurrency`` at a time, and hand each result to
    ``on_done`` on this thread as it arrives (in completion order).

    Returns the items that got no reply after every retry, with their errors. An
    ``EndpointError`` (a refusal) or an exception from ``on_done`` cancels every request still
    running and propagates; so does Ctrl-C, as ``KeyboardInterrupt``, within a second or two.
    Results already handed to ``on_done`` are the caller's to keep.
    """
    if not items:
        return []
    failed: list[tuple[Item, EndpointUnavailable]] = []

    async def one(
        client: httpx.AsyncClient, slots: asyncio.Semaphore, index: int
    ) -> tuple[int, Any]:
        async with slots:
            try:
                return index, await request(client, items[index])
            except EndpointUnavailable as error:
                return index, error

    async def run_all() -> None:
        slots = asyncio.Semaphore(concurrency)
        async with endpoint.client(concurrency) as client:
            tasks = [asyncio.ensure_future(one(client, slots, i)) for i in range(len(items))]
            try:
                for next_done in asyncio.as_completed(tasks):
                    index, result = await next_done
                    if isinstance(result, EndpointUnavailable):
                        failed.append((items[index], result))
                    else:
                        on_done(items[index], result)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(run_all())
    return failed
