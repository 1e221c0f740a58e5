"""Stand-in servers on 127.0.0.1 for tests: a uvicorn runner, an OpenAI-compatible completions
server running a model folder greedily (as ``vllm serve`` would), a chat server, and a chat
server that scripts verdicts (or answers, ``AnswerHandler``) and faults per record
(``JudgeServer``); a free port."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """Run ``app`` on a free port of 127.0.0.1 in a thread; yields its base URL (``.../v1``)."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the stand-in did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def completions_app(folder: Path) -> FastAPI:
    """``POST /v1/completions`` for token-id prompts, decoded greedily by transformers with the
    request's ``stop_token_ids`` and ``max_tokens``; the reply's text skips special tokens. With
    ``"stream": true`` the text goes out as server-sent events, one per token that adds text,
    then ``data: [DONE]``, as vLLM sends it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    app = FastAPI()
    app.state.prompts = []

    @app.post("/v1/completions")
    async def complete(request: Request) -> Any:
        body = await request.json()
        prompt, stops = body["prompt"], body["stop_token_ids"]
        assert body["temperature"] == 0.0 and all(isinstance(i, int) for i in prompt)
        app.state.prompts.append(prompt)
        with torch.inference_mode():
            output = model.generate(
                torch.tensor([prompt]),
                max_new_tokens=body["max_tokens"],
                do_sample=False,
                eos_token_id=stops,
                pad_token_id=stops[0],
            )
        new = output[0, len(prompt) :].tolist()
        ended = next((i for i, token in enumerate(new) if token in stops), None)
        text = tokenizer.decode(new[:ended], skip_special_tokens=True)
        reason = "length" if ended is None else "stop"
        if not body.get("stream"):
            return {"choices": [{"index": 0, "text": text, "finish_reason": reason}]}
        pieces, sent = [], ""
        for count in range(1, len(new[:ended]) + 1):
            so_far = tokenizer.decode(new[:count], skip_special_tokens=True)
            if so_far != sent and so_far.startswith(sent) and not so_far.endswith("\ufffd"):
                pieces.append(so_far[len(sent) :])
                sent = so_far
        assert sent == text

        def event(piece: str, finish_reason: str | None = None) -> str:
            choice = {"index": 0, "text": piece, "finish_reason": finish_reason}
            return f"data: {json.dumps({'choices': [choice]})}\n\n"

        events = [*map(event, pieces), event("", reason), "data: [DONE]\n\n"]
        return StreamingResponse(iter(events), media_type="text/event-stream")

    return app


def chat_app(reply: Callable[[list[dict[str, Any]]], Awaitable[str | JSONResponse]]) -> FastAPI:
    """``POST /v1/chat/completions`` answering each conversation with ``await reply(messages)``
    (a ``JSONResponse`` is sent as it is, for errors); the requests are kept in
    ``app.state.requests``."""
    app = FastAPI()
    app.state.requests = []

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await request.json()
        app.state.requests.append({"body": body, "headers": dict(request.headers)})
        content = await reply(body["messages"])
        if isinstance(content, JSONResponse):
            return content
        message = {"role": "assistant", "content": content}
        return {
            "id": "chatcmpl-standin",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        }

    return app


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


KEY = "sk-test-SENTINEL-7f3a9c1e5b"
NUMBER = re.compile(r"Question (\d+):")


class JudgeServer(ThreadingHTTPServer):
    """An OpenAI-style chat-completions server. ``script[i]`` lists what the requests about
    record i get, one entry per attempt (the last entry repeats): ``win``, ``lose`` or ``tie``
    (a verdict for or against the correction, wherever it is shown), ``garbage`` (a reply
    without a verdict), ``429``, ``500``, ``slow`` (a verdict after the client's timeout),
    ``drop`` (connection closed, no reply) or ``malformed`` (a body that is not JSON)."""

    daemon_threads = True

    def __init__(self, script: dict[int, list[str]], slow_seconds: float = 1.5) -> None:
        super().__init__(("127.0.0.1", 0), JudgeHandler)
        self.script = script
        self.slow_seconds = slow_seconds
        self.lock = threading.Lock()
        self.asked: Counter[int] = Counter()
        self.in_flight = self.most_in_flight = 0
        self.gate_after: int | None = None  # hold every verdict after this many
        self.gate = threading.Event()
        self.verdicts_sent = 0
        self.bodies: list[dict] = []
        self.redirect_to = ""
        self.huge_bytes_sent = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def handle_error(self, request, client_address) -> None:
        pass  # a client that timed out and hung up: expected here


class JudgeHandler(BaseHTTPRequestHandler):
    server: JudgeServer
    protocol_version = "HTTP/1.1"  # chunked replies

    def log_message(self, *args: object) -> None:
        pass

    def reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/chat/completions":
            return self.reply(404, b'{"error": "not found"}')
        if self.headers.get("Authorization") != f"Bearer {KEY}":
            # Echoes what it got, as some servers do: the client must not repeat it.
            echoed = f'{{"error": "bad key {self.headers.get("Authorization")}"}}'
            return self.reply(401, echoed.encode())
        prompt = body["messages"][0]["content"]
        number = int(NUMBER.search(prompt).group(1))
        with server.lock:
            server.bodies.append(body)
            attempt = server.asked[number]
            server.asked[number] += 1
            server.in_flight += 1
            server.most_in_flight = max(server.most_in_flight, server.in_flight)
        try:
            script = server.script.get(number, ["win"])
            self.act(script[min(attempt, len(script) - 1)], prompt, number)
        finally:
            with server.lock:
                server.in_flight -= 1

    def stream_slowly_or_hugely(self, action: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if action == "trickle":
            self.send_header("Content-Length", "100000")
            self.end_headers()
            for _ in range(100000):
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.1)
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        chunk = b" " * (1 << 20)
        for _ in range(64):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            with self.server.lock:
                self.server.huge_bytes_sent += len(chunk)
        self.wfile.write(b"0\r\n\r\n")

    def act(self, action: str, prompt: str, number: int) -> None:
        if action == "429":
            return self.reply(429, b'{"error": "slow down"}', {"Retry-After": "0"})
        if action == "500":
            return self.reply(500, b'{"error": "overloaded"}')
        if action == "drop":
            self.close_connection = True
            return None
        if action == "malformed":
            return self.reply(200, b"<html>proxy error</html>")
        if action == "redirect":
            return self.reply(302, b"", {"Location": self.server.redirect_to})
        if action in ("trickle", "huge"):
            return self.stream_slowly_or_hugely(action)
        if action == "slow":
            time.sleep(self.server.slow_seconds)
            action = "win"
        correction_first = prompt.index(f"Correction {number}.") < prompt.index(f"Answer {number}.")
        text = {
            "win": f"The correction is right.\nVerdict: {'A' if correction_first else 'B'}",
            "lose": f"The answer is better.\n**Verdict: {'B' if correction_first else 'A'}**",
            "tie": "Both are fine.\n\nverdict: tie\n",
            "garbage": "I cannot decide between them. Both have merits.",
        }[action]
        payload = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}
        with self.server.lock:
            limit = self.server.gate_after
            held = limit is not None and self.server.verdicts_sent >= limit
            self.server.verdicts_sent += not held
        if held:
            self.server.gate.wait()
        return self.reply(200, json.dumps(payload).encode(), {"Content-Type": "application/json"})


class AnswerHandler(JudgeHandler):
    """The judge's server, faults and all, answering questions instead of judging: the
    action ``answer`` replies "The answer to N is N*N."."""

    def act(self, action: str, prompt: str, number: int) -> None:
        if action != "answer":
            return super().act(action, prompt, number)
        text = f"The answer to {number} is {number * number}."
        payload = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}
        return self.reply(200, json.dumps(payload).encode(), {"Content-Type": "application/json"})


def assert_key_nowhere(folder: Path, *printed: str) -> None:
    for text in printed:
        assert KEY not in text
    for path in folder.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
