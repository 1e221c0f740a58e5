"""``aligner serve`` as users run it: a subprocess on 127.0.0.1 in front of a stand-in upstream,
with a tiny trained aligner, called by the official ``openai`` client and by raw HTTP."""

from __future__ import annotations

import asyncio
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from fastapi.responses import JSONResponse

from tests.conftest import CHAT_MEMORISED, REPO_ROOT
from tests.integration.conftest import clean_env
from tests.standins import chat_app, free_port, serving

CLIENT_KEY = "client-secret-4d1c"
UPSTREAM_KEY = "upstream-secret-9e7a"


def conversation(record: dict) -> list[dict[str, str]]:
    return record.get("messages") or [{"role": "user", "content": record["question"]}]


ANSWERS = {conversation(r)[-1]["content"]: r["answer"] for r in CHAT_MEMORISED}
"""The stand-in upstream's reply to each conversation's last turn: the memorised answer, which
the aligner learned to correct."""
QUESTION = conversation(CHAT_MEMORISED[-1])
DELAY = {"seconds": 0.0}
UPSTREAM_TIMEOUT = 4.0
"""Long enough for the stand-in under the load test on a busy machine."""


async def upstream_reply(messages: list[dict]) -> str | JSONResponse:
    last = messages[-1]["content"]
    if last == "FAIL":
        return JSONResponse({"error": {"message": "boom"}}, status_code=500)
    if last == "SLOW":
        await asyncio.sleep(UPSTREAM_TIMEOUT + 2)
        return "Too late."
    await asyncio.sleep(DELAY["seconds"])
    return ANSWERS[last]


@dataclass
class Served:
    process: subprocess.Popen
    url: str
    log: Path

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


def start(checkpoint: Path, upstream_url: str, work: Path, name: str) -> Served:
    port = free_port()
    env = clean_env(work) | {"SERVE_KEY": CLIENT_KEY, "OPENAI_API_KEY": UPSTREAM_KEY}
    command = [
        sys.executable, "-m", "aligner.cli", "serve",
        "--model_name_or_path", str(checkpoint), "--port", str(port),
        "--upstream_url", upstream_url, "--upstream_model", "standin",
        "--upstream_retries", "0", "--upstream_timeout", str(UPSTREAM_TIMEOUT),
        "--api_key_env", "SERVE_KEY", "--batch_size", "64", "--max_new_tokens", "16",
        "--max_body_bytes", "20000", "--max_messages", "8", "--max_tokens", "256",
    ]  # fmt: skip
    log = work / f"{name}.log"
    with open(log, "w") as handle:
        process = subprocess.Popen(
            command, env=env, cwd=REPO_ROOT, stdout=handle, stderr=subprocess.STDOUT
        )
    return Served(process, f"http://127.0.0.1:{port}/v1", log)


def wait_ready(served: Served, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert served.process.poll() is None, served.log.read_text()
        try:
            if httpx.get(served.url.removesuffix("/v1") + "/health").status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError(f"not ready: {served.log.read_text()}")


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[object, str]]:
    app = chat_app(upstream_reply)
    with serving(app) as url:
        yield app, url


@pytest.fixture(scope="module")
def servers(chat_checkpoint: Path, upstream, tmp_path_factory) -> Iterator[dict[str, Served]]:
    """The server in front of the stand-in, and one whose upstream port is closed; both
    started at once."""
    work = tmp_path_factory.mktemp("serve")
    running = {
        "main": start(chat_checkpoint, upstream[1], work, "main"),
        "unreachable": start(chat_checkpoint, f"http://127.0.0.1:{free_port()}/v1", work, "dead"),
    }
    try:
        for served in running.values():
            wait_ready(served)
        yield running
    finally:
        for served in running.values():
            served.stop()
        for served in running.values():
            log = served.log.read_text()
            assert CLIENT_KEY not in log and UPSTREAM_KEY not in log


