"""The built-in correction datasets: record files (``correction-json``), the Hub loader, and the
original toolkit's ``empathy-json`` and ``beavertails-json/{train,test}``."""

from __future__ import annotations

import re
from pathlib import Path

import datasets

from aligner import constants
from aligner.datasets.base import SAMPLE_FIELDS, DataError, RawDataset, RawSample
from aligner.datasets.loading import (
    content_digest,
    map_columns,
    quiet_reader,
    read_records,
    validate_records,
)
from aligner.datasets.validation import CORRECTION_FIELDS, record_columns


class _ArrowCorrectionDataset(RawDataset):
    """Shared plumbing of datasets that load straight into validated Arrow data."""

    _loaded: datasets.Dataset | None = None

    def _load(self, *, lenient: bool, cache_dir: str | None) -> tuple[datasets.Dataset, list[str]]:
        raise NotImplementedError

    def to_hf_dataset(
        self, *, lenient: bool = False, cache_dir: str | None = None
    ) -> tuple[datasets.Dataset, list[str]]:
        dataset, skipped = self._load(lenient=lenient, cache_dir=cache_dir)
        columns = record_columns(dataset.column_names, CORRECTION_FIELDS)
        return dataset.select_columns(columns), skipped

    def _records(self) -> datasets.Dataset:
        if self._loaded is None:
            self._loaded = self._load(lenient=False, cache_dir=None)[0]
        return self._loaded

    def __len__(self) -> int:
        return len(self._records())

    def __getitem__(self, index: int) -> RawSample:
        row = self._records()[index]
        return RawSample(**{k: v for k, v in row.items() if k in SAMPLE_FIELDS and v is not None})


class CorrectionFileDataset(_ArrowCorrectionDataset):
    """Records with ``question``, ``answer`` and ``correction`` in a JSON / JSONL / Parquet / CSV
    file or a ``save_to_disk`` folder: ``correction-json::PATH``. ``column_map`` reads the fields
    from columns of other names (``{"question": "prompt", ...}``)."""

    NAME = "correction-json"
    ALIASES = ("correction-file",)
    COLUMN_MAP = True

    def __init__(self, path: str | None = None, column_map: dict[str, str] | None = None) -> None:
        if not path:
            raise DataError(f"dataset {self.NAME!r} needs a path: {self.NAME}::PATH")
        super().__init__(path)
        self.column_map = dict(column_map or {})

    def _load(self, *, lenient: bool, cache_dir: str | None) -> tuple[datasets.Dataset, list[str]]:
        return read_records(
            self.path,
            CORRECTION_FIELDS,
            lenient=lenient,
            cache_dir=cache_dir,
            column_map=self.column_map,
        )

    def cache_key(self) -> str:
        return f"{sorted(self.column_map.items())}:{content_digest(Path(self.path))}"


_INTERNALS = re.compile(r"\s*(with resolver )?functools\.partial\(.*|\s*<[^<>]* at 0x[0-9a-f]+>")
"""Reprs of the library's own objects, which some of its messages carry."""


