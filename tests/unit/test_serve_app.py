"""``aligner serve``'s app in this process, on 127.0.0.1, in front of a stand-in upstream that
holds its replies until the test lets them go: the cap on requests in flight."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from aligner.commands import serve as serve_command
from aligner.config import ServeConfig
from aligner.serving.app import create_app
from tests.standins import chat_app, serving

BODY = {"model": "m", "messages": [{"role": "user", "content": "Question?"}]}


@pytest.fixture
def held_upstream(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, threading.Event, list]]:
    """A chat server whose replies wait for the event; the requests it got, in a list."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    gate = threading.Event()

    async def reply(_messages: list[dict]) -> str:
        await asyncio.to_thread(gate.wait, 60)
        return "An answer."

    app = chat_app(reply)
    with serving(app) as url:
        yield url, gate, app.state.requests
    gate.set()


def wait_for(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_requests_over_the_cap_get_429_until_one_ends(
    tiny_checkpoint_dir: Path, held_upstream: tuple[str, threading.Event, list]
) -> None:
    upstream_url, gate, asked = held_upstream
    flags = ["--model_name_or_path", str(tiny_checkpoint_dir), "--max_concurrent_requests", "2"]
    flags += ["--upstream_url", upstream_url, "--upstream_model", "u", "--max_new_tokens", "4"]
    app = create_app(serve_command.prepare(ServeConfig.parse(flags)).found)
    with serving(app) as url, ThreadPoolExecutor(4) as pool:

        def post(timeout: float = 60) -> httpx.Response:
            return httpx.post(f"{url}/chat/completions", json=BODY, timeout=timeout)

        def held_pair() -> list[Future[httpx.Response]]:
            before = len(asked)
            pair = [pool.submit(post) for _ in range(2)]
            wait_for(lambda: len(asked) == before + 2)  # both wait on the upstream
            return pair

        pair = held_pair()
        busy = post()
        assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
        assert busy.json()["error"]["code"] == "rate_limit_exceeded"
        assert len(asked) == 2  # refused before the upstream was asked
        assert httpx.get(url.removesuffix("/v1") + "/health").status_code == 200
        gate.set()
        assert [future.result().status_code for future in pair] == [200, 200]
        gate.clear()

        # A client that leaves gives its place back.
        with pytest.raises(httpx.ReadTimeout):
            post(timeout=0.5)
        assert len(asked) == 3
        time.sleep(1.0)  # the server notices that the client has gone, and ends its request
        pair = held_pair()
        assert post().status_code == 429  # exactly two in flight again: nothing leaked
        gate.set()
        assert [future.result().status_code for future in pair] == [200, 200]
        assert post().status_code == 200