def client(served: Served, key: str = CLIENT_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=served.url, api_key=key, max_retries=0, timeout=60)


def test_the_openai_client_gets_corrected_replies_plain_and_streamed(servers, upstream) -> None:
    main = client(servers["main"])
    for record in CHAT_MEMORISED:
        reply = main.chat.completions.create(
            model="standin", messages=conversation(record), metadata={"team": "a"}
        )
        message = reply.choices[0].message
        assert message.content == record["correction"]
        assert message.upstream_content == record["answer"]
        assert reply.model == "standin"

        chunks = list(
            main.chat.completions.create(
                model="standin",
                messages=conversation(record),
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
        assert "".join(pieces) == record["correction"]
        assert len(pieces) > 1  # streamed as generated, not sent whole
        assert chunks[0].choices[0].delta.upstream_content == record["answer"]
        assert chunks[-1].choices[0].finish_reason == "stop"
        assert len({chunk.id for chunk in chunks}) == 1
    sent = upstream[0].state.requests[-1]
    assert sent["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert sent["body"]["messages"] == conversation(CHAT_MEMORISED[-1])
    assert [m.id for m in main.models.list()] == ["standin"]


def test_load_of_64_concurrent_clients(servers) -> None:
    async def one_client(api: openai.AsyncOpenAI, latencies: list[float]) -> list[bool]:
        corrected = []
        for index in range(4):
            record = CHAT_MEMORISED[index % len(CHAT_MEMORISED)]
            began = time.perf_counter()
            reply = await api.chat.completions.create(
                model="standin", messages=conversation(record)
            )
            latencies.append(time.perf_counter() - began)
            corrected.append(reply.choices[0].message.content == record["correction"])
        return corrected

    async def load() -> tuple[list[list[bool]], list[float]]:
        latencies: list[float] = []
        api = openai.AsyncOpenAI(
            base_url=servers["main"].url, api_key=CLIENT_KEY, max_retries=0, timeout=120
        )
        async with api:
            results = await asyncio.gather(*(one_client(api, latencies) for _ in range(64)))
        return results, latencies

    results, latencies = asyncio.run(load())
    assert all(all(corrected) for corrected in results) and len(latencies) == 256
    p50, p95 = (
        statistics.quantiles(latencies, n=100)[49],
        statistics.quantiles(latencies, n=100)[94],
    )
    print(f"\nload: 64 clients x 4 requests, 0 errors; latency p50 {p50:.3f} s, p95 {p95:.3f} s")


def test_latency_the_aligner_adds_for_one_client(servers, upstream) -> None:
    def median_latency(api: openai.OpenAI) -> float:
        latencies = []
        for _ in range(10):
            began = time.perf_counter()
            api.chat.completions.create(model="standin", messages=QUESTION)
            latencies.append(time.perf_counter() - began)
        return statistics.median(latencies)

    alone = median_latency(openai.OpenAI(base_url=upstream[1], api_key="-", max_retries=0))
    served = median_latency(client(servers["main"]))
    print(f"\nadded latency, one client: median {1000 * (served - alone):.1f} ms per request")
    assert served > alone


def post(served: Served, body: object = None, *, key: str = CLIENT_KEY, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    kwargs.setdefault("timeout", 60)
    return httpx.post(f"{served.url}/chat/completions", json=body, headers=headers, **kwargs)


def error_of(response: httpx.Response) -> dict:
    error = response.json()["error"]
    assert error["message"] and error["type"]
    return error


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"model": "m"}, 400, "'messages'"),
        ({"model": "m", "messages": []}, 400, "empty"),
        ({"model": "m", "messages": [{"role": "assistant", "content": "x"}]}, 400, "last turn"),
        ({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, 400, "role"),
        ({"model": "m", "messages": QUESTION * 9}, 400, "above 8"),
        ({"model": "m", "messages": QUESTION, "max_tokens": 10**6}, 400, "max_tokens"),
        ({"model": "m", "messages": QUESTION, "n": 2}, 400, "'n'"),
        ({"model": "m", "messages": QUESTION, "tools": []}, 400, "tools"),
        ({"model": "m", "messages": [{"role": "user", "content": "x" * 30000}]}, 413, "20000"),
        ([1, 2], 400, "object"),
    ],
)
def test_bad_requests_get_clear_openai_errors(servers, body, status, says) -> None:
    response = post(servers["main"], body)
    assert response.status_code == status
    assert says in error_of(response)["message"]


def test_a_body_that_is_not_json_and_a_wrong_key_are_refused(servers) -> None:
    main = servers["main"]
    response = post(main, content=b"{not json", key=CLIENT_KEY)
    assert response.status_code == 400 and "not JSON" in error_of(response)["message"]
    for headers in ({"Authorization": "Bearer wrong-key"}, {}):
        refused = httpx.post(
            f"{main.url}/chat/completions",
            json={"model": "m", "messages": QUESTION},
            headers=headers,
        )
        assert refused.status_code == 401 and error_of(refused)["code"] == "invalid_api_key"
        assert CLIENT_KEY not in refused.text
    with pytest.raises(openai.AuthenticationError):
        client(main, key="wrong-key").models.list()
    assert httpx.get(main.url + "/models").status_code == 401


def test_upstream_failures_become_502_and_504_and_the_server_keeps_serving(servers) -> None:
    main = servers["main"]
    failed = post(main, {"model": "m", "messages": [{"role": "user", "content": "FAIL"}]})
    assert failed.status_code == 502 and "HTTP 500" in error_of(failed)["message"]
    slow = post(main, {"model": "m", "messages": [{"role": "user", "content": "SLOW"}]})
    assert slow.status_code == 504 and "within 4 s" in error_of(slow)["message"]
    dead = post(servers["unreachable"], {"model": "m", "messages": QUESTION})
    assert dead.status_code == 502 and "ConnectError" in error_of(dead)["message"]
    for message in (failed.text, slow.text, dead.text):
        assert UPSTREAM_KEY not in message
    ok = post(main, {"model": "m", "messages": QUESTION})
    assert ok.json()["choices"][0]["message"]["content"] == CHAT_MEMORISED[-1]["correction"]


def test_a_client_that_leaves_is_let_go_and_the_server_keeps_serving(servers) -> None:
    main = servers["main"]
    with pytest.raises(httpx.ReadTimeout):  # gone while the upstream still thinks
        post(main, {"model": "m", "messages": [{"role": "user", "content": "SLOW"}]}, timeout=0.5)
    time.sleep(0.3)
    ok = post(main, {"model": "m", "messages": QUESTION})
    assert ok.json()["choices"][0]["message"]["content"] == CHAT_MEMORISED[-1]["correction"]
    assert "Traceback" not in main.log.read_text()


def test_sigterm_lets_requests_in_flight_finish_and_refuses_new_ones(servers) -> None:
    main = servers["main"]
    DELAY["seconds"] = 1.0
    replies: list[httpx.Response] = []
    threads = [
        threading.Thread(
            target=lambda: replies.append(post(main, {"model": "m", "messages": QUESTION}))
        )
        for _ in range(3)
    ]
    try:
        for thread in threads:
            thread.start()
        time.sleep(0.5)  # the three are waiting for the upstream
        main.process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        with pytest.raises(httpx.ConnectError):
            post(main, {"model": "m", "messages": QUESTION})
        for thread in threads:
            thread.join(timeout=60)
    finally:
        DELAY["seconds"] = 0.0
    # uvicorn ends by re-raising the signal once drained: the shell sees 143, as for any
    # command SIGTERM stopped.
    assert main.process.wait(timeout=60) == -signal.SIGTERM
    assert [r.status_code for r in replies] == [200] * 3
    expected = CHAT_MEMORISED[-1]["correction"]
    assert all(r.json()["choices"][0]["message"]["content"] == expected for r in replies)
