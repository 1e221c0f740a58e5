"""Reading record files (JSON, JSON Lines, Parquet, CSV, saved datasets) into validated Arrow data.

The fast path hands the file to Hugging Face ``datasets`` (memory-mapped Arrow) and checks the
fields with vectorised Arrow kernels; only when that finds a problem does the exact, per-record
scan run, so a bad file still gets a message naming its line and field.
"""

from __future__ import annotations

import csv
import hashlib
import stat
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from aligner.datasets.base import DataError
from aligner.datasets.validation import (
    CORRECTION_FIELDS,
    MESSAGES_FIELD,
    NON_EMPTY_FIELDS,
    ColumnMap,
    check_messages,
    check_record,
    field_label,
    map_record,
    scan_json,
    utf8_problem,
)

__all__ = [
    "DataError",
    "content_digest",
    "detect_format",
    "load_records",
    "map_columns",
    "quiet_reader",
    "read_records",
    "validate_records",
]

FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def detect_format(path: Path) -> str:
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "state.json").is_file():
            return "saved"
        raise DataError(f"{path}: a folder must be one written by datasets' save_to_disk")
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        raise DataError(
            f"{path}: unsupported file type {path.suffix!r}; "
            "use .json, .jsonl, .parquet, .csv or a save_to_disk folder"
        ) from None


def content_digest(path: Path) -> str:
    """A SHA-256 of a file's bytes (of every file and its name, for a folder), which sees an edit
    in place even when the size and modification time are put back; it reads about 1 GB/s."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.relative_to(path) if file != path else ''}\0".encode())
        of_file = hashlib.sha256()  # hashlib.file_digest is Python 3.11
        with file.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                of_file.update(chunk)
        digest.update(of_file.digest())
    return digest.hexdigest()


@contextmanager
def quiet_reader() -> Iterator[None]:
    """``datasets`` without its progress bars and log lines: it logs its own parse errors (with
    library internals, and no line number), which the one-line errors here replace."""
    datasets.disable_progress_bars()
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)


def _load_arrow(path: Path, fmt: str, cache_dir: str | None) -> datasets.Dataset:
    if fmt == "saved":
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if "train" not in loaded:
                raise DataError(f"{path}: saved DatasetDict has no 'train' split")
            loaded = loaded["train"]
        return loaded
    extra = {}
    if fmt == "csv":
        # Every CSV cell is read as text: a numeric-looking answer is still an answer, and an
        # empty cell stays an empty string rather than becoming NaN.
        features = datasets.Features({name: datasets.Value("string") for name in _csv_header(path)})
        extra = {"features": features, "keep_default_na": False, "encoding": CSV_ENCODING}
    if cache_dir is not None:
        # The reader's own cache knows a file by its path and modification time: a folder per
        # content keeps it from serving an edited file's old records.
        cache_dir = str(Path(cache_dir) / content_digest(path)[:24])
    return datasets.load_dataset(
        fmt, data_files=str(path), split="train", cache_dir=cache_dir, **extra
    )


CSV_ENCODING = "utf-8-sig"
"""UTF-8, with the byte-order mark that Excel's "CSV UTF-8" puts first read as no character."""


def _csv_header(path: Path) -> list[str]:
    """The CSV file's column names; a name given twice is refused (a reader would keep one)."""
    with path.open(newline="", encoding=CSV_ENCODING) as handle:
        header = next(csv.reader(handle), [])
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        names = ", ".join(map(repr, repeated))
        raise DataError(f"{path}:1: the header names column {names} more than once")
    return header


def _bad_strings(table: pa.Table, dataset: datasets.Dataset, field: str) -> np.ndarray:
    """Rows whose ``field`` is null, not a string, or (where it must not be) empty."""
    column = table.column(field)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        # Mixed types in one column (JSON): check the values one by one.
        return np.array([not isinstance(v, str) for v in dataset[field]], dtype=bool)
    bad = pc.is_null(column).to_numpy(zero_copy_only=False)
    if field in NON_EMPTY_FIELDS:
        empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(column)), 0)
        bad = bad | pc.fill_null(empty, True).to_numpy(zero_copy_only=False)
    return bad


