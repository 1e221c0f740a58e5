"""Resume building blocks: checkpoint discovery and rotation, RNG states, the output-folder guard,
secret masking, the non-finite step guard and the tracker's continuation of a resumed run."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from aligner.secrets import REDACTED, redact, secret_values
from aligner.training import checkpoints, faults
from aligner.training.checkpoints import (
    CheckpointManager,
    ResumeError,
    check_output_dir,
    complete_checkpoints,
    find_checkpoint,
    write_run_file,
)
from aligner.training.hooks import TestHooks
from aligner.training.tracking import Tracker, read_metrics


def _checkpoint(output: Path, step: int, *, complete: bool, extra: str | None = None) -> Path:
    folder = output / checkpoints.CHECKPOINTS_DIR / f"step-{step}"
    folder.mkdir(parents=True)
    (folder / "mp_rank_00_model_states.pt").write_bytes(b"weights")
    (folder / "trainer_state_rank0.pt").write_bytes(b"rng")
    if extra:
        (folder / extra).write_text("a file the toolkit never writes")
    if complete:
        marker = {"format": checkpoints.FORMAT_VERSION, "step": step, "plan": {}}
        (folder / checkpoints.MARKER_FILE).write_text(json.dumps(marker))
    return folder


def test_auto_takes_the_newest_complete_checkpoint(tmp_path: Path) -> None:
    _checkpoint(tmp_path, 2, complete=True)
    newest = _checkpoint(tmp_path, 10, complete=True)
    _checkpoint(tmp_path, 12, complete=False)  # a save killed halfway
    assert find_checkpoint(tmp_path, "auto") == newest
    assert find_checkpoint(tmp_path, None) is None
    assert find_checkpoint(tmp_path / "elsewhere", "auto") is None
    with pytest.raises(ResumeError, match="not a complete checkpoint"):
        find_checkpoint(tmp_path, str(tmp_path / "checkpoints" / "step-12"))


def test_a_stopped_run_names_what_it_keeps_only_when_it_keeps_one(tmp_path: Path) -> None:
    _checkpoint(tmp_path, 1, complete=False)  # the save the stop interrupted
    assert checkpoints.what_is_kept(tmp_path) == "there is no complete checkpoint to resume from"
    kept = _checkpoint(tmp_path, 2, complete=True)
    _checkpoint(tmp_path, 3, complete=False)
    assert checkpoints.what_is_kept(tmp_path) == f"the last complete checkpoint ({kept}) is kept"


def test_rotation_keeps_the_newest_and_what_it_did_not_write(tmp_path: Path) -> None:
    for step in (2, 4, 6):
        _checkpoint(tmp_path, step, complete=True)
    _checkpoint(tmp_path, 3, complete=False)
    _checkpoint(tmp_path, 8, complete=False)  # newer than every complete one: maybe in progress
    _checkpoint(tmp_path, 1, complete=True, extra="notes.txt")
    manager = CheckpointManager(tmp_path, rank=0, device=torch.device("cpu"), keep=2, plan={})
    manager._rotate()
    left = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert left == ["step-1", "step-4", "step-6", "step-8"]
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step-1", "step-4", "step-6"]


def test_rotation_never_deletes_the_only_complete_checkpoint(tmp_path: Path) -> None:
    _checkpoint(tmp_path, 5, complete=True)
    CheckpointManager(tmp_path, rank=0, device=torch.device("cpu"), keep=1, plan={})._rotate()
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step-5"]


def test_rng_states_round_trip_through_weights_only_load(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    torch.save({"rng": checkpoints.capture_rng()}, tmp_path / "state.pt")
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    checkpoints.restore_rng(torch.load(tmp_path / "state.pt", weights_only=True)["rng"])
    assert random.random() == expected[0]
    assert np.random.rand() == expected[1]
    assert torch.equal(torch.rand(3), expected[2])


def test_data_fingerprint_changes_with_the_data() -> None:
    base = checkpoints.data_fingerprint([("correction", [3, 4, 5])])
    assert base == checkpoints.data_fingerprint([("correction", np.array([3, 4, 5]))])
    assert base != checkpoints.data_fingerprint([("correction", [3, 4, 6])])
    assert base != checkpoints.data_fingerprint([("warmup", [3, 4, 5])])


def test_output_dir_guard(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    check_output_dir(fresh, resume=None, overwrite=False)
    fresh.mkdir()
    (fresh / "stdout.log").write_text("written by the launcher script")
    check_output_dir(fresh, resume=None, overwrite=False)

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("someone's work")
    for spec in (None, "auto"):
        with pytest.raises(ResumeError, match="holds no aligner run"):
            check_output_dir(foreign, resume=spec, overwrite=False)
    check_output_dir(foreign, resume=None, overwrite=True)

    ours = tmp_path / "ours"
    write_run_file(ours, "run")
    (ours / "metrics.jsonl").write_text("")
    with pytest.raises(ResumeError, match="--resume_from_checkpoint auto"):
        check_output_dir(ours, resume=None, overwrite=False)
    check_output_dir(ours, resume="auto", overwrite=False)
    check_output_dir(ours, resume=None, overwrite=True)

    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(ResumeError, match="not a folder"):
        check_output_dir(a_file, resume=None, overwrite=True)

    nodes = tmp_path / "two-nodes"
    nodes.mkdir()
    for name in ("stdout.node0.log", "stderr.node0.log", "stdout.node1.log", "stderr.node1.log"):
        (nodes / name).write_text("written by the launcher script on each node")
    check_output_dir(nodes, resume=None, overwrite=False)


def _finished_run(output_dir: Path, *, model_in: str = "") -> Path:
    """What a finished run without full checkpoints leaves: its marker, metrics and model."""
    write_run_file(output_dir, "run")
    (output_dir / "metrics.jsonl").write_text('{"step": 1, "train_loss": 1.0}\n')
    (output_dir / model_in).mkdir(parents=True, exist_ok=True)
    (output_dir / model_in / "config.json").write_text("{}")
    (output_dir / model_in / "model.safetensors").write_bytes(b"weights")
    return output_dir


def test_another_ranks_write_probe_does_not_make_the_folder_foreign(tmp_path: Path) -> None:
    """Every rank checks the output folder at once, and each check creates and removes a probe
    file there: a rank listing the folder in that instant saw a folder that was not empty."""
    from aligner.files import WRITE_PROBE_PREFIX

    output = tmp_path / "run"
    output.mkdir()
    (output / "stdout.log").write_text("written by the launcher script")
    (output / f"{WRITE_PROBE_PREFIX}k2x9q1").write_bytes(b"")  # rank 1's, not yet removed
    check_output_dir(output, resume=None, overwrite=False)


@pytest.mark.parametrize("model_in", ["", "checkpoint-4"])
def test_auto_never_starts_over_on_top_of_a_saved_model(tmp_path: Path, model_in: str) -> None:
    done = _finished_run(tmp_path / "done", model_in=model_in)
    with pytest.raises(ResumeError) as error:
        check_output_dir(done, resume="auto", overwrite=False)
    assert str(error.value) == (
        f"--output_dir {done} holds a saved model ({done / model_in if model_in else done}) and "
        "no complete checkpoint to resume from: --resume_from_checkpoint auto would start over "
        "on top of it; pass --overwrite to start over, or choose another folder"
    )
    check_output_dir(done, resume="auto", overwrite=True)
    # With a checkpoint to resume from, auto continues the run.
    _checkpoint(done, 4, complete=True)
    check_output_dir(done, resume="auto", overwrite=False)


def test_auto_starts_fresh_over_only_its_own_incomplete_files(tmp_path: Path) -> None:
    crashed = tmp_path / "crashed"
    write_run_file(crashed, "run")
    (crashed / "metrics.jsonl").write_text('{"step": 1, "train_loss": 1.0}\n')
    (crashed / "stdout.log").write_text("the crashed run's log")
    _checkpoint(crashed, 3, complete=False)  # killed while saving its first checkpoint
    check_output_dir(crashed, resume="auto", overwrite=False)


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("resume", [None, "auto"])
def test_the_base_model_folder_is_never_the_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, resume: str | None, overwrite: bool
) -> None:
    model = tmp_path / "models" / "base"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path / "models")
    with pytest.raises(ResumeError) as error:
        # The same folder under another spelling.
        check_output_dir(
            "../models/base/", resume=resume, overwrite=overwrite, model_name_or_path=str(model)
        )
    assert str(error.value) == (
        "--output_dir ../models/base is the base model's folder (--model_name_or_path): "
        "training would overwrite the model it starts from; choose another folder"
    )
    check_output_dir(
        model / "finetuned", resume=resume, overwrite=overwrite, model_name_or_path="base"
    )


def test_redact_masks_secret_variables_everywhere() -> None:
    env = {"WANDB_API_KEY": "wandb-secret", "MY_SERVICE_TOKEN": "tok-123", "HOME": "/home/me"}
    assert secret_values(env) == ["wandb-secret", "tok-123"]
    value = {"name": "run-tok-123", "list": ["x wandb-secret y"], "n": 3, "home": "/home/me"}
    assert redact(value, env) == {
        "name": f"run-{REDACTED}",
        "list": [f"x {REDACTED} y"],
        "n": 3,
        "home": "/home/me",
    }
    assert secret_values({"HF_TOKEN": "", "AWS_KEY": "no"}) == []


@pytest.fixture
def one_rank_group():
    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    yield
    dist.destroy_process_group()


@pytest.mark.usefixtures("one_rank_group")
def test_a_fresh_start_clears_only_our_own_checkpoints(tmp_path: Path) -> None:
    _checkpoint(tmp_path, 3, complete=True)
    _checkpoint(tmp_path, 6, complete=False)
    _checkpoint(tmp_path, 9, complete=True, extra="notes.txt")
    CheckpointManager(tmp_path, rank=0, device=torch.device("cpu"), keep=2, plan={}).clear()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-9"]
    assert (tmp_path / "checkpoints" / "step-9" / "notes.txt").is_file()


@pytest.mark.usefixtures("one_rank_group")
def test_guard_skips_the_update_of_a_step_with_an_infinite_gradient() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    hooks = TestHooks(inf_gradient=frozenset({1}))
    hooks.corrupt_gradients(model)
    guard = faults.NonFiniteGuard(model, optimizer, watch_gradients=True)
    before = [p.detach().clone() for p in model.parameters()]

    def step(number: int) -> bool:
        hooks.before_step(number - 1)
        guard.begin_step()
        loss = model(torch.ones(4, 3)).sum()
        guard.observe_loss(loss)
        loss.backward()
        applied = guard.decide(torch.device("cpu"))
        optimizer.step()
        optimizer.zero_grad()
        return applied

    assert not step(1)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert not optimizer.state  # Adam's moments were not fed the infinity
    assert step(2)
    assert not torch.equal(before[0], model.weight)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.usefixtures("one_rank_group")
def test_guard_sees_a_non_finite_loss_without_watching_gradients() -> None:
    model = torch.nn.Linear(3, 1)
    guard = faults.NonFiniteGuard(
        model, torch.optim.SGD(model.parameters(), lr=0.1), watch_gradients=False
    )
    guard.begin_step()
    guard.observe_loss(torch.tensor(float("nan")))
    assert not guard.decide(torch.device("cpu"))
    guard.begin_step()
    guard.observe_loss(torch.tensor(1.0))
    assert guard.decide(torch.device("cpu"))


def test_tracker_continues_a_resumed_run_after_the_checkpoint_step(tmp_path: Path) -> None:
    kwargs = {"log_type": "none", "log_dir": None, "project": "p", "run_name": "r", "config": {}}
    tracker = Tracker(tmp_path, **kwargs)
    for step in (1, 2, 3, 4):  # killed after step 4; the last checkpoint was step 2
        tracker.log({"train_loss": float(step)}, step)
    tracker._metrics.close()
    tracker = Tracker(tmp_path, resume_step=2, **kwargs)
    for step in (3, 4, 5):
        tracker.log({"train_loss": 10.0 + step}, step)
    tracker.close()
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["train_loss"]) for r in rows] == [
        (1, 1.0),
        (2, 2.0),
        (3, 13.0),
        (4, 14.0),
        (5, 15.0),
    ]
