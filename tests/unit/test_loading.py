"""Record files: every format loads, and every class of bad input names file, line and field."""

from __future__ import annotations

import json
import os
import threading

import datasets
import pandas as pd
import pytest

from aligner.datasets import DataError
from aligner.datasets.loading import load_records, read_records

GOOD = {"question": "Q?", "answer": "A.", "correction": "C."}


def write_jsonl(path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def good_line(**changes) -> str:
    return json.dumps({**GOOD, **changes})


@pytest.mark.parametrize("fmt", ["json", "jsonl", "parquet", "csv", "saved"])
def test_every_format_loads_with_extra_columns_kept(tmp_path, fmt: str) -> None:
    rows = [{**GOOD, "id": str(i), "question": f"Q{i}"} for i in range(5)]
    frame = pd.DataFrame(rows)
    path = tmp_path / f"data.{fmt}"
    if fmt == "json":
        path.write_text(json.dumps(rows))
    elif fmt == "jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif fmt == "parquet":
        frame.to_parquet(path)
    elif fmt == "csv":
        frame.to_csv(path, index=False)
    else:
        datasets.Dataset.from_pandas(frame).save_to_disk(str(path))
    dataset, skipped = read_records(path)
    assert skipped == [] and len(dataset) == 5
    assert dataset[3]["question"] == "Q3" and dataset[3]["id"] == "3"


def test_csv_numeric_text_stays_text(tmp_path) -> None:
    path = tmp_path / "numbers.csv"
    path.write_text("question,answer,correction\n2+2,5,4\n")
    assert read_records(path)[0][0] == {"question": "2+2", "answer": "5", "correction": "4"}


def test_csv_with_a_byte_order_mark_is_read(tmp_path) -> None:
    # Excel's "CSV UTF-8" starts the file with a byte-order mark.
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbfquestion,answer,correction\nq,a,c\nq,a,\n")
    dataset, skipped = read_records(path, lenient=True)
    assert dataset[:] == {"question": ["q"], "answer": ["a"], "correction": ["c"]}
    assert skipped == [f"{path}:3: field 'correction' is empty"]


def test_csv_header_naming_a_column_twice_is_refused(tmp_path) -> None:
    path = tmp_path / "twice.csv"
    path.write_text("question,answer,correction,correction\nq,a,c,d\n")
    with pytest.raises(DataError, match=r"twice.csv:1: the header names column 'correction' more"):
        read_records(path, lenient=True)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([good_line(), '{"question": "Q", "answer"'], r"data.jsonl:2: invalid JSON"),
        (
            [good_line(), good_line(), "[1, 2]"],
            r"data.jsonl:3: record is not an object \(got array\)",
        ),
        (
            [good_line(), json.dumps({"question": "Q", "answer": "A"})],
            r"data.jsonl:2: missing field 'correction'",
        ),
        ([good_line(answer=None)], r"data.jsonl:1: field 'answer' is null"),
        (
            [good_line(), good_line(question=42)],
            r"data.jsonl:2: field 'question' must be a string, got number",
        ),
        (
            [good_line(), good_line(correction=["a"])],
            r"data.jsonl:2: field 'correction' must be a string, got array",
        ),
        (
            [good_line(), "", good_line(correction="  ")],
            r"data.jsonl:3: field 'correction' is empty",
        ),
    ],
)
def test_bad_jsonl_names_line_and_field(tmp_path, lines: list[str], message: str) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", lines)
    with pytest.raises(DataError, match=message) as error:
        read_records(path)
    assert "\n" not in str(error.value)


