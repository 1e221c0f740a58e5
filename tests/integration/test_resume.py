"""Fault tolerance end to end (2 CPU ranks, tiny model): exact resume after a SIGKILL and after a
kill during a checkpoint save, an infinite gradient on one rank, output-folder safety, secrets
never written or printed, and a two-node rehearsal on one machine."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from aligner.training.checkpoints import MARKER_FILE, complete_checkpoints, find_checkpoint
from aligner.training.tracking import read_metrics
from tests.integration.conftest import SCRIPT, Run, clean_env, kill_session, run_command
from tests.standins import free_port

pytestmark = pytest.mark.integration

NUM_RECORDS = 20
STEPS = 10
CHECKPOINT_INTERVAL = 3
# Global batch 1 x 2 accumulation x 2 ranks = 4: 5 steps per epoch, so checkpoints at steps 3, 6
# and 9 fall mid-epoch and on both sides of the epoch boundary; cosine warm-up makes the LR
# schedule part of what must be restored.
FLAGS = (
    f"--zero_stage 2 --per_device_train_batch_size 1 --gradient_accumulation_steps 2 --epochs 2 "
    f"--max_steps {STEPS} --lr 2e-3 --lr_scheduler_type cosine --lr_warmup_ratio 0.2 "
    f"--gradient_checkpointing False --max_length 128 "
    f"--checkpoint_interval {CHECKPOINT_INTERVAL} --save_total_limit 2 --defaults aligner"
).split()
SECRETS = {
    "WANDB_API_KEY": "sentinel-wandb-3f9a7c1e",
    "HF_TOKEN": "hf_sentinelToken8d2b",
    "MY_SERVICE_TOKEN": "sentinel-service-6e4d",
}
RUN_TIMEOUT = 300
"""Seconds one launch may take; each test's timeout covers the launches it may trigger itself."""


