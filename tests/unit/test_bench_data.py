"""The data-pipeline benchmark runs end to end and reports every mode it timed."""

from __future__ import annotations

import pytest

from benchmarks import data


def test_the_benchmark_times_the_pipeline_and_the_naive_loop(
    capsys: pytest.CaptureFixture[str],
) -> None:
    data.main(["--records", "20", "--num_proc", "1", "--max_length", "256"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("20 records; tokens per sample: median ")
    assert int(lines[0].rsplit("max ", 1)[1]) <= 256
    assert [line.split("  ")[1].strip() for line in lines[1:]] == [
        "pipeline, num_proc=1",
        "naive per-record loop",
    ]
    assert all("records/s" in line for line in lines[1:])
