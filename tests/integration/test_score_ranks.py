"""``aligner eval --reward_model`` under torchrun: records scored over two CPU ranks, merged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aligner.commands import eval as evaluate
from aligner.inference.records import read_written
from tests.standins import free_port

pytestmark = pytest.mark.integration

RECORDS = [
    {
        "question": f"Question {i}?" + " more" * i,
        "answer": f"Answer {i}.",
        "correction": f"Fix {i}.",
    }
    for i in range(9)
]


@pytest.mark.timeout(420)  # the launch below may take 300 s; a hang fails here
def test_two_ranks_resume_and_match_one_process(tmp_path: Path) -> None:
    from aligner.tiny import write_tiny_reward_model

    model = write_tiny_reward_model(tmp_path / "reward")
    predictions = tmp_path / "corrected.jsonl"
    predictions.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    args = ["--predictions", str(predictions), "--reward_model", str(model), "--batch_size", "2"]
    reference_path = tmp_path / "reference.jsonl"
    assert evaluate.main([*args, "--scores_output", str(reference_path)]) == 0
    reference = read_written(reference_path)

    # What an interrupted two-rank run leaves: part of the output, a rank's shard, settings.
    output = tmp_path / "scores.jsonl"
    output.write_text(json.dumps(reference[0]) + "\n")
    (tmp_path / "scores.jsonl.rank1").write_text(json.dumps(reference[5]) + "\n")
    settings = reference_path.with_name(reference_path.name + ".settings.json")
    (tmp_path / "scores.jsonl.settings.json").write_text(settings.read_text())
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    launcher += ["--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    result = subprocess.run(
        [*launcher, "-m", "aligner.cli", "eval", *args, "--scores_output", str(output)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    merged = read_written(output)
    assert [line["id"] for line in merged] == [line["id"] for line in reference]
    for line, expected in zip(merged, reference, strict=True):
        assert line["reward_answer"] == pytest.approx(expected["reward_answer"], abs=1e-5)
        assert line["reward_correction"] == pytest.approx(expected["reward_correction"], abs=1e-5)
    assert not list(tmp_path.glob("scores.jsonl.rank*"))  # the shards were merged and removed
    assert "2 records already scored" in result.stdout
    assert result.stdout.count('"reward"') == 1  # one report, from the main rank
