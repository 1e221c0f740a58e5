"""The whole data path: template-dataset.json, the cache, mixing, eval split and `aligner data`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from aligner.commands.data import main as data_main
from aligner.constants import IGNORE_INDEX
from aligner.datasets import DataError
from aligner.datasets.encode import SampleEncoder
from aligner.datasets.pipeline import build_dataset
from aligner.prompts import get_template

from ..conftest import REPO_ROOT, TEMPLATE_DATASET


def test_template_dataset_targets_are_corrections(any_tokenizer, tmp_path) -> None:
    records = json.loads(TEMPLATE_DATASET.read_text())
    dataset, stats = build_dataset(
        [str(TEMPLATE_DATASET)], any_tokenizer, get_template(), max_length=512, cache_dir=tmp_path
    )
    assert len(dataset) == len(records) == stats.total
    for record, row in zip(records, dataset, strict=True):
        target = [
            t for t, lab in zip(row["input_ids"], row["labels"], strict=True) if lab != IGNORE_INDEX
        ]
        assert any_tokenizer.decode(target) == record["correction"] + any_tokenizer.eos_token


def test_second_build_reads_the_cache(llama_tokenizer, tmp_path, monkeypatch) -> None:
    kwargs = {"max_length": 256, "cache_dir": tmp_path}
    first, stats = build_dataset([str(TEMPLATE_DATASET)], llama_tokenizer, get_template(), **kwargs)
    assert not stats.sources[0].from_cache

    def must_not_run(self, batch):
        raise AssertionError("tokenized again despite a valid cache")

    monkeypatch.setattr(SampleEncoder, "__call__", must_not_run)
    second, stats = build_dataset(
        [str(TEMPLATE_DATASET)], llama_tokenizer, get_template(), **kwargs
    )
    assert stats.sources[0].from_cache
    assert second["input_ids"] == first["input_ids"]
    # A different template or max length is a different cache entry.
    for template, max_length in [("aligner-v1", 256), ("correction", 128)]:
        with pytest.raises(AssertionError, match="tokenized again"):
            build_dataset(
                [str(TEMPLATE_DATASET)],
                llama_tokenizer,
                get_template(template),
                max_length=max_length,
                cache_dir=tmp_path,
            )
    meta = json.loads(next(tmp_path.glob("tokenized-*.json")).read_text())
    assert meta["template"]["name"] == "correction" and meta["max_length"] == 256


def test_edited_file_is_tokenized_again(llama_tokenizer, tmp_path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"question": "q", "answer": "a", "correction": "one"}) + "\n")
    build_dataset([str(data)], llama_tokenizer, get_template(), max_length=64, cache_dir=tmp_path)
    data.write_text(json.dumps({"question": "q", "answer": "a", "correction": "two words"}) + "\n")
    dataset, stats = build_dataset(
        [str(data)], llama_tokenizer, get_template(), max_length=64, cache_dir=tmp_path
    )
    assert not stats.sources[0].from_cache
    assert llama_tokenizer.decode(dataset[0]["input_ids"]).endswith("two words</s>")


def test_file_edited_in_place_with_size_and_time_put_back_is_tokenized_again(
    llama_tokenizer, tmp_path
) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"question": "q", "answer": "a", "correction": "one"}) + "\n")
    before = data.stat()
    build_dataset([str(data)], llama_tokenizer, get_template(), max_length=64, cache_dir=tmp_path)
    data.write_text(json.dumps({"question": "q", "answer": "a", "correction": "two"}) + "\n")
    os.utime(data, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert data.stat().st_size == before.st_size
    dataset, stats = build_dataset(
        [str(data)], llama_tokenizer, get_template(), max_length=64, cache_dir=tmp_path
    )
    assert not stats.sources[0].from_cache
    assert llama_tokenizer.decode(dataset[0]["input_ids"]).endswith("two</s>")


def test_two_datasets_reading_one_file_do_not_share_a_cache(llama_tokenizer, tmp_path) -> None:
    kwargs = {"max_length": 256, "cache_dir": tmp_path}
    plain, _ = build_dataset([str(TEMPLATE_DATASET)], llama_tokenizer, get_template(), **kwargs)
    empathy, stats = build_dataset(
        [f"empathy-json::{TEMPLATE_DATASET}"], llama_tokenizer, get_template(), **kwargs
    )
    assert not stats.sources[0].from_cache
    assert empathy["input_ids"] != plain["input_ids"]


def test_column_map_applies_to_a_record_file_or_is_refused(llama_tokenizer, tmp_path) -> None:
    data = tmp_path / "d.jsonl"
    record = {"prompt": "mapped?", "question": "not this", "answer": "a", "correction": "c"}
    data.write_text(json.dumps(record) + "\n")
    kwargs = {"max_length": 64, "cache_dir": tmp_path, "column_map": {"question": "prompt"}}
    dataset, _ = build_dataset([str(data)], llama_tokenizer, get_template(), **kwargs)
    prompt = llama_tokenizer.decode(dataset[0]["input_ids"][: dataset[0]["prompt_length"]])
    assert "mapped?" in prompt and "not this" not in prompt
    with pytest.raises(DataError) as error:
        build_dataset(
            [f"beavertails-json/train::{data}"], llama_tokenizer, get_template(), **kwargs
        )
    assert str(error.value) == (
        f"dataset beavertails-json/train:1:{data}: --column_map does not apply to "
        "BeavertailsTrainJSONDataset, which builds its own samples; it applies to record files "
        "and Hub datasets"
    )


def test_mixing_with_proportions_is_seeded(llama_tokenizer, tmp_path) -> None:
    specs = [f"correction-json:0.5:{TEMPLATE_DATASET}", f"correction-json:20/-1:{TEMPLATE_DATASET}"]
    kwargs = {"max_length": 512, "cache_dir": tmp_path, "seed": 7}
    first, stats = build_dataset(specs, llama_tokenizer, get_template(), **kwargs)
    again, _ = build_dataset(specs, llama_tokenizer, get_template(), **kwargs)
    assert [s.selected for s in stats.sources] == [6, 20] and len(first) == 26
    assert first["input_ids"] == again["input_ids"]
    other, _ = build_dataset(specs, llama_tokenizer, get_template(), **{**kwargs, "seed": 8})
    assert other["input_ids"] != first["input_ids"]


def test_dump_matches_the_corrections(
    llama_tokenizer_dir, llama_tokenizer, tmp_path, capsys
) -> None:
    dump = tmp_path / "samples.jsonl"
    code = data_main(
        [
            "--train_datasets",
            str(TEMPLATE_DATASET),
            "--model_name_or_path",
            str(llama_tokenizer_dir),
            "--max_length",
            "512",
            "--dump",
            str(dump),
            "--eval_split_ratio",
            "0.25",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "padding share at batch size 4" in out and "held out for evaluation" in out
    samples = [json.loads(line) for line in dump.read_text().splitlines()]
    corrections = {r["correction"] for r in json.loads(TEMPLATE_DATASET.read_text())}
    assert len(samples) == 9
    for sample in samples:
        target = [
            t
            for t, lab in zip(sample["input_ids"], sample["labels"], strict=True)
            if lab != IGNORE_INDEX
        ]
        assert llama_tokenizer.decode(target)[: -len("</s>")] in corrections


def test_data_command_fails_with_one_line_before_any_work(llama_tokenizer_dir, tmp_path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "a", "correction": "c"}\n{"question": "q"}\n')
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "aligner.cli",
            "data",
            "--train_datasets",
            str(bad),
            "--model_name_or_path",
            str(llama_tokenizer_dir),
            "--dump",
            str(tmp_path / "out.jsonl"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"aligner data: error: {bad}:2: missing field 'answer'"
    )
    assert "Traceback" not in result.stderr and not (tmp_path / "out.jsonl").exists()


def test_unknown_dataset_in_spec(llama_tokenizer, tmp_path) -> None:
    with pytest.raises(
        DataError, match="unknown dataset 'nope'; known datasets: .*correction-json"
    ):
        build_dataset(
            ["nope:1:x.json"], llama_tokenizer, get_template(), max_length=64, cache_dir=tmp_path
        )


def test_parallel_tokenization_gives_the_same_samples(bpe_tokenizer, tmp_path) -> None:
    kwargs = {"max_length": 512, "seed": 3}
    one, _ = build_dataset(
        [str(TEMPLATE_DATASET)], bpe_tokenizer, get_template(), cache_dir=tmp_path / "a", **kwargs
    )
    two, _ = build_dataset(
        [str(TEMPLATE_DATASET)],
        bpe_tokenizer,
        get_template(),
        cache_dir=tmp_path / "b",
        num_proc=2,
        **kwargs,
    )
    assert one["input_ids"] == two["input_ids"] and one["labels"] == two["labels"]


def test_data_command_counts_what_truncation_took_from_conversations(
    chatml_tokenizer_dir, capsys
) -> None:
    conversations = REPO_ROOT / "template-conversations.jsonl"
    args = ["--train_datasets", str(conversations), "--model_name_or_path"]
    args += [str(chatml_tokenizer_dir), "--prompt_template", "chat", "--max_length", "72"]
    assert data_main(args) == 0
    out = capsys.readouterr().out
    assert "prompt template: chat (chat)" in out
    # Both multi-turn records lose turns; three long answers are shortened, one question too.
    assert (
        "truncated: 2 lost their oldest turns, 3 a shortened answer, 1 a shortened question" in out
    )
