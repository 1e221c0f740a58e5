"""Stand-in servers on 127.0.0.1 for tests: a uvicorn runner, an OpenAI-compatible completions
server running a model folder greedily (as ``vllm serve`` would), and a chat server."""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


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
    request's ``stop_token_ids`` and ``max_tokens``; the reply's text skips special tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    app = FastAPI()
    app.state.prompts = []

    @app.post("/v1/completions")
    async def complete(request: Request) -> dict[str, Any]:
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
        return {"choices": [{"index": 0, "text": text, "finish_reason": reason}]}

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