def test_invalid_utf8_names_the_line(tmp_path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes(good_line().encode() + b"\n" + b'{"question": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"data.jsonl:2: invalid UTF-8 \(byte 0xe9 at column 18\)"):
        read_records(path)


def test_json_array_names_record_and_line(tmp_path) -> None:
    path = tmp_path / "data.json"
    path.write_text("[\n" + good_line() + ",\n" + good_line(answer=None) + "\n]")
    with pytest.raises(DataError, match=r"data.json:3 \(record 1\): field 'answer' is null"):
        read_records(path)


def test_parquet_names_the_0_based_row_and_csv_the_file_line(tmp_path) -> None:
    pd.DataFrame([GOOD, {**GOOD, "answer": None}]).to_parquet(tmp_path / "d.parquet")
    with pytest.raises(DataError, match=r"d.parquet: row 1 \(0-based\): field 'answer' is null"):
        read_records(tmp_path / "d.parquet")
    # A quoted cell spans lines 3-4: the bad record starts on line 5.
    (tmp_path / "d.csv").write_text('question,answer,correction\nq,a,c\n"two\nlines",a,c\nq,a,\n')
    with pytest.raises(DataError, match=r"d.csv:5: field 'correction' is empty"):
        read_records(tmp_path / "d.csv")
    (tmp_path / "short.csv").write_text("question,answer,correction\nq,a,c\nq,a\n")
    with pytest.raises(DataError, match=r"short.csv:3: field 'correction' is null"):
        read_records(tmp_path / "short.csv")


def test_lenient_mode_skips_and_counts(tmp_path, capsys) -> None:
    lines = [good_line(), "not json", good_line(answer=None), good_line(question="last")]
    path = write_jsonl(tmp_path / "data.jsonl", lines)
    dataset, skipped = read_records(path, lenient=True)
    assert [r["question"] for r in dataset] == ["Q?", "last"]
    assert len(skipped) == 2 and "data.jsonl:2" in skipped[0] and "data.jsonl:3" in skipped[1]
    load_records(path, lenient=True)
    assert "skipped 2 invalid record(s)" in capsys.readouterr().err


@pytest.mark.parametrize("lenient", [False, True])
def test_zero_valid_records_is_always_an_error(tmp_path, lenient: bool) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", [good_line(correction="")])
    with pytest.raises(DataError, match="data.jsonl"):
        read_records(path, lenient=lenient)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="empty.jsonl"):
        read_records(tmp_path / "empty.jsonl", lenient=lenient)


def test_inference_fields_need_no_correction(tmp_path) -> None:
    path = write_jsonl(tmp_path / "answers.jsonl", [json.dumps({"question": "Q", "answer": "A"})])
    assert len(read_records(path, ("question", "answer"))[0]) == 1


MAPPING = {"question": "prompt", "correction": "revised"}


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_column_map_applies_to_record_files(tmp_path, fmt: str) -> None:
    rows = [{"prompt": "P?", "question": "not this", "answer": "A.", "revised": "R."}]
    path = tmp_path / f"data.{fmt}"
    frame = pd.DataFrame(rows)
    if fmt == "jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif fmt == "csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path)
    dataset, _ = read_records(path, column_map=MAPPING)
    assert dataset[0] == {"question": "P?", "answer": "A.", "correction": "R."}


def test_a_mapped_column_is_named_as_the_mapping(tmp_path) -> None:
    lines = [json.dumps({"prompt": "P", "answer": "A", "revised": "R"})] * 2
    path = write_jsonl(tmp_path / "data.jsonl", [*lines, good_line()])
    with pytest.raises(DataError, match=r"data.jsonl:3: missing column 'prompt' \(mapped to 'q"):
        read_records(path, column_map=MAPPING)
    dataset, skipped = read_records(path, column_map=MAPPING, lenient=True)
    assert len(dataset) == 2 and len(skipped) == 1
    absent = write_jsonl(tmp_path / "plain.jsonl", [good_line()])
    with pytest.raises(DataError) as error:
        read_records(absent, column_map=MAPPING)
    assert str(error.value) == (
        f"{absent}: missing column 'prompt' (mapped to 'question'); "
        "its columns: question, answer, correction"
    )
    null = write_jsonl(tmp_path / "null.jsonl", [json.dumps({"prompt": None, "answer": "A"})])
    with pytest.raises(
        DataError, match=r"null.jsonl:1: column 'prompt' \(mapped to 'question'\) is"
    ):
        read_records(null, ("question", "answer"), column_map={"question": "prompt"})


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path) -> None:
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            read_records(fifo)
        except DataError as error:
            outcome.append(error)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=10)
    hung = reader.is_alive()
    if hung:  # blocked opening the FIFO: a writer that opens and closes it frees that open
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert not hung, "reading a FIFO waited for a writer"
    assert [str(error) for error in outcome] == [
        f"{fifo}: is a FIFO (named pipe), not a regular file; save the data to a file"
    ]


def test_a_device_is_refused(tmp_path) -> None:
    (tmp_path / "zeros.jsonl").symlink_to("/dev/zero")
    with pytest.raises(DataError, match=r"zeros.jsonl: is a character device, not a regular"):
        read_records(tmp_path / "zeros.jsonl")


@pytest.mark.parametrize(
    ("name", "message"),
    [("missing.jsonl", "no such file"), ("data.txt", "unsupported file type '.txt'")],
)
def test_missing_or_unsupported_file(tmp_path, name: str, message: str) -> None:
    if name.endswith(".txt"):
        (tmp_path / name).write_text("x")
    with pytest.raises(DataError, match=message):
        read_records(tmp_path / name)