def _bad_contexts(table: pa.Table, dataset: datasets.Dataset) -> np.ndarray:
    """Rows without exactly one valid ``question`` or ``messages``."""
    questions = dataset["question"] if "question" in table.column_names else [None] * len(dataset)
    return np.array(
        [
            (messages is None and not isinstance(question, str))
            or (messages is not None and (question is not None or check_messages(messages)))
            for question, messages in zip(questions, dataset[MESSAGES_FIELD], strict=True)
        ],
        dtype=bool,
    )


def _bad_rows(dataset: datasets.Dataset, fields: Sequence[str]) -> np.ndarray:
    """A boolean mask of the rows with a missing, null, non-string or empty field."""
    table = dataset.data.table if dataset._indices is None else dataset.with_format("arrow")[:]
    bad = np.zeros(len(dataset), dtype=bool)
    for field in fields:
        if field == "question" and MESSAGES_FIELD in table.column_names:
            bad |= _bad_contexts(table, dataset)
        elif field not in table.column_names:
            bad[:] = True
            break
        else:
            bad |= _bad_strings(table, dataset, field)
    return bad


def validate_records(
    dataset: datasets.Dataset,
    fields: Sequence[str],
    source: str,
    *,
    lenient: bool = False,
    problems: Iterable[str | None] | None = None,
    column_map: ColumnMap | None = None,
) -> tuple[datasets.Dataset, list[str]]:
    """Check ``fields`` of every row; raise on the first problem, or drop bad rows (lenient).

    ``problems`` yields the exact messages for the bad rows when the caller can name lines
    (JSON and CSV files); otherwise rows are named by their 0-based index. ``column_map`` is
    the mapping ``map_columns`` applied, for the messages to name the columns.
    """
    bad = _bad_rows(dataset, fields)
    skipped: list[str] = []
    if bad.any():
        skipped = [problem for problem in problems or () if problem is not None]
        if not skipped:
            skipped = [
                problem
                for row in np.flatnonzero(bad)
                if (
                    problem := check_record(
                        dataset[int(row)], _row(source, row), fields, column_map
                    )
                )
            ]
        if not lenient:
            raise DataError(skipped[0])
        dataset = dataset.select(np.flatnonzero(~bad))
    if len(dataset) == 0:
        detail = f" ({len(skipped)} skipped; first: {skipped[0]})" if skipped else ""
        raise DataError(f"{source}: no valid record{detail}")
    return dataset, skipped


def map_columns(
    dataset: datasets.Dataset, column_map: ColumnMap | None, source: str
) -> datasets.Dataset:
    """The dataset with each ``--column_map`` column under its field's name (as ``map_record``
    does to one record); a mapped column the source lacks is refused."""
    if not column_map:
        return dataset
    for field, column in column_map.items():
        if column not in dataset.column_names:
            raise DataError(
                f"{source}: missing {field_label(field, column_map)}; its columns: "
                f"{', '.join(dataset.column_names)}"
            )
    replaced = set(column_map) - set(column_map.values())
    dataset = dataset.remove_columns([c for c in dataset.column_names if c in replaced])
    return dataset.rename_columns({column: field for field, column in column_map.items()})


def _row(source: str, row: int) -> str:
    return f"{source}: row {int(row)} (0-based)"


def _scan_records(
    path: Path, fields: Sequence[str], column_map: ColumnMap, *, lenient: bool
) -> tuple[datasets.Dataset, list[str]]:
    """Parse a JSON file record by record: for files the Arrow reader rejects."""
    records: list[object] = []
    skipped: list[str] = []
    for where, raw, problem in scan_json(path):
        record = map_record(raw, column_map)
        problem = problem or check_record(record, where, fields, column_map)
        if problem is None:
            records.append(record)
        elif not lenient:
            raise DataError(problem)
        else:
            skipped.append(problem)
    if not records:
        detail = f" ({len(skipped)} skipped; first: {skipped[0]})" if skipped else ""
        raise DataError(f"{path}: no valid record{detail}")
    return datasets.Dataset.from_list(records), skipped


