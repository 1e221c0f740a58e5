"""The training benchmark's quick mode runs every project mode and the naive loop end to end."""

from __future__ import annotations

import sys

import pytest

from tests.integration.conftest import clean_env, run_command

pytestmark = pytest.mark.integration


@pytest.mark.timeout(600)
def test_quick_benchmark_prints_a_row_per_mode(tmp_path) -> None:
    command = [sys.executable, "-m", "benchmarks.train", "--quick", "--skip_trl"]
    command += ["--skip_memory", "--work", str(tmp_path / "bench")]
    run = run_command(command, clean_env(tmp_path), tmp_path, timeout=540)
    assert run.returncode == 0, run.output[-3000:]
    rows = {}
    for line in run.output.splitlines():
        fields = line.split()
        if len(fields) == 8 and fields[0] in ("aligner", "naive"):
            rows[" ".join(fields[:2])] = fields[2:]
    assert set(rows) == {"aligner padded", "aligner grouped", "aligner packed", "naive padded"}
    padding = {mode: float(fields[3].rstrip("%")) for mode, fields in rows.items()}
    assert padding["aligner packed"] == 0.0
    assert padding["aligner grouped"] <= padding["aligner padded"] < padding["naive padded"]
    assert all(int(fields[0]) >= 1 for fields in rows.values())  # timed optimizer steps
