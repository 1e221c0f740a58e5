"""Metric tracking: metrics.jsonl, the loss curve, wandb's offline fallback without a key, and
the refusal of an online wandb that cannot be reached."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from aligner.training.checkpoints import check_output_dir
from aligner.training.tracking import (
    Tracker,
    TrackerError,
    check_tracker_reachable,
    read_metrics,
    wandb_has_credentials,
)


def test_metrics_jsonl_and_loss_curve(tmp_path: Path) -> None:
    tracker = Tracker(tmp_path, log_type="none", log_dir=None, project="p", run_name="r", config={})
    tracker.log({"eval_loss": 3.0}, step=0)
    for step, loss in enumerate([3.0, 2.5, 2.0], start=1):
        tracker.log({"train_loss": loss, "lr": 1e-3}, step=step)
    tracker.close()
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [row["step"] for row in rows] == [0, 1, 2, 3]
    assert [row.get("train_loss") for row in rows[1:]] == [3.0, 2.5, 2.0]
    assert (tmp_path / "loss_curve.png").stat().st_size > 1000


ROW = {"train_loss": 1.0, "lr": 2e-5, "epoch": 0.5, "tokens_per_s": 10.0, "phase": "correction"}
ORIGINAL_NAMES = {"train/loss", "train/lr", "train/epoch", "train/tokens_per_s", "eval/loss"}
"""The original toolkit's tags for what it logged, and new values under the same scheme."""


def test_tensorboard_uses_the_original_tags(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tracker = Tracker(
        tmp_path, log_type="tensorboard", log_dir=None, project="p", run_name="r", config={}
    )
    tracker.log(ROW, step=1)
    tracker.log({"eval_loss": 2.0}, step=1)
    tracker.close()
    (events,) = (tmp_path / "tensorboard" / "r").glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    assert set(accumulator.Tags()["scalars"]) == ORIGINAL_NAMES


def test_wandb_uses_the_original_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    tracker = Tracker(
        tmp_path, log_type="wandb", log_dir=None, project="p", run_name="r", config={}
    )
    # A real offline run keeps its history in a binary log only; record what reaches it.
    logged: set[str] = set()
    log = tracker._wandb_run.log
    monkeypatch.setattr(
        tracker._wandb_run, "log", lambda row, **kwargs: logged.update(row) or log(row, **kwargs)
    )
    tracker.log(ROW, step=1)
    tracker.log({"eval_loss": 2.0}, step=1)
    tracker.close()
    assert logged == ORIGINAL_NAMES


def test_wandb_credentials_come_from_the_environment_or_netrc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "missing"))
    assert not wandb_has_credentials()
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai login user password abc\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert wandb_has_credentials()
    monkeypatch.setenv("NETRC", str(tmp_path / "missing"))
    monkeypatch.setenv("WANDB_API_KEY", "k")
    assert wandb_has_credentials()


@pytest.fixture
def unreachable_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A W&B key and a base URL at a closed port on 127.0.0.1: every connection is refused."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: nothing else can take the port
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
        monkeypatch.setenv("WANDB_API_KEY", "sentinel-wandb-key-0000")
        monkeypatch.setenv("WANDB_BASE_URL", url)
        monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
        monkeypatch.delenv("WANDB_MODE", raising=False)
        yield url


def test_wandb_with_a_key_but_no_server_is_refused_before_any_work(
    unreachable_wandb: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from aligner.commands import train as main

    monkeypatch.setenv("RANK", "0")  # one process, as `aligner train` without a launcher
    monkeypatch.setenv("WORLD_SIZE", "1")
    output = tmp_path / "run"
    argv = ["--model_name_or_path", "model", "--train_datasets", "data.jsonl"]
    started = time.monotonic()
    code = main.main([*argv, "--output_dir", str(output), "--log_type", "wandb"])
    assert time.monotonic() - started < 30
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        f"aligner train: error: cannot reach W&B at {unreachable_wandb} (Connection refused): "
        "use --log_type none or WANDB_MODE=offline"
    )
    # Nothing was written, so the same command can run again once W&B is reachable.
    assert not output.exists()
    check_output_dir(output, resume=None, overwrite=False)


def test_wandb_offline_or_without_a_key_needs_no_server(
    unreachable_wandb: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(TrackerError, match="cannot reach W&B"):
        check_tracker_reachable("wandb")
    check_tracker_reachable("tensorboard")
    monkeypatch.setenv("WANDB_MODE", "offline")
    check_tracker_reachable("wandb")
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_API_KEY")
    check_tracker_reachable("wandb")  # no key: the tracker logs offline