@pytest.fixture(scope="module")
def setup(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """``launch(output_dir, *flags, env=...)`` runs scripts/sft-correction.sh with 2 CPU ranks
    (``single_process=True``: ``aligner train``), the secret sentinels in its environment and
    wandb offline."""
    from aligner.demo import write_demo_records

    work = tmp_path_factory.mktemp("resume")
    train_file = write_demo_records(work / "train.jsonl", NUM_RECORDS, seed=11)
    base_env = clean_env(work) | SECRETS | {"WANDB_MODE": "offline"}

    def launch(
        output_dir: Path, *flags: str, env: dict[str, str] | None = None, single_process=False
    ) -> Run:
        entry = [str(Path(sys.executable).parent / "aligner"), "train"]
        if not single_process:
            entry = ["bash", str(SCRIPT), "--num_gpus", "2"]
        command = [
            *entry,
            "--model_name_or_path", str(tiny_llama_dir),
            "--train_datasets", str(train_file),
            "--output_dir", str(output_dir),
            *FLAGS, *flags,
        ]  # fmt: skip
        return run_command(command, base_env | (env or {}), output_dir, RUN_TIMEOUT)

    return work, launch


def _succeeded(run: Run) -> Run:
    assert run.returncode == 0, run.output[-4000:]
    assert "Traceback" not in run.output, run.output[-4000:]
    return run


def _weights(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(output_dir / "model.safetensors")


def _train_rows(output_dir: Path) -> list[dict]:
    return [row for row in read_metrics(output_dir / "metrics.jsonl") if "train_loss" in row]


def _assert_same_training(output_dir: Path, reference: Run) -> None:
    """Bitwise: the same per-step losses and learning rates, and the same final weights."""
    rows, expected = _train_rows(output_dir), _train_rows(reference.output_dir)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert [r["train_loss"] for r in rows] == [r["train_loss"] for r in expected]
    assert [r["lr"] for r in rows] == [r["lr"] for r in expected]
    weights, reference_weights = _weights(output_dir), _weights(reference.output_dir)
    assert weights.keys() == reference_weights.keys()
    for name, value in weights.items():
        assert torch.equal(value, reference_weights[name]), name


@pytest.fixture(scope="module")
def reference(setup) -> Run:
    work, launch = setup
    return _succeeded(launch(work / "reference", "--log_type", "wandb"))


@dataclass
class Stage:
    """One launch in a folder that several launches share, and what it left there."""

    run: Run
    checkpoints: dict[str, bool]  # folder name -> complete
    steps_logged: list[int]


@pytest.fixture(scope="module")
def interrupted(setup) -> list[Stage]:
    """One output folder: killed while saving step 6, resumed and SIGKILLed at a random later
    step, resumed again to the end."""
    work, launch = setup
    output_dir = work / "interrupted"
    resume = ("--resume_from_checkpoint", "auto", "--log_type", "tensorboard")
    kill_step = random.choice([7, 8])
    stages = []
    for env in ({"ALIGNER_FAULT_SAVE": "1:6"}, {"ALIGNER_FAULT_KILL": f"1:{kill_step}"}, {}):
        run = launch(output_dir, *resume, env=env)
        steps = [row["step"] for row in _train_rows(output_dir)]
        stages.append(Stage(run, _checkpoint_steps(output_dir), steps))
    return stages


def _checkpoint_steps(output_dir: Path) -> dict[str, bool]:
    """Each checkpoint folder and whether it is complete."""
    root = output_dir / "checkpoints"
    folders = sorted(path for path in root.iterdir() if path.is_dir())
    return {path.name: (path / MARKER_FILE).is_file() for path in folders}


@pytest.mark.timeout(3 * RUN_TIMEOUT + 60)
def test_kill_during_save_keeps_the_previous_checkpoint(
    interrupted: list[Stage],
) -> None:
    killed = interrupted[0]
    assert killed.run.returncode != 0
    # Rank 1 died after DeepSpeed wrote step 6 and before the commit: step 6 is not complete.
    assert killed.checkpoints == {"step-3": True, "step-6": False}, killed.run.output[-3000:]
    assert killed.steps_logged == list(range(1, 7))


@pytest.mark.timeout(4 * RUN_TIMEOUT + 60)
def test_killed_runs_resume_to_the_uninterrupted_losses_and_weights(
    interrupted: list[Stage], reference: Run
) -> None:
    killed, finished = interrupted[1].run, interrupted[2].run
    assert killed.returncode != 0
    assert "resuming from" in killed.output and "after step 3" in killed.output
    # The resumed run saved step 6 again (complete now) and died at step 7 or 8, before step 9.
    assert interrupted[1].checkpoints == {"step-3": True, "step-6": True}, killed.output[-3000:]
    assert interrupted[1].steps_logged[:6] == list(range(1, 7))
    _succeeded(finished)
    assert "after step 6" in finished.output
    _assert_same_training(finished.output_dir, reference)
    # Rotation kept the newest two, and never the final model's files.
    assert [p.name for p in complete_checkpoints(finished.output_dir)] == ["step-6", "step-9"]
    assert find_checkpoint(finished.output_dir, "auto").name == "step-9"
    assert (finished.output_dir / "config.json").is_file()


@pytest.mark.timeout(4 * RUN_TIMEOUT)
def test_resuming_with_another_world_size_or_seed_is_refused(
    setup, interrupted: list[Stage]
) -> None:
    _, launch = setup
    output_dir = interrupted[-1].run.output_dir
    before = {p: p.stat().st_mtime_ns for p in output_dir.rglob("*") if p.is_file()}
    run = launch(output_dir, "--resume_from_checkpoint", "auto", "--seed", "7", single_process=True)
    assert run.returncode == 2  # refused before any training step
    errors = [line for line in run.output.splitlines() if "aligner train: error:" in line]
    assert len(errors) == 1, run.output[-3000:]
    assert "cannot resume from" in errors[0] and "step-9" in errors[0]
    assert "world_size was 2, now 1" in errors[0] and "seed was 42, now 7" in errors[0]
    after = {p: p.stat().st_mtime_ns for p in output_dir.rglob("*") if p.is_file()}
    assert after == before


@pytest.mark.timeout(2 * RUN_TIMEOUT + 60)
def test_infinite_gradient_on_one_rank_skips_the_step_everywhere(setup, reference: Run) -> None:
    work, launch = setup
    run = launch(
        work / "inf-grad",
        "--max_consecutive_skips", "2",
        env={"ALIGNER_FAULT_INF_GRAD": "1:2,5,6"},
    )  # fmt: skip
    assert run.returncode != 0
    assert "Traceback" not in run.output, run.output[-4000:]
    rows = _train_rows(run.output_dir)
    assert [r["skipped"] for r in rows] == [0, 1, 0, 0, 1, 1]
    assert [r["skipped_steps"] for r in rows] == [0, 1, 1, 1, 2, 3]
    expected = [row["train_loss"] for row in _train_rows(reference.output_dir)]
    # Up to step 2 the same weights saw the same batches; step 2's update was dropped on both
    # ranks, so from step 3 on the losses differ from the reference but stay finite.
    assert [r["train_loss"] for r in rows[:2]] == expected[:2]
    assert rows[2]["train_loss"] != expected[2]
    assert all(abs(r["train_loss"]) < 100 for r in rows)
    assert "step 2: non-finite loss or gradient, update skipped" in run.output
    # Said once by the trainer, and again by the wrapper as its last line.
    errors = [line for line in run.output.splitlines() if line.startswith("aligner train: error:")]
    assert len(set(errors)) == 1 and "2 optimizer steps in a row" in errors[0], run.output[-3000:]
    assert run.output.splitlines()[-1] == errors[0]
    # Stopped at step 6 before saving it: the last good checkpoint is kept, no final model.
    assert _checkpoint_steps(run.output_dir) == {"step-3": True}
    assert not (run.output_dir / "config.json").exists()


@pytest.mark.timeout(3 * RUN_TIMEOUT)
def test_output_folder_of_someone_else_or_a_finished_run_is_refused(setup, reference: Run) -> None:
    work, launch = setup
    foreign = work / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not ours")
    # The check runs before any rank starts, so one process without the launcher shows it.
    run = launch(foreign, single_process=True)
    assert run.returncode == 2
    errors = [line for line in run.output.splitlines() if "aligner train: error:" in line]
    assert len(errors) == 1 and "holds no aligner run" in errors[0], run.output[-3000:]
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    assert (foreign / "notes.txt").read_text() == "not ours"

    before = sorted(p.name for p in reference.output_dir.iterdir())
    again = launch(reference.output_dir, single_process=True)
    assert again.returncode == 2
    assert "holds an earlier run: pass --resume_from_checkpoint auto" in again.output
    assert sorted(p.name for p in reference.output_dir.iterdir()) == before


@pytest.mark.timeout(5 * RUN_TIMEOUT)
def test_secrets_appear_in_no_file_and_no_output(reference: Run, interrupted: list[Stage]) -> None:
    runs = [reference, *(stage.run for stage in interrupted)]
    assert list((reference.output_dir / "wandb").glob("offline-run-*"))
    assert list((interrupted[-1].run.output_dir / "tensorboard").rglob("events.out.tfevents.*"))
    files = [p for run in runs for p in run.output_dir.rglob("*") if p.is_file()]
    assert len(files) > 20
    for secret in SECRETS.values():
        for run in runs:
            assert secret not in run.output
        for path in files:
            assert secret.encode() not in path.read_bytes(), path


# ---- two nodes on one machine --------------------------------------------------------------------


@pytest.mark.timeout(3 * RUN_TIMEOUT + 180)
def test_two_node_rehearsal_survives_a_node_kill_and_resumes_to_a_clean_finish(
    setup, tiny_llama_dir: Path, reference: Run
) -> None:
    """Two launchers (one CPU rank each) joined through a hostfile, --no_ssh and a loopback
    master address; node 1 is SIGKILLed mid-run, then both resume. Same world size and batches
    as the one-node reference, so the result must equal it bitwise."""
    work, _ = setup
    hostfile = work / "hostfile"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")
    env = clean_env(work) | {"OMP_NUM_THREADS": "1"}
    output_dir = work / "two-nodes"

    started: list[subprocess.Popen] = []

    def both(*flags: str) -> list[subprocess.Popen]:
        port = free_port()
        for node_rank in (0, 1):
            command = [
                "bash", str(SCRIPT), "--hostfile", str(hostfile), "--no_ssh",
                "--node_rank", str(node_rank), "--master_addr", "127.0.0.1",
                "--master_port", str(port), "--num_gpus", "1",
                "--model_name_or_path", str(tiny_llama_dir),
                "--train_datasets", str(work / "train.jsonl"), "--output_dir", str(output_dir),
                *FLAGS, *flags,
            ]  # fmt: skip
            with (work / f"node{node_rank}-{port}.log").open("w") as log:
                started.append(
                    subprocess.Popen(
                        command, env=env, stdout=log, stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )  # fmt: skip
        return started[-2:]

    try:
        nodes = both()
        metrics = output_dir / "metrics.jsonl"
        deadline = time.monotonic() + RUN_TIMEOUT
        while time.monotonic() < deadline and _steps_logged(metrics) < 4:
            if any(node.poll() is not None for node in nodes):
                break
            time.sleep(0.2)
        assert _steps_logged(metrics) >= 4, _logs(work)
        kill_session(nodes[1].pid)  # node 1 loses power: wrapper, launcher and rank at once
        killed_at = time.monotonic()
        # The survivor's next collective fails on the dead peer's closed connections.
        assert nodes[0].wait(timeout=120) != 0, _logs(work)
        assert time.monotonic() - killed_at < 120
        assert complete_checkpoints(output_dir), _logs(work)

        resumed = both("--resume_from_checkpoint", "auto")
        assert [node.wait(timeout=RUN_TIMEOUT) for node in resumed] == [0, 0], _logs(work)
        _assert_same_training(output_dir, reference)
        # Each node appended its own logs, one header per launch, the killed run's kept.
        for node_rank in (0, 1):
            for stream in ("stdout", "stderr"):
                log = (output_dir / f"{stream}.node{node_rank}.log").read_text()
                headers = [line for line in log.splitlines() if line.startswith("==== ")]
                assert len(headers) == 2, (stream, node_rank)
                assert all(f", node rank {node_rank}: bash " in header for header in headers)
        assert "training on" in (output_dir / "stdout.node0.log").read_text().split("==== ")[1]
    finally:
        # A failed or timed-out test leaves no launcher or rank behind.
        for process in started:
            kill_session(process.pid)
            process.wait()


def _steps_logged(metrics: Path) -> int:
    try:
        return sum('"train_loss"' in line for line in metrics.read_text().splitlines())
    except OSError:
        return 0


def _logs(work: Path) -> str:
    return "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in work.glob("node*.log"))
