"""Writing files safely: atomic replacement, durable appends, folders published whole."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aligner import files
from aligner.training import checkpoints


def test_an_atomic_write_replaces_the_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    path.write_text("old")
    files.write_atomically(path, "new, ünïcode\n")
    assert path.read_text(encoding="utf-8") == "new, ünïcode\n"
    files.write_atomically(path, b"\x00bytes")
    assert path.read_bytes() == b"\x00bytes"
    assert os.listdir(tmp_path) == ["report.json"]


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    path.write_text("old")
    seen: list[str] = []
    with pytest.raises(RuntimeError, match="crash"), files.atomic_writer(path) as handle:
        handle.write("half of the new")
        seen = os.listdir(tmp_path)
        raise RuntimeError("crash")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["report.json"]
    # While it is written the new file is hidden, and a checkpoint folder's clean-up knows it.
    (temporary,) = set(seen) - {"report.json"}
    assert temporary.startswith(".report.json.") and temporary.endswith(".tmp")
    assert checkpoints._CHECKPOINT_FILES.fullmatch(temporary)


def test_a_durable_write_appends_and_reaches_the_file(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text("1\n")
    with path.open("a", encoding="utf-8") as handle:
        files.write_durably(handle, "2\n")
        assert path.read_text() == "1\n2\n"  # on disk before the file is closed


def test_a_staged_folder_is_published_only_when_complete(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("old")
    (folder / "weights.bin").write_text("old")
    with pytest.raises(OSError), files.staged_folder(folder, last=["config.json"]) as staging:
        assert staging.name == f".model.saving-{os.getpid()}" and staging.is_dir()
        (staging / "weights.bin").write_text("half")
        raise OSError("no space left on device")
    assert (folder / "config.json").read_text() == "old"
    assert (folder / "weights.bin").read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["model"]
    with files.staged_folder(folder, last=["config.json"], stale=(".bin",)) as staging:
        (staging / "config.json").write_text("new")
        (staging / "weights.safetensors").write_text("new")
    assert sorted(os.listdir(folder)) == ["config.json", "weights.safetensors"]
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_an_atomic_write_gets_the_permissions_of_a_plain_write(tmp_path: Path) -> None:

    umask = os.umask(0o022)
    try:
        new = tmp_path / "new.json"
        files.write_atomically(new, "{}")
        assert new.stat().st_mode & 0o777 == 0o644
        shared = tmp_path / "shared.json"
        shared.write_text("old")
        shared.chmod(0o664)
        files.write_atomically(shared, "new")
        assert shared.stat().st_mode & 0o777 == 0o664
    finally:
        os.umask(umask)