def _json_problems(
    path: Path, fields: Sequence[str], column_map: ColumnMap
) -> Iterator[str | None]:
    for where, record, problem in scan_json(path):
        yield problem or check_record(map_record(record, column_map), where, fields, column_map)


def _csv_problems(path: Path, fields: Sequence[str], column_map: ColumnMap) -> Iterator[str | None]:
    """Each CSV record's problem, named by the file line it starts on (a quoted cell may span
    several lines, so the line is not the row number plus one)."""
    with path.open(newline="", encoding=CSV_ENCODING) as handle:
        reader = csv.DictReader(handle)
        _ = reader.fieldnames  # reads the header
        start = reader.line_num + 1
        for record in reader:
            where = f"{path}:{start}"
            yield check_record(map_record(record, column_map), where, fields, column_map)
            start = reader.line_num + 1


def read_records(
    path: str | Path,
    fields: Sequence[str] = CORRECTION_FIELDS,
    *,
    lenient: bool = False,
    cache_dir: str | None = None,
    column_map: ColumnMap | None = None,
) -> tuple[datasets.Dataset, list[str]]:
    """Load and validate a record file; return the dataset and the problems skipped (lenient).

    Every column of the file is kept, the ``column_map`` ones under their fields' names. Strict
    mode raises ``DataError`` at the first problem; lenient mode skips bad records and reports
    each. No valid record at all is always an error.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if not (path.is_file() or path.is_dir()):
        # A FIFO can be read only once (the check and the loader would each need a pass, and
        # the second would wait forever), and a device may never end.
        raise DataError(
            f"{path}: is {_file_kind(path)}, not a regular file; save the data to a file"
        )
    try:
        return _read_records(path, fields, column_map or {}, lenient=lenient, cache_dir=cache_dir)
    except OSError as error:
        # Permissions, a failing disk, a file that vanished: a user error, not a traceback.
        raise DataError(f"{path}: cannot read: {error.strerror or error}") from None


def _file_kind(path: Path) -> str:
    kinds = {
        stat.S_ISFIFO: "a FIFO (named pipe)",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
        stat.S_ISSOCK: "a socket",
    }
    mode = path.stat().st_mode
    return next((kind for test, kind in kinds.items() if test(mode)), "a special file")


def _read_records(
    path: Path,
    fields: Sequence[str],
    column_map: ColumnMap,
    *,
    lenient: bool,
    cache_dir: str | None,
) -> tuple[datasets.Dataset, list[str]]:
    fmt = detect_format(path)
    if fmt in {"json", "csv"}:
        problem = utf8_problem(path)
        if problem is not None:
            raise DataError(problem)
    try:
        with quiet_reader():
            dataset = _load_arrow(path, fmt, cache_dir)
    except DataError:
        raise
    except Exception as error:  # the Arrow reader's errors name no line: diagnose below
        if fmt != "json":
            raise DataError(f"{path}: cannot read {fmt} file: {error}".splitlines()[0]) from None
        return _scan_records(path, fields, column_map, lenient=lenient)
    dataset = map_columns(dataset, column_map, str(path))
    scans = {"json": _json_problems, "csv": _csv_problems}
    problems = scans[fmt](path, fields, column_map) if fmt in scans else None
    return validate_records(
        dataset, fields, str(path), lenient=lenient, problems=problems, column_map=column_map
    )


def load_records(
    path: str | Path,
    fields: Sequence[str] = CORRECTION_FIELDS,
    *,
    lenient: bool = False,
    cache_dir: str | None = None,
) -> datasets.Dataset:
    """``read_records`` that reports skipped records on stderr and returns the dataset alone."""
    dataset, skipped = read_records(path, fields, lenient=lenient, cache_dir=cache_dir)
    if skipped:
        print(
            f"{path}: skipped {len(skipped)} invalid record(s); first: {skipped[0]}",
            file=sys.stderr,
        )
    return dataset
