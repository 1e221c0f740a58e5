"""The LLM judge against a real HTTP server on 127.0.0.1 that scripts verdicts and faults."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from aligner.commands import eval as evaluate
from aligner.inference.judge import (
    DEFAULT_PROMPT,
    order_for,
    parse_verdict,
    render_prompt,
)
from aligner.inference.records import read_written

from ..conftest import REPO_ROOT

KEY = "sk-test-SENTINEL-7f3a9c1e5b"
NUMBER = re.compile(r"Question (\d+):")


def records(count: int) -> list[dict]:
    return [
        {
            "id": f"r{i}",
            "question": f"Question {i}: what is {i} squared?",
            "answer": f"Answer {i}.",
            "correction": f"Correction {i}.",
        }
        for i in range(count)
    ]


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


@pytest.fixture
def serve():
    servers = []

    def start(script: dict[int, list[str]], **options: float) -> JudgeServer:
        server = JudgeServer(script, **options)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.gate.set()
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def _judge_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # a proxy set outside must not see the requests


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def judge_args(predictions: Path, server: JudgeServer, *extra: object) -> list[str]:
    args = ["--predictions", predictions, "--judge_url", server.url, "--judge_model", "judge-1"]
    args += ["--judge_timeout", 0.5, "--judge_backoff", 0.01, "--judge_concurrency", 3]
    return [str(a) for a in (*args, *extra)]


def assert_key_nowhere(folder: Path, *printed: str) -> None:
    for text in printed:
        assert KEY not in text
    for path in folder.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


FAULTS = {
    0: ["win"],
    1: ["429", "429", "win"],
    2: ["500", "lose"],
    3: ["slow", "win"],
    4: ["garbage"],
    5: ["malformed", "tie"],
    6: ["drop", "lose"],
    7: ["tie"],
    8: ["500", "429", "slow", "garbage"],
    9: ["win"],
}


def test_judge_survives_every_fault_and_counts_every_verdict(
    serve, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = serve(FAULTS)
    predictions = write_jsonl(tmp_path / "corrected.jsonl", records(10))
    output = tmp_path / "report.json"
    assert evaluate.main([*judge_args(predictions, server), "--output", str(output)]) == 0
    printed = capsys.readouterr()
    report = json.loads(output.read_text())["judge"]
    # Valid verdicts: wins 0, 1, 3, 9; losses 2, 6; ties 5, 7. Invalid: 4 and 8.
    assert report == {
        "model": "judge-1",
        "num_records": 10,
        "judged": 8,
        "win_rate": 4 / 8,
        "tie_rate": 2 / 8,
        "lose_rate": 2 / 8,
        "invalid": 2,
        "failed": 0,
        "judge_output": str(tmp_path / "corrected.judge.jsonl"),
    }
    lines = read_written(tmp_path / "corrected.judge.jsonl")
    assert [line["id"] for line in lines] == [f"r{i}" for i in range(10)]  # each once, in order
    winners = [line["judge_winner"] for line in lines]
    expected = "correction correction answer correction invalid tie answer tie invalid correction"
    assert winners == expected.split()
    assert lines[4]["judge_verdict"] is None and "cannot decide" in lines[4]["judge_reply"]
    assert server.asked == Counter({i: len(script) for i, script in FAULTS.items()})
    assert 2 <= server.most_in_flight <= 3
    assert {(b["model"], b["temperature"], b["max_tokens"]) for b in server.bodies} == {
        ("judge-1", 0.0, 1024)
    }
    assert_key_nowhere(tmp_path, printed.out, printed.err)


def test_the_order_is_seeded_per_record_recorded_and_shown_as_recorded(
    serve, tmp_path: Path
) -> None:
    server = serve({})
    predictions = write_jsonl(tmp_path / "corrected.jsonl", records(40))
    runs = {}
    for name, seed in [("a", 1), ("b", 1), ("c", 2)]:
        argv = judge_args(predictions, server, "--seed", seed, "--judge_output", tmp_path / name)
        assert evaluate.main(argv) == 0
        runs[name] = [line["judge_order"] for line in read_written(tmp_path / name)]
    assert runs["a"] == runs["b"] != runs["c"]
    first = Counter(order[0] for order in runs["a"])
    assert 10 <= first["correction"] <= 30  # both orders are used
    assert runs["a"] == [order_for(f"r{i}", 1) for i in range(40)]
    # Every request showed the replies in the recorded order, and every win is the correction's.
    lines = read_written(tmp_path / "a")
    assert {line["judge_winner"] for line in lines} == {"correction"}


def test_a_record_the_server_keeps_failing_is_asked_again_by_the_next_run_only(
    serve, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = serve({2: ["500"], 4: ["garbage"]})
    predictions = write_jsonl(tmp_path / "corrected.jsonl", records(6))
    argv = judge_args(predictions, server, "--judge_retries", 2)
    assert evaluate.main(argv) == 1  # not every record has a verdict: say so
    err = capsys.readouterr().err
    assert "1 records got no verdict" in err and "run the same command again" in err
    output = tmp_path / "corrected.judge.jsonl"
    assert sorted(line["id"] for line in read_written(output)) == ["r0", "r1", "r3", "r4", "r5"]
    assert server.asked[2] == 3

    server.script[2] = ["tie"]
    server.asked.clear()
    capsys.readouterr()
    assert evaluate.main(argv) == 0
    assert server.asked == Counter({2: 1})  # the invalid verdict of r4 is an answer: not re-asked
    assert "5 records already judged, skipped" in capsys.readouterr().out
    assert [line["id"] for line in read_written(output)] == [f"r{i}" for i in range(6)]


def test_a_killed_run_resumes_without_asking_twice(serve, tmp_path: Path) -> None:
    server = serve({})
    server.gate_after = 4  # four verdicts, then every request hangs until the kill
    predictions = write_jsonl(tmp_path / "corrected.jsonl", records(12))
    output = tmp_path / "corrected.judge.jsonl"
    argv = judge_args(predictions, server, "--judge_timeout", 60)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "aligner.cli", "eval", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    deadline = time.monotonic() + 120
    while not (output.exists() and output.read_text().count("\n") >= 4):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    out, err = process.communicate(timeout=30)
    first = read_written(output)
    assert len(first) == 4

    server.gate_after = None
    server.gate.set()
    asked_before = Counter(server.asked)
    server.asked.clear()
    assert evaluate.main(argv) == 0
    judged_first = {int(line["id"][1:]) for line in first}
    assert not judged_first & set(server.asked)  # nothing with a verdict is asked again
    assert set(server.asked) | judged_first == set(range(12))
    assert all(asked_before[i] == 1 for i in judged_first)
    final = read_written(output)
    assert [line["id"] for line in final] == [f"r{i}" for i in range(12)]
    assert [line for line in final if line["id"] in {x["id"] for x in first}] == sorted(
        first, key=lambda line: int(line["id"][1:])
    )
    assert_key_nowhere(tmp_path, out.decode(), err.decode())


def test_a_refused_key_stops_the_run_in_one_line_without_the_key(
    serve, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve({})
    predictions = write_jsonl(tmp_path / "corrected.jsonl", records(3))
    monkeypatch.setenv("MY_JUDGE_KEY", KEY + "-wrong")
    argv = judge_args(predictions, server, "--judge_api_key_env", "MY_JUDGE_KEY")
    assert evaluate.main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("aligner eval: error:") and "HTTP 401" in error
    assert "bad key Bearer ***" in error and KEY not in error
    assert read_written(tmp_path / "corrected.judge.jsonl") == []
    assert_key_nowhere(tmp_path)


def test_a_prompt_file_replaces_the_default(
    serve, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = serve({})
    predictions = write_jsonl(tmp_path / "corrected.jsonl", records(2))
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Judge kindly.\n{conversation}\nA) {reply_a}\nB) {reply_b}\nVerdict: ?\n")
    assert evaluate.main(judge_args(predictions, server, "--judge_prompt", prompt)) == 0
    sent = [b["messages"][0]["content"] for b in server.bodies]
    assert all(text.startswith("Judge kindly.\nQuestion ") for text in sent)
    capsys.readouterr()
    prompt.write_text("no placeholders here {reply_a}")
    argv = judge_args(predictions, server, "--judge_prompt", prompt, "--judge_output", "x.jsonl")
    assert evaluate.main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error == (
        f"aligner eval: error: --judge_prompt {prompt}: missing the placeholder(s) "
        "{conversation}, {reply_b}"
    )
    assert not Path("x.jsonl").exists()


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ("Reasoning.\nVerdict: A", "A"),
        ("Verdict: B\n\n", "B"),
        ("**Verdict: tie**", "tie"),
        ("Verdict: **a**.", "A"),
        ("verdict:TIE", "tie"),
        ("Verdict: A\nOn second thought, B.", None),  # the verdict must be the last line
        ("Verdict: C", None),
        ("Final verdict: A", None),
        ("", None),
    ],
)
def test_parse_verdict(reply: str, verdict: str | None) -> None:
    assert parse_verdict(reply) == verdict


def test_placeholders_are_filled_once() -> None:
    text = render_prompt(DEFAULT_PROMPT, "User: hi", "I say {reply_b}", "plain")
    assert "I say {reply_b}" in text and "[Reply B]\nplain" in text
    assert "{conversation}" not in text


def test_a_redirect_is_never_followed_and_the_key_goes_nowhere_else(
    serve, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sink = serve({})  # another server: it must see no request at all
    server = serve({0: ["redirect"]})
    server.redirect_to = sink.url + "/chat/completions"
    predictions = write_jsonl(tmp_path / "corrected.jsonl", records(1))
    assert evaluate.main(judge_args(predictions, server)) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("aligner eval: error: --judge_url ")
    assert "redirects (HTTP 302) to " + sink.url in error and "not followed" in error
    assert sink.asked == Counter() and sink.bodies == []
    assert read_written(tmp_path / "corrected.judge.jsonl") == []
    assert_key_nowhere(tmp_path, error)


def test_a_trickling_reply_is_cut_off_at_the_overall_deadline(
    serve, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = serve({0: ["trickle"], 1: ["win"]})
    predictions = write_jsonl(tmp_path / "corrected.jsonl", records(2))
    argv = judge_args(predictions, server, "--judge_timeout", 1, "--judge_retries", 1)
    started = time.monotonic()
    assert evaluate.main(argv) == 1  # r0 got no verdict: asked again by the next run
    elapsed = time.monotonic() - started
    # Each read gets a byte within 0.1 s, so only the overall deadline can end a try: two tries
    # of 1 s each, not 10,000 s of trickle.
    assert elapsed < 10, elapsed
    assert server.asked[0] == 2
    assert "no complete reply within 1 s" in capsys.readouterr().err
    assert [line["id"] for line in read_written(tmp_path / "corrected.judge.jsonl")] == ["r1"]


def test_a_huge_reply_is_capped_while_it_streams_in(
    serve, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = serve({0: ["huge"], 1: ["win"]})
    predictions = write_jsonl(tmp_path / "corrected.jsonl", records(2))
    argv = [*judge_args(predictions, server, "--judge_retries", 0, "--judge_timeout", 30)]
    argv += ["--judge_max_reply_bytes", 1 << 20]
    assert evaluate.main([str(a) for a in argv]) == 1
    assert f"a reply longer than {1 << 20} bytes" in capsys.readouterr().err
    # The client hung up soon after the cap: the server could not send all 64 MiB.
    assert server.huge_bytes_sent < 32 << 20
    assert [line["id"] for line in read_written(tmp_path / "corrected.judge.jsonl")] == ["r1"]


def test_ctrl_c_ends_a_stuck_judge_at_once_keeping_every_verdict(serve, tmp_path: Path) -> None:
    server = serve({})
    server.gate_after = 3  # three verdicts, then every request hangs
    predictions = write_jsonl(tmp_path / "corrected.jsonl", records(8))
    output = tmp_path / "corrected.judge.jsonl"
    argv = judge_args(predictions, server, "--judge_timeout", 600)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "aligner.cli", "eval", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    deadline = time.monotonic() + 120
    while not (output.exists() and output.read_text().count("\n") >= 3):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(0.3)  # the other requests are now held by the server
    interrupted = time.monotonic()
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert time.monotonic() - interrupted < 5
    assert process.returncode == 130, err.decode()
    assert err.decode().strip().splitlines()[-1].startswith("aligner eval: error: interrupted")
    assert len(read_written(output)) == 3
