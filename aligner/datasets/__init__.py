"""Correction datasets: the registry, loaders, validation, tokenize + mask, and collation.

Importing this package registers the built-in datasets and never imports DeepSpeed.
"""

from __future__ import annotations

from aligner.datasets import correction as _builtin  # noqa: F401  (registers built-in datasets)
from aligner.datasets.base import (
    DataError,
    RawDataset,
    RawSample,
    get_dataset_class,
    load_dataset_modules,
    registered_names,
)
from aligner.datasets.spec import DatasetSpec, parse_dataset_spec

__all__ = [
    "DataError",
    "DatasetSpec",
    "RawDataset",
    "RawSample",
    "get_dataset_class",
    "load_dataset_modules",
    "parse_dataset_spec",
    "registered_names",
]
