"""Benchmark parts in child processes: an offline environment, a log file, and a hard timeout."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
KILL_GRACE_S = 10.0
"""How long a timed-out part may take to exit after SIGTERM before its processes are killed."""


def offline_env(threads: int | None = None, **extra: str) -> dict[str, str]:
    """This process's environment, offline (nothing may be downloaded) and without trackers;
    ``threads`` sets each child's intra-op thread count."""
    env = dict(os.environ)
    env.update(
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        WANDB_MODE="disabled",
        **extra,
    )
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


@dataclass(frozen=True)
class Finished:
    """How a child process ended: its exit status (None when it was timed out) and wall time."""

    returncode: int | None
    seconds: float
    log: Path

    @property
    def timed_out(self) -> bool:
        return self.returncode is None

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def run_logged(
    command: list[str], env: dict[str, str], log: Path, timeout_s: float | None = None
) -> Finished:
    """Run ``command`` with its output in ``log``; kill it after ``timeout_s``.

    The child leads a session of its own, so that a timeout ends everything it started (a
    launcher and its ranks), not only the child itself.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log.open("w") as handle:
        process = subprocess.Popen(
            command,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            returncode: int | None = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _end_session(process)
            returncode = None
    return Finished(returncode, time.perf_counter() - started, log)


def _end_session(process: subprocess.Popen) -> None:
    _signal_session(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=KILL_GRACE_S)
    # Whatever the leader started may outlive it in its session.
    _signal_session(process.pid, signal.SIGKILL)
    process.wait()


def _signal_session(session: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # every process of it has already exited
        os.killpg(session, sig)
