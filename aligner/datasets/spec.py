"""Dataset spec strings ``NAME[:PROPORTION[:PATH]]`` and the seeded sampling they ask for."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aligner.datasets.base import DataError, RawDataset

DEFAULT_FILE_DATASET = "correction-json"
HUB_DATASET = "correction-hub"
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+(@[\w.-]+)?(#[\w.-]+)?")
_DATA_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv")


@dataclass(frozen=True)
class DatasetSpec:
    """One ``--train_datasets`` entry."""

    name: str
    """A registered dataset name (``RawDataset.NAME`` or an alias)."""
    proportion: float = 1.0
    """Share of the dataset to use; above 1 upsamples (whole copies plus a seeded remainder)."""
    count: int | None = None
    """An absolute number of samples (written ``N/-1``); overrides ``proportion``."""
    path: str | None = None
    """Passed to the dataset class; may itself contain colons."""

    def __str__(self) -> str:
        amount = f"{self.count}/-1" if self.count is not None else f"{self.proportion:g}"
        return f"{self.name}:{amount}" + (f":{self.path}" if self.path else "")


def _parse_proportion(text: str, spec: str) -> tuple[float, int | None]:
    text = text.strip()
    if not text:
        return 1.0, None
    try:
        if "/" in text:
            left, right = (part.strip() for part in text.split("/", 1))
            if right == "-1":
                count = int(left)
                if count <= 0:
                    raise ValueError
                return 1.0, count
            proportion = float(left) / float(right)
        else:
            proportion = float(text)
    except (ValueError, ZeroDivisionError):
        raise DataError(
            f"dataset spec {spec!r}: bad proportion {text!r} "
            "(use a number such as 0.5 or 2, or N/-1 for N samples)"
        ) from None
    if not 0 < proportion < math.inf:
        raise DataError(
            f"dataset spec {spec!r}: the proportion must be a positive finite number, got {text!r}"
        )
    return proportion, None


def _is_dataset_repo(path: str) -> bool:
    """A folder laid out like a Hub dataset repository rather than written by save_to_disk."""
    folder = Path(path)
    saved = (folder / "dataset_info.json").is_file() or (folder / "state.json").is_file()
    return folder.is_dir() and not saved


def parse_dataset_spec(spec: str) -> DatasetSpec:
    """Parse ``NAME[:PROPORTION[:PATH]]``.

    A bare existing file means ``correction-json``; a bare folder laid out like a Hub dataset
    repository, or a Hub id (``owner/name[@split][#config]``) that names no registered dataset,
    means ``correction-hub``.
    """
    expanded = os.path.expanduser(spec)
    if os.path.exists(expanded):
        name = HUB_DATASET if _is_dataset_repo(expanded) else DEFAULT_FILE_DATASET
        return DatasetSpec(name, path=expanded)
    hub_id = _HUB_ID.fullmatch(spec) and not spec.lower().endswith(_DATA_SUFFIXES)
    if hub_id and spec not in RawDataset._registry:
        return DatasetSpec(HUB_DATASET, path=spec)
    name, _, rest = spec.partition(":")
    proportion_text, colon, path = rest.partition(":")
    if not name:
        raise DataError(f"dataset spec {spec!r}: missing dataset name before ':'")
    if colon and not path:
        raise DataError(f"dataset spec {spec!r}: empty path after the second ':'")
    proportion, count = _parse_proportion(proportion_text, spec)
    return DatasetSpec(name, proportion, count, os.path.expanduser(path) if path else None)


def sample_indices(size: int, spec: DatasetSpec, seed: int) -> np.ndarray:
    """Row indices for a spec: whole copies, then a seeded sample without replacement."""
    wanted = spec.count if spec.count is not None else round(size * spec.proportion)
    if size > 0 and wanted == 0:
        raise DataError(
            f"dataset spec {str(spec)!r}: a proportion of {spec.proportion:g} of {size} samples "
            "is 0 samples; use a larger proportion, or N/-1 for N samples"
        )
    if size == 0 or wanted == size:
        return np.arange(size)
    copies, remainder = divmod(wanted, size)
    rng = np.random.default_rng(seed)
    extra = np.sort(rng.choice(size, size=remainder, replace=False))
    return np.concatenate([np.tile(np.arange(size), copies), extra]).astype(np.int64)
