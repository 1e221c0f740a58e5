"""Dataset spec strings ``NAME[:PROPORTION[:PATH]]`` and the seeded sampling they ask for."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from aligner.datasets.base import DataError

DEFAULT_FILE_DATASET = "correction-json"


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
    if not proportion > 0:
        raise DataError(f"dataset spec {spec!r}: the proportion must be positive, got {text!r}")
    return proportion, None


def parse_dataset_spec(spec: str) -> DatasetSpec:
    """Parse ``NAME[:PROPORTION[:PATH]]``; a bare existing path means ``correction-json``."""
    if os.path.exists(os.path.expanduser(spec)):
        return DatasetSpec(DEFAULT_FILE_DATASET, path=os.path.expanduser(spec))
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
    if size == 0 or wanted == size:
        return np.arange(size)
    copies, remainder = divmod(wanted, size)
    rng = np.random.default_rng(seed)
    extra = np.sort(rng.choice(size, size=remainder, replace=False))
    return np.concatenate([np.tile(np.arange(size), copies), extra]).astype(np.int64)
