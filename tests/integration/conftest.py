"""Running the real training script (DeepSpeed launcher, CPU ranks over gloo) on a tiny model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "sft-correction.sh"
NUM_RECORDS = 8
"""One global batch of 8 holds the whole set: every step trains on the same batch."""
STEPS = 5
COMMON_FLAGS = (
    f"--max_steps {STEPS} --epochs 100 --lr 2e-3 --lr_scheduler_type constant "
    "--lr_warmup_ratio 0 --gradient_checkpointing False --max_length 128 --defaults aligner"
).split()
"""``--defaults aligner``: the trainer's own defaults. The wrapper's original-toolkit ones (a wandb
run, a 16-bit save of an fp32 run, whose logits then differ from the engine's) are tested on
their own in test_original_toolkit.py."""


@dataclass
class Run:
    """A finished training run: its exit status, output folder and timed output lines."""

    returncode: int
    output_dir: Path
    seconds: float
    lines: list[tuple[float, str]] = field(default_factory=list)

    @property
    def output(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def metrics(self) -> list[dict]:
        path = self.output_dir / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def losses(self) -> list[float]:
        return [row["train_loss"] for row in self.metrics() if "train_loss" in row]


def assert_probe_matches(run: Run, model, *, tolerance: float = 1e-5) -> None:
    """The saved folder, loaded as ``model``, gives the logits the engine had after training
    (ALIGNER_PROBE_LOGITS), at every real position."""
    import torch

    probe = torch.load(run.output_dir / "probe-logits.pt", weights_only=True)
    with torch.no_grad():
        logits = model(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"]).logits
    real = probe["attention_mask"].bool()
    torch.testing.assert_close(
        logits[real].float(), probe["logits"][real], rtol=tolerance, atol=tolerance
    )


def clean_env(work: Path) -> dict[str, str]:
    """The environment of a run: offline, no credentials, caches under ``work``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "PYTEST_"))}
    env.update(
        PYTHON=sys.executable,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        HOME=str(work / "home"),
        NETRC=str(work / "home" / "no-netrc"),
        ALIGNER_CACHE_DIR=str(work / "aligner-cache"),
        HF_DATASETS_CACHE=str(work / "hf-datasets-cache"),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    return env


def kill_session(session: int) -> None:
    """SIGKILL every process of a session: the wrapper runs its launch in a process group of its
    own, so killing the wrapper's group alone would leave the launcher and the ranks running."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # STATE PPID PGRP SESSION ...
            if int(fields[3]) == session:
                os.kill(int(stat.parent.name), signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            continue  # ended meanwhile


def run_command(command: list[str], env: dict[str, str], output_dir: Path, timeout: float) -> Run:
    """Run ``command``, recording when each output line arrived; kill it after ``timeout``."""
    started = time.monotonic()
    process = subprocess.Popen(
        command,
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # so that a timeout can kill the launcher and every rank
    )
    lines: list[tuple[float, str]] = []

    def read() -> None:
        for line in process.stdout:
            lines.append((time.monotonic() - started, line.rstrip("\n")))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        returncode = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_session(process.pid)
        returncode = process.wait()
    reader.join(timeout=10)
    return Run(returncode, output_dir, time.monotonic() - started, lines)


@pytest.fixture(scope="session")
def train_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from aligner.demo import write_demo_records

    return write_demo_records(tmp_path_factory.mktemp("data") / "train.jsonl", NUM_RECORDS, seed=7)


@pytest.fixture(scope="session")
def train(tiny_llama_dir: Path, train_file: Path, tmp_path_factory: pytest.TempPathFactory):
    """Trains the tiny model; each named run happens once per session and is shared.

    ``launch(name, *flags)`` runs ``scripts/sft-correction.sh`` with 2 CPU ranks;
    ``single_process=True`` runs ``aligner train`` without a launcher instead; ``model`` is
    another model folder than the tiny Llama. ``{train_file}`` in a flag stands for the
    training file.
    """
    runs: dict[str, Run] = {}
    work = tmp_path_factory.mktemp("runs")

    def launch(
        name: str,
        *flags: str,
        single_process: bool = False,
        env: dict[str, str] | None = None,
        timeout: float = 420,
        model: Path | None = None,
    ) -> Run:
        if name not in runs:
            output_dir = work / name
            if single_process:
                entry = [str(Path(sys.executable).parent / "aligner"), "train"]
            else:
                entry = ["bash", str(SCRIPT), "--num_gpus", "2"]
            source = ["--model_name_or_path", str(model or tiny_llama_dir)]
            paths = ["--train_datasets", str(train_file), "--output_dir", str(output_dir)]
            flags = [flag.format(train_file=train_file) for flag in flags]
            command = [*entry, *source, *paths, *COMMON_FLAGS, *flags]
            # The engine's logits after training, for comparison with the reloaded model.
            probe = {"ALIGNER_PROBE_LOGITS": str(output_dir / "probe-logits.pt")}
            run_env = clean_env(work) | probe | (env or {})
            runs[name] = run_command(command, run_env, output_dir, timeout)
        return runs[name]

    return launch
