"""The LLM judge against a real HTTP server on 127.0.0.1 that scripts verdicts and faults."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
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
from tests.standins import KEY, JudgeServer, assert_key_nowhere

from ..conftest import REPO_ROOT


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
    scripted_server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = scripted_server(FAULTS)
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
    scripted_server, tmp_path: Path
) -> None:
    server = scripted_server({})
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
    scripted_server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = scripted_server({2: ["500"], 4: ["garbage"]})
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


def test_a_killed_run_resumes_without_asking_twice(scripted_server, tmp_path: Path) -> None:
    server = scripted_server({})
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
    scripted_server,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = scripted_server({})
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
    scripted_server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = scripted_server({})
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
    scripted_server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sink = scripted_server({})  # another server: it must see no request at all
    server = scripted_server({0: ["redirect"]})
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
    scripted_server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = scripted_server({0: ["trickle"], 1: ["win"]})
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
    scripted_server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = scripted_server({0: ["huge"], 1: ["win"]})
    predictions = write_jsonl(tmp_path / "corrected.jsonl", records(2))
    argv = [*judge_args(predictions, server, "--judge_retries", 0, "--judge_timeout", 30)]
    argv += ["--judge_max_reply_bytes", 1 << 20]
    assert evaluate.main([str(a) for a in argv]) == 1
    assert f"a reply longer than {1 << 20} bytes" in capsys.readouterr().err
    # The client hung up soon after the cap: the server could not send all 64 MiB.
    assert server.huge_bytes_sent < 32 << 20
    assert [line["id"] for line in read_written(tmp_path / "corrected.judge.jsonl")] == ["r1"]


def test_ctrl_c_ends_a_stuck_judge_at_once_keeping_every_verdict(
    scripted_server, tmp_path: Path
) -> None:
    server = scripted_server({})
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
