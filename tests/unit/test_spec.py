"""Dataset spec strings (the original NAME[:PROPORTION[:PATH]] grammar) and seeded sampling."""

from __future__ import annotations

import numpy as np
import pytest

from aligner.datasets import DataError, DatasetSpec, parse_dataset_spec
from aligner.datasets.spec import sample_indices


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("my-data", DatasetSpec("my-data")),
        (
            "correction-json::data/train.json",
            DatasetSpec("correction-json", path="data/train.json"),
        ),
        (
            "correction-json:0.5:data/train.jsonl",
            DatasetSpec("correction-json", 0.5, None, "data/train.jsonl"),
        ),
        ("my-data:2", DatasetSpec("my-data", 2.0)),
        ("my-data:1/4", DatasetSpec("my-data", 0.25)),
        ("my-data:300/-1", DatasetSpec("my-data", 1.0, 300)),
        (
            "correction-json::s3://bucket/a:b.jsonl",
            DatasetSpec("correction-json", path="s3://bucket/a:b.jsonl"),
        ),
    ],
)
def test_parse_dataset_spec(text: str, expected: DatasetSpec) -> None:
    assert parse_dataset_spec(text) == expected


def test_bare_existing_path_means_correction_json(tmp_path) -> None:
    path = tmp_path / "odd:name.jsonl"
    path.write_text("{}\n")
    assert parse_dataset_spec(str(path)) == DatasetSpec("correction-json", path=str(path))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("my-data:abc", "bad proportion 'abc'"),
        ("my-data:-0.5", "must be a positive finite number"),
        ("my-data:inf", "must be a positive finite number, got 'inf'"),
        ("my-data:nan", "must be a positive finite number, got 'nan'"),
        ("my-data:0/-1", "bad proportion"),
        ("my-data:1:", "empty path"),
        (":0.5:file.json", "missing dataset name"),
    ],
)
def test_bad_spec_is_one_clear_error(text: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        parse_dataset_spec(text)


def test_sampling_is_deterministic_and_respects_proportion() -> None:
    half = parse_dataset_spec("d:0.5")
    first, second = sample_indices(100, half, seed=1), sample_indices(100, half, seed=1)
    assert np.array_equal(first, second) and len(first) == 50 and len(set(first)) == 50
    assert not np.array_equal(first, sample_indices(100, half, seed=2))


def test_upsampling_keeps_whole_copies_then_a_seeded_remainder() -> None:
    indices = sample_indices(10, parse_dataset_spec("d:2.5"), seed=0)
    counts = np.bincount(indices, minlength=10)
    assert len(indices) == 25 and counts.min() == 2 and counts.max() == 3


def test_absolute_count() -> None:
    assert len(sample_indices(10, parse_dataset_spec("d:25/-1"), seed=0)) == 25
    assert len(sample_indices(10, parse_dataset_spec("d:3/-1"), seed=0)) == 3


@pytest.mark.parametrize("proportion", ["0.1", "1e-9", "1/1000"])
def test_a_proportion_that_rounds_to_no_sample_is_refused(proportion: str) -> None:
    spec = parse_dataset_spec(f"d:{proportion}")
    with pytest.raises(DataError, match="of 3 samples is 0 samples; use a larger proportion"):
        sample_indices(3, spec, seed=0)
