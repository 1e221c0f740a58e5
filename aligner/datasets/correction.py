"""The built-in correction datasets: record files (``correction-json``) and the Hub loader."""

from __future__ import annotations

import hashlib
from pathlib import Path

import datasets

from aligner.datasets.base import SAMPLE_FIELDS, DataError, RawDataset, RawSample
from aligner.datasets.loading import read_records, validate_records
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
    file or a ``save_to_disk`` folder: ``correction-json::PATH``."""

    NAME = "correction-json"
    ALIASES = ("correction-file",)

    def __init__(self, path: str | None = None) -> None:
        if not path:
            raise DataError(f"dataset {self.NAME!r} needs a path: {self.NAME}::PATH")
        super().__init__(path)

    def _load(self, *, lenient: bool, cache_dir: str | None) -> tuple[datasets.Dataset, list[str]]:
        return read_records(self.path, CORRECTION_FIELDS, lenient=lenient, cache_dir=cache_dir)

    def cache_key(self) -> str:
        path = Path(self.path).resolve()
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        digest = hashlib.sha256()
        for file in files:
            stat = file.stat()
            digest.update(f"{file}:{stat.st_size}:{stat.st_mtime_ns};".encode())
        return digest.hexdigest()


class HubCorrectionDataset(_ArrowCorrectionDataset):
    """A Hugging Face Hub dataset in the aligner-20K schema, for users who are online:
    ``correction-hub::REPO_ID`` (split ``train``), or ``aligner-20k`` for the released set."""

    NAME = "correction-hub"
    ALIASES = ("aligner-20k",)
    DEFAULT_REPO = "aligner/aligner-20K"

    def __init__(self, path: str | None = None) -> None:
        super().__init__(path or self.DEFAULT_REPO)

    def _load(self, *, lenient: bool, cache_dir: str | None) -> tuple[datasets.Dataset, list[str]]:
        repo, _, split = self.path.partition("@")
        try:
            dataset = datasets.load_dataset(repo, split=split or "train", cache_dir=cache_dir)
        except Exception as error:  # network, auth or a missing repo: one line, not a traceback
            raise DataError(
                f"{self.path}: cannot load from the Hub: {error}".splitlines()[0]
            ) from None
        return validate_records(dataset, CORRECTION_FIELDS, self.path, lenient=lenient)

    def cache_key(self) -> str:
        return f"hub:{self.path}:{self._records()._fingerprint}"