def _root_cause(error: BaseException) -> str:
    """The first line of the innermost error, without the library's object reprs: ``datasets``
    wraps the telling one in a generic "An error occurred while generating the dataset"."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    text = _INTERNALS.sub("", str(error)).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _data_files(folder: Path) -> list[Path]:
    """The files of a dataset folder besides its card and hidden files (.git, .cache...)."""
    return [
        path
        for path in folder.rglob("*")
        if path.is_file()
        and path.name != "README.md"
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    ]


class HubCorrectionDataset(_ArrowCorrectionDataset):
    """A dataset loaded by ``datasets.load_dataset``: a Hub id, or a local folder laid out like a
    Hub dataset repository (data files, and a README whose ``configs`` name them).

    ``correction-hub::ID_OR_FOLDER[@SPLIT][#CONFIG]`` (split ``train`` and the default config
    unless given); ``aligner-20k`` is the released set. ``column_map`` renames the source's
    columns onto the record schema (``{"question": "prompt", ...}``); the aligner-20K columns
    need none.
    """

    NAME = "correction-hub"
    ALIASES = ("aligner-20k",)
    COLUMN_MAP = True
    DEFAULT_REPO = "aligner/aligner-20K"

    def __init__(self, path: str | None = None, column_map: dict[str, str] | None = None) -> None:
        super().__init__(path or self.DEFAULT_REPO)
        self.column_map = dict(column_map or {})
        location, _, self.config = self.path.partition("#")
        self.repo, _, split = location.partition("@")
        self.split = split or "train"

    def _load(self, *, lenient: bool, cache_dir: str | None) -> tuple[datasets.Dataset, list[str]]:
        folder = Path(self.repo)
        if folder.is_dir() and not _data_files(folder):
            raise DataError(
                f"{self.path}: no data file in this folder (a dataset folder holds .jsonl, .json, "
                ".csv or .parquet files, or a README.md whose configs name them)"
            )
        try:
            with quiet_reader():
                dataset = datasets.load_dataset(
                    self.repo, name=self.config or None, split=self.split, cache_dir=cache_dir
                )
        except Exception as error:  # network, auth, a missing repo, split or config: one line
            raise DataError(f"{self.path}: cannot load: {_root_cause(error)}") from None
        mapped = map_columns(dataset, self.column_map, self.path)
        return validate_records(
            mapped, CORRECTION_FIELDS, self.path, lenient=lenient, column_map=self.column_map
        )

    def cache_key(self) -> str:
        mapping = sorted(self.column_map.items())
        return f"hub:{self.path}:{mapping}:{self._records()._fingerprint}"


class _FormattedInputDataset(CorrectionFileDataset):
    """A record file whose records become the original toolkit's formatted-input samples."""

    FIELDS: tuple[str, ...]

    def _format(self, row: dict[str, str]) -> dict[str, str]:
        raise NotImplementedError

    def _load(self, *, lenient: bool, cache_dir: str | None) -> tuple[datasets.Dataset, list[str]]:
        records, skipped = read_records(
            self.path,
            self.FIELDS,
            lenient=lenient,
            cache_dir=cache_dir,
            column_map=self.column_map,
        )
        formatted = records.map(
            self._format, remove_columns=records.column_names, desc="formatting", batched=False
        )
        return formatted, skipped

    def to_hf_dataset(
        self, *, lenient: bool = False, cache_dir: str | None = None
    ) -> tuple[datasets.Dataset, list[str]]:
        return self._load(lenient=lenient, cache_dir=cache_dir)

    def __getitem__(self, index: int) -> RawSample:
        return RawSample(**self._records()[index])


class EmpathyJSONDataset(_FormattedInputDataset):
    """The original toolkit's empathy aligner data: (question, answer, correction) records whose
    input is ``EMPATHY_INSTRUCTION`` with ``question | answer``: ``empathy-json::PATH``."""

    NAME = "empathy-json"
    FIELDS = CORRECTION_FIELDS

    def _format(self, row: dict[str, str]) -> dict[str, str]:
        # Read at call time, so that an edited constant takes effect.
        instruction = constants.EMPATHY_INSTRUCTION
        inputline = " | ".join((row["question"], row["answer"]))
        return {"input": instruction.format(inputline=inputline), "correction": row["correction"]}


class _BeavertailsJSONDataset(_FormattedInputDataset):
    """The original toolkit's BeaverTails files: (prompt, response) records whose input is the
    prompt and the response joined by a space, and whose target is the response."""

    FIELDS = ("prompt", "response")
    COLUMN_MAP = False

    def _format(self, row: dict[str, str]) -> dict[str, str]:
        return {"input": " ".join((row["prompt"], row["response"])), "correction": row["response"]}


class BeavertailsTrainJSONDataset(_BeavertailsJSONDataset):
    NAME = "beavertails-json/train"


class BeavertailsTestJSONDataset(_BeavertailsJSONDataset):
    NAME = "beavertails-json/test"
