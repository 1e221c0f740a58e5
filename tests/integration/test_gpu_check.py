"""The GPU check's CPU smoke mode: every real `aligner train` row and `aligner correct` row."""

from __future__ import annotations

import json
import math

import pytest

from tests.conftest import REPO_ROOT
from tests.integration.conftest import clean_env, run_command

pytestmark = pytest.mark.integration


@pytest.mark.timeout(600)
def test_cpu_smoke_measures_every_row_from_real_runs(tmp_path) -> None:
    output, work = tmp_path / "results", tmp_path / "work"
    command = ["bash", str(REPO_ROOT / "scripts" / "gpu-check.sh"), "--cpu_smoke"]
    command += ["--output", str(output), "--work", str(work)]
    run = run_command(command, clean_env(tmp_path), output, timeout=540)
    assert run.returncode == 0, run.output[-4000:]

    rows = {row["name"]: row for row in json.loads((output / "gpu-check.json").read_text())}
    assert list(rows) == ["zero2", "zero3", "grouped", "packed", "lora", "correct-b2", "correct-b4"]
    assert {row["status"] for row in rows.values()} == {"ok"}
    train = [rows[name] for name in ("zero2", "zero3", "grouped", "packed", "lora")]
    for row in train:
        assert row["timed_steps"] == 2 and row["tokens_per_s_per_gpu"] > 0
        assert 0 < row["mfu_head_at_targets"] < row["mfu"] < 1  # the head runs at targets only
        assert row["peak_memory_gib"] > 0 and math.isfinite(row["loss_last"])
    # The same seeded global batches: packing removes the padding, grouping most of it.
    assert rows["packed"]["padding_share"] == 0
    assert rows["grouped"]["padding_share"] < rows["zero2"]["padding_share"]
    assert "--attn_implementation" in rows["packed"]["flags"]
    for name in ("correct-b2", "correct-b4"):
        assert rows[name]["seconds_3_batches"] > 0 and rows[name]["max_new_tokens"] == 16
    # Every training run's own metrics, and none of its weights left behind.
    tagged = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert {row["row"] for row in tagged} == {row["name"] for row in train}
    assert not list((work / "runs").iterdir())
    table = (output / "gpu-check.md").read_text()
    assert all(f"| {name} |" in table for name in rows)
