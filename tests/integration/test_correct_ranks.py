"""``aligner correct`` under torchrun: records spread over two CPU ranks, merged once each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aligner.commands import correct
from aligner.inference.records import read_written
from tests.standins import free_port

pytestmark = pytest.mark.integration

QUESTIONS = [
    {"question": f"Question {i}?" + " more" * i, "answer": f"Answer {i}."} for i in range(9)
]


@pytest.mark.timeout(420)  # the launch below may take 300 s; a hang fails here
def test_two_ranks_resume_and_match_one_process(tiny_checkpoint_dir: Path, tmp_path: Path):
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in QUESTIONS))
    args = ["--model_name_or_path", str(tiny_checkpoint_dir), "--input", str(source)]
    args += ["--max_new_tokens", "4", "--batch_size", "2"]
    assert correct.main([*args, "--output", str(tmp_path / "reference.jsonl")]) == 0
    reference = read_written(tmp_path / "reference.jsonl")

    # What an interrupted two-rank run leaves: its settings, part of the output and a rank's
    # shard file.
    output = tmp_path / "out.jsonl"
    settings = (tmp_path / "reference.jsonl.settings.json").read_text()
    (tmp_path / "out.jsonl.settings.json").write_text(settings)
    output.write_text(json.dumps(reference[0]) + "\n")
    (tmp_path / "out.jsonl.rank1").write_text(json.dumps(reference[5]) + "\n")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    launcher += ["--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [*launcher, "-m", "aligner.cli", "correct", *args, "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_written(output) == reference
    assert not list(tmp_path.glob("out.jsonl.rank*"))  # the shards were merged and removed
    assert "2 records already corrected" in result.stdout
