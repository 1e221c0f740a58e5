"""``aligner answer --upstream_url`` under torchrun: each rank asks the endpoint for its share of
the questions, and the shares merge into one file in input order, each question asked once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

from aligner.inference.records import read_written
from tests.standins import KEY, AnswerHandler, JudgeServer, assert_key_nowhere, free_port

pytestmark = pytest.mark.integration

COUNT = 9


@pytest.mark.timeout(420)  # the launch below may take 300 s; a hang fails here
def test_two_ranks_split_the_questions_resume_and_merge(tmp_path: Path) -> None:
    server = JudgeServer({i: ["answer"] for i in range(COUNT)})
    server.RequestHandlerClass = AnswerHandler
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        source = tmp_path / "questions.jsonl"
        rows = [
            {"id": f"q{i}", "question": f"Question {i}: what is {i} squared?"} for i in range(COUNT)
        ]
        source.write_text("".join(json.dumps(row) + "\n" for row in rows))
        output = tmp_path / "answers.jsonl"
        args = ["answer", "--input", str(source), "--output", str(output)]
        args += ["--upstream_url", server.url, "--upstream_model", "upstream-1"]
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
        launcher += ["--master_addr", "127.0.0.1", "--master_port", str(free_port())]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENAI_API_KEY": KEY}
        env["NO_PROXY"] = "127.0.0.1"

        def launch() -> subprocess.CompletedProcess[str]:
            command = [*launcher, "-m", "aligner.cli", *args]
            return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)

        first = launch()
        assert first.returncode == 0, first.stderr[-3000:]
        assert server.asked == Counter({i: 1 for i in range(COUNT)})  # no question asked twice
        answers = read_written(output)
        assert [line["id"] for line in answers] == [f"q{i}" for i in range(COUNT)]
        assert [line["answer"] for line in answers] == [
            f"The answer to {i} is {i * i}." for i in range(COUNT)
        ]
        assert not list(tmp_path.glob("answers.jsonl.rank*"))  # the shares were merged

        # An interrupted two-rank run: part of the output, and one rank's unmerged share.
        output.write_text("".join(json.dumps(line) + "\n" for line in answers[:3]))
        rank1 = tmp_path / "answers.jsonl.rank1"
        rank1.write_text(json.dumps(answers[7]) + "\n")
        server.asked.clear()
        second = launch()
        assert second.returncode == 0, second.stderr[-3000:]
        assert server.asked == Counter({i: 1 for i in (3, 4, 5, 6, 8)})  # only the missing ones
        assert read_written(output) == answers
        assert not rank1.exists()
        assert_key_nowhere(tmp_path, first.stdout, first.stderr, second.stdout, second.stderr)
    finally:
        server.shutdown()
        server.server_close()
