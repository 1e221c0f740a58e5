"""When a run is stopped or cannot go on (DeepSpeed launcher, CPU ranks, tiny model): a signal to
the wrapper ends every process of the run, logs are appended and never lost, a full disk and
non-finite weights stop the run in one line, and nothing left behind looks complete."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from aligner.training.checkpoints import MARKER_FILE, complete_checkpoints
from aligner.training.tracking import read_metrics
from tests.integration.conftest import SCRIPT, clean_env, run_command

pytestmark = pytest.mark.integration

FLAGS = (
    "--zero_stage 2 --per_device_train_batch_size 1 --gradient_accumulation_steps 1 --epochs 100 "
    "--lr 2e-3 --gradient_checkpointing False --max_length 128 --defaults aligner"
).split()
RUN_TIMEOUT = 300
SECRET = "sentinel-secret-4b1d"


@dataclass
class Stopped:
    """A launch of the wrapper that was sent a signal, and what was left of it."""

    returncode: int | None
    seconds_to_exit: float
    survivors: list[str]  # command lines of the run's processes alive after the wrapper exited
    lines: list[str]


def _processes_of(marker: str) -> list[str]:
    """Command lines of the live processes whose environment holds ``marker``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if (
                proc.name.isdigit()
                and marker.encode() in (proc / "environ").read_bytes()
                and (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
            ):
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue  # ended while being read
    return found


def _train_steps(output_dir: Path) -> int:
    try:
        return sum("train_loss" in row for row in read_metrics(output_dir / "metrics.jsonl"))
    except (OSError, ValueError):
        return 0


def _stop(
    command: list[str], env: dict[str, str], log: Path, ready: Callable[[str], bool], sig: int
) -> Stopped:
    """Start ``command``, send ``sig`` to its process alone once ``ready(marker)``, and watch."""
    marker = uuid.uuid4().hex
    with log.open("w") as out:
        process = subprocess.Popen(
            command, env={**env, "ALIGNER_TEST_RUN": marker}, cwd=SCRIPT.parents[1],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while not ready(marker) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert process.poll() is None, log.read_text()[-3000:]
        sent = time.monotonic()
        process.send_signal(sig)  # the wrapper's PID only, as a scheduler or `timeout` sends it
        try:
            returncode: int | None = process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            returncode = None  # it never returned: the signal did not stop the run
        seconds = time.monotonic() - sent
        survivors = _processes_of(marker)
        time.sleep(2)  # anything that escaped the group would still be here
        survivors += _processes_of(marker)
    finally:
        for pid in {int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()}:
            try:
                if marker.encode() in Path(f"/proc/{pid}/environ").read_bytes():
                    os.kill(pid, signal.SIGKILL)  # a failed test leaves nothing running
            except OSError:
                pass
    return Stopped(returncode, seconds, survivors, log.read_text().splitlines())


@pytest.fixture(scope="module")
def stops(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """One output folder: SIGTERM mid-training, a relaunch refused by the trainer, and a resumed
    launch stopped by SIGINT as soon as its ranks exist."""
    from aligner.demo import write_demo_records

    work = tmp_path_factory.mktemp("stops")
    train_file = write_demo_records(work / "train.jsonl", 8, seed=3)
    output_dir = work / "run"
    env = clean_env(work) | {"MY_SERVICE_TOKEN": SECRET}

    def command(*flags: str, ranks: int = 2) -> list[str]:
        return [
            "bash", str(SCRIPT), "--num_gpus", str(ranks), "--model_name_or_path",
            str(tiny_llama_dir), "--train_datasets", str(train_file), "--output_dir",
            str(output_dir), *FLAGS, *flags,
        ]  # fmt: skip

    training = command(
        "--max_steps", "1000", "--checkpoint_interval", "2", "--log_run_name", SECRET
    )
    terminated = _stop(
        training, env, work / "term.log", lambda _: _train_steps(output_dir) >= 3, signal.SIGTERM
    )
    steps_after_term = (_train_steps(output_dir), time.sleep(3) or _train_steps(output_dir))
    refused = run_command(
        command("--max_steps", "1000", ranks=1), env, output_dir, timeout=RUN_TIMEOUT
    )

    def ranks_started(marker: str) -> bool:
        return any("aligner.commands.train" in line for line in _processes_of(marker))

    resumed = command("--max_steps", "1000", "--resume_from_checkpoint", "auto")
    interrupted = _stop(resumed, env, work / "int.log", ranks_started, signal.SIGINT)
    return output_dir, terminated, steps_after_term, refused, interrupted


@pytest.mark.timeout(3 * RUN_TIMEOUT + 120)
def test_sigterm_to_the_wrapper_ends_every_process_of_the_run(stops) -> None:
    output_dir, terminated, steps_after_term, *_ = stops
    assert terminated.returncode == 143, terminated.lines[-20:]
    assert terminated.survivors == []
    assert terminated.seconds_to_exit < 30
    assert terminated.lines[-1] == (
        "sft-correction.sh: stopped by SIGTERM; every process of the run has ended (continue "
        "with --resume_from_checkpoint auto)"
    )
    # Nothing trained on after the wrapper returned, and the run never saved a final model.
    at_exit, later = steps_after_term
    assert later == at_exit >= 3
    assert not (output_dir / "config.json").exists()
    assert complete_checkpoints(output_dir)


@pytest.mark.timeout(3 * RUN_TIMEOUT + 120)
def test_sigint_to_the_wrapper_ends_every_process_and_exits_130(stops) -> None:
    interrupted = stops[-1]
    assert interrupted.returncode == 130, interrupted.lines[-20:]
    assert interrupted.survivors == []
    assert interrupted.lines[-1].startswith("sft-correction.sh: stopped by SIGINT;")
    assert not any("Traceback" in line for line in interrupted.lines)


@pytest.mark.timeout(3 * RUN_TIMEOUT + 120)
def test_a_refused_relaunch_ends_with_the_trainers_error_and_loses_no_log(stops) -> None:
    output_dir, terminated, _, refused, _ = stops
    assert refused.returncode == 2, refused.output[-3000:]
    assert refused.lines[-1][1] == (
        f"aligner train: error: --output_dir {output_dir} holds an earlier run: pass "
        "--resume_from_checkpoint auto to continue it, or --overwrite to start over"
    )
    assert refused.lines[-2][1].startswith("sft-correction.sh: training failed with exit status 2")
    # Every launch appended its own header; the killed run's output is still there.
    for log in ("stdout.log", "stderr.log"):
        text = (output_dir / log).read_text()
        headers = [line for line in text.splitlines() if line.startswith("==== ")]
        assert len(headers) == 3, log
        assert all(", node rank 0: bash " in header and SECRET not in header for header in headers)
        assert "--log_run_name <redacted>" in headers[0]
    stdout = (output_dir / "stdout.log").read_text()
    assert "training on 8 correction samples" in stdout.split("==== ")[1]
    assert "holds an earlier run" in (output_dir / "stderr.log").read_text().split("==== ")[2]
    assert terminated.lines  # the console saw what the log kept


@pytest.mark.timeout(RUN_TIMEOUT + 60)
def test_non_finite_weights_are_never_saved(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """A weight turns NaN after the last step (as a silent overflow would make it): the final
    save refuses to publish the model, and the checkpoint of the step before stays."""
    from aligner.demo import write_demo_records

    train_file = write_demo_records(tmp_path / "train.jsonl", 8, seed=3)
    output_dir = tmp_path / "run"
    command = [
        str(Path(sys.executable).parent / "aligner"), "train", "--model_name_or_path",
        str(tiny_llama_dir), "--train_datasets", str(train_file), "--output_dir", str(output_dir),
        *FLAGS, "--zero_stage", "0", "--max_steps", "3", "--checkpoint_interval", "2",
    ]  # fmt: skip
    env = clean_env(tmp_path) | {"ALIGNER_FAULT_NAN_WEIGHT": "0:3"}
    run = run_command(command, env, output_dir, timeout=RUN_TIMEOUT)
    assert run.returncode == 1, run.output[-3000:]
    assert "Traceback" not in run.output
    errors = [line for line in run.output.splitlines() if "error:" in line]
    step_2 = output_dir / "checkpoints" / "step-2"
    assert errors == [
        f"aligner train: error: the weights hold NaN or inf after step 3: not saved to "
        f"{output_dir}; the last complete checkpoint ({step_2}) is kept"
    ]
    assert complete_checkpoints(output_dir) == [step_2]
    assert not (output_dir / "config.json").exists()
    assert not list(output_dir.glob(".*saving*"))


@pytest.mark.timeout(RUN_TIMEOUT + 60)
def test_a_full_disk_during_a_checkpoint_is_one_line(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """The output folder is a 12 MiB tmpfs (a private mount, gone with the run): the run's logs and
    metrics fit, the first checkpoint (about 50 MiB here) does not."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux) for a private small file system")
    from aligner.demo import write_demo_records

    train_file = write_demo_records(tmp_path / "train.jsonl", 8, seed=3)
    output_dir = tmp_path / "small-disk"
    output_dir.mkdir()
    listing = tmp_path / "left-behind.txt"
    # Runs inside the namespace: mount, train, then list what the run left before the mount goes.
    inner = 'mount -t tmpfs -o size=12m tmpfs "$1" || exit 99; shift; "$@"; s=$?; '
    inner += f'find "{output_dir}" -mindepth 1 > "{listing}"; exit $s'
    namespace = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", inner, "sh"]
    command = [
        *namespace, str(output_dir), "bash", str(SCRIPT), "--num_gpus", "2",
        "--model_name_or_path", str(tiny_llama_dir), "--train_datasets", str(train_file),
        "--output_dir", str(output_dir), *FLAGS, "--max_steps", "3", "--checkpoint_interval", "1",
    ]  # fmt: skip
    run = run_command(command, clean_env(tmp_path), output_dir, timeout=RUN_TIMEOUT)
    if run.returncode == 99:
        pytest.skip(f"no private mount here: {run.output[-500:]}")
    assert run.returncode == 1, run.output[-4000:]
    assert "Traceback" not in run.output, run.output[-4000:]
    step_1 = output_dir / "checkpoints" / "step-1"
    last = run.output.splitlines()[-1]
    assert last.startswith(
        f"aligner train: error: no space left on device: cannot write checkpoint {step_1} (rank "
    ), run.output[-3000:]
    # The first checkpoint failed: none is complete, and the line says so.
    assert last.endswith("); it was removed, and there is no complete checkpoint to resume from")
    left = {Path(line).relative_to(output_dir).as_posix() for line in listing.read_text().split()}
    assert not any(name.endswith((MARKER_FILE, "config.json")) for name in left), left
    assert "checkpoints/step-1" not in left, left
    assert {"aligner_run.json", "metrics.jsonl", "stdout.log", "stderr.log"} <= left


@pytest.mark.timeout(RUN_TIMEOUT + 60)
def test_the_wrapper_writes_no_log_into_the_base_models_folder(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    """Training refuses an output folder that is the base model's, --overwrite or not; the
    wrapper must not append its logs there either."""
    from aligner.demo import write_demo_records

    model_dir = tmp_path / "base"
    shutil.copytree(tiny_llama_dir, model_dir)
    before = sorted(path.name for path in model_dir.iterdir())
    train_file = write_demo_records(tmp_path / "train.jsonl", 8, seed=3)
    command = [
        "bash", str(SCRIPT), "--num_gpus", "1", "--model_name_or_path", str(model_dir),
        "--train_datasets", str(train_file), "--output_dir", str(model_dir), *FLAGS,
        "--overwrite",
    ]  # fmt: skip
    run = run_command(command, clean_env(tmp_path), model_dir, timeout=RUN_TIMEOUT)
    assert run.returncode == 2, run.output[-3000:]
    assert "is the base model's folder" in run.output.splitlines()[-1]
    assert sorted(path.name for path in model_dir.iterdir()) == before


def test_several_nodes_without_a_way_to_reach_them_is_refused(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    """DeepSpeed's launcher raises a ValueError traceback for --num_nodes 2 without a hostfile;
    the wrapper refuses it first, in one line, before it writes anything."""
    if Path("/job/hostfile").exists():
        pytest.skip("DeepSpeed's default hostfile exists on this machine")
    output_dir = tmp_path / "two-nodes"
    command = ["bash", str(SCRIPT), "--num_nodes=2", "--model_name_or_path", str(tiny_llama_dir)]
    command += ["--train_datasets", str(tmp_path / "train.jsonl"), "--output_dir", str(output_dir)]
    run = run_command(command, clean_env(tmp_path), output_dir, timeout=60)
    assert run.returncode == 2
    assert run.output.strip() == (
        "sft-correction.sh: --num_nodes 2 needs the other nodes: pass --hostfile FILE, or launch "
        "each node with --no_ssh --node_rank N --master_addr HOST"
    )
    assert not output_dir.exists()
