"""Publishing a saved model: files move into place with config.json last, stale weights go."""

from __future__ import annotations

from pathlib import Path

import pytest

from aligner import files
from aligner.training import export


def test_publish_replaces_an_old_model_and_moves_the_config_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = tmp_path / "out"
    output.mkdir()
    (output / "config.json").write_text("old")
    (output / "pytorch_model.bin").write_text("old weights")
    (output / "metrics.jsonl").write_text("kept")

    moved: list[str] = []
    replace = files.os.replace

    def record(source, target):
        moved.append(Path(target).name)
        replace(source, target)

    monkeypatch.setattr(files.os, "replace", record)
    with export.staged_model_folder(output) as staging:
        assert staging.parent == tmp_path and staging.name.startswith(".out.saving")
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            (staging / name).write_text("new")
        assert (output / "config.json").read_text() == "old"  # nothing moves before the end
    assert sorted(moved) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert moved[-1] == "config.json"
    assert not (output / "pytorch_model.bin").exists()
    assert (output / "metrics.jsonl").read_text() == "kept"
    assert (output / "model.safetensors").read_text() == "new"
    assert not staging.exists()
