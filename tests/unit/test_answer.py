"""``aligner answer`` through an endpoint: a real HTTP server on 127.0.0.1 that throttles,
fails, times out and drops connections; nothing lost, each record asked for until answered."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from aligner.commands import answer as answer_command
from aligner.inference.records import read_written
from tests.standins import KEY, AnswerHandler, JudgeServer, assert_key_nowhere


@pytest.fixture
def serve_answers(scripted_server):
    def start(script: dict[int, list[str]]) -> JudgeServer:
        server = scripted_server(script, slow_seconds=1.5)
        server.RequestHandlerClass = AnswerHandler
        return server

    return start


@pytest.fixture(autouse=True)
def _upstream_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")


def questions(path: Path, count: int) -> Path:
    rows = [
        {"id": f"q{i}", "question": f"Question {i}: what is {i} squared?"} for i in range(count)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def answer(source: Path, output: Path, server: JudgeServer, *extra: object) -> int:
    args = ["--input", source, "--output", output, "--upstream_url", server.url]
    args += ["--upstream_model", "upstream-1", "--upstream_timeout", 0.5]
    args += ["--upstream_backoff", 0.01, "--upstream_retries", 3, "--upstream_concurrency", 3]
    return answer_command.main([str(arg) for arg in [*args, *extra]])


FAULTS = {
    0: ["answer"],
    1: ["429", "429", "answer"],
    2: ["500", "answer"],
    3: ["slow", "answer"],
    4: ["malformed", "answer"],
    5: ["drop", "answer"],
    6: ["500"],  # fails every try: the run ends without it
    7: ["answer"],
}


def test_endpoint_answers_survive_every_fault_and_resume(
    serve_answers, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = serve_answers(FAULTS)
    source, output = questions(tmp_path / "q.jsonl", 8), tmp_path / "answers.jsonl"
    assert answer(source, output, server) == 1
    first = capsys.readouterr()
    assert "1 records got no answer" in first.err and "run the same command again" in first.err
    written = read_written(output)
    assert sorted(line["id"] for line in written) == [f"q{i}" for i in range(8) if i != 6]
    assert server.asked == Counter({i: 4 if i == 6 else len(s) for i, s in FAULTS.items()})
    assert 2 <= server.most_in_flight <= 3

    server.script[6] = ["answer"]
    server.asked.clear()
    assert answer(source, output, server) == 0
    second = capsys.readouterr()
    assert server.asked == Counter({6: 1})  # only what was missing is asked for again
    lines = read_written(output)
    assert [line["id"] for line in lines] == [f"q{i}" for i in range(8)]  # each once, in order
    assert [line["answer"] for line in lines] == [
        f"The answer to {i} is {i * i}." for i in range(8)
    ]
    assert {json.dumps(line["answer_source"], sort_keys=True) for line in lines} == {
        json.dumps(
            {
                "model": "upstream-1",
                "url": server.url,
                "max_new_tokens": 512,
                "do_sample": False,
                "temperature": None,
                "top_p": None,
                "top_k": None,
                "seed": None,
            },
            sort_keys=True,
        )
    }
    assert {(b["model"], b["temperature"], b["max_tokens"]) for b in server.bodies} == {
        ("upstream-1", 0, 512)
    }
    # What `aligner correct` reads: each record a question and its answer.
    assert all(set(line) >= {"id", "question", "answer"} for line in lines)
    assert_key_nowhere(tmp_path, first.out, first.err, second.out, second.err)


def test_other_sampling_settings_are_not_resumed_into(
    serve_answers, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = serve_answers({0: ["answer"], 1: ["answer"]})
    source, output = questions(tmp_path / "q.jsonl", 2), tmp_path / "answers.jsonl"
    assert answer(source, output, server) == 0
    assert answer(source, output, server, "--do_sample", "--temperature", 0.7) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("aligner answer: error:") and "do_sample" in error
    assert len(read_written(output)) == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "give the upstream model: --model_name_or_path or --upstream_url"),
        (["--upstream_url", "http://127.0.0.1:9/v1"], "give both --upstream_url and"),
        (
            ["--upstream_url", "http://127.0.0.1:9/v1", "--upstream_model", "m", "--top_p", "0.5"],
            "--top_p take effect only with --do_sample",
        ),
    ],
)
def test_usage_errors_are_one_line_and_write_nothing(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = questions(tmp_path / "q.jsonl", 1)
    args = ["--input", str(source), "--output", str(tmp_path / "a.jsonl"), *extra]
    assert answer_command.main(args) == 2
    error = capsys.readouterr().err.strip()
    assert error == f"aligner answer: error: {error.split('error: ', 1)[1]}"
    assert message in error and len(error.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.jsonl"]
