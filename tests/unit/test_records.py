"""Records and their ids: unique ids, and merging what ranks wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aligner.inference.records import RecordError, merge_written, read_written, with_ids


def test_records_without_an_id_get_their_index_beside_records_with_one() -> None:
    # A JSONL file mixing both loads as rows that all hold an id, null where it was missing.
    rows = [{"id": "a", "question": "q0"}, {"id": None, "question": "q1"}, {"question": "q2"}]
    records = with_ids(rows, "in.jsonl")
    assert [record["id"] for record in records] == ["a", 1, 2]
    assert [record["question"] for record in records] == ["q0", "q1", "q2"]


def test_shared_ids_are_one_line_naming_both_records() -> None:
    rows = [{"id": "x", "question": "q"}, {"id": "x", "question": "r"}]
    with pytest.raises(RecordError, match="in.jsonl: records 0 and 1 share the id 'x'"):
        with_ids(rows, "in.jsonl")


def test_merge_gathers_rank_shards_once_each_in_input_order(tmp_path: Path) -> None:
    records = [{"id": i, "question": "q", "answer": "a"} for i in range(5)]
    written = [{**records[i], "correction": f"c{i}"} for i in range(5)]
    output = tmp_path / "out.jsonl"
    output.write_text(dumps_lines([written[3]]) + '{"id": 4, "corr')  # torn by a crash
    (tmp_path / "out.jsonl.rank0").write_text(dumps_lines([written[1], written[3]]))
    (tmp_path / "out.jsonl.rank1").write_text(dumps_lines([written[0], written[4]]))
    (tmp_path / "out.jsonl.rankings").write_text("not a shard")
    merged = merge_written(output, records)
    assert merged == [written[0], written[1], written[3], written[4]]
    assert read_written(output) == merged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl", "out.jsonl.rankings"]


def dumps_lines(records: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)
