"""Metric tracking on rank 0: metrics.jsonl always, wandb or tensorboard, and the loss curve."""

from __future__ import annotations

import json
import netrc
import os
import ssl
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from aligner.errors import UserError
from aligner.files import write_atomically

METRICS_FILE = "metrics.jsonl"
LOSS_CURVE_FILE = "loss_curve.png"
WANDB_DEFAULT_URL = "https://api.wandb.ai"
REACH_TIMEOUT_S = 10.0
"""How long the W&B server may take to answer before the run is refused."""


class TrackerError(UserError):
    """A tracker the run cannot log to, found before any work; one line."""


_TRAIN_NAMES = {"lr": "train/lr", "epoch": "train/epoch"}


def tracker_name(key: str) -> str:
    """The wandb / tensorboard name of a metric: the original toolkit's ``train/loss``,
    ``train/lr``, ``train/epoch`` and ``eval/...``, and every other per-step value under
    ``train/`` (``train_loss`` in metrics.jsonl is ``train/loss`` there)."""
    if key in _TRAIN_NAMES:
        return _TRAIN_NAMES[key]
    for phase in ("train", "eval"):
        if key.startswith(f"{phase}_"):
            return f"{phase}/{key[len(phase) + 1 :]}"
    return f"train/{key}"


def wandb_has_credentials() -> bool:
    """Whether wandb could log in without asking: an API key in the environment or in netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", WANDB_DEFAULT_URL)).hostname or ""
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_logs_online() -> bool:
    """Whether ``--log_type wandb`` would log to a server (else offline, without asking)."""
    mode = os.environ.get("WANDB_MODE")
    if mode is not None:
        return mode == "online"
    return wandb_has_credentials()


def _unreachable(url: str, timeout: float) -> str | None:
    """Why nothing answers at ``url`` within ``timeout`` seconds, or None when something does.

    Any HTTP answer, even an error status or a certificate wandb may accept, means a server is
    there. The request honours the proxy variables, as wandb does; it runs in a thread because
    name resolution ignores the timeout.
    """
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            urllib.request.urlopen(url, timeout=timeout).close()
            outcome.append(None)
        except urllib.error.HTTPError:
            outcome.append(None)
        except urllib.error.URLError as error:
            reason = error.reason
            answered = isinstance(reason, ssl.SSLError)
            outcome.append(None if answered else getattr(reason, "strerror", None) or str(reason))
        except OSError as error:  # a timeout while reading, a reset connection
            outcome.append(error.strerror or str(error) or type(error).__name__)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 5)
    return outcome[0] if outcome else f"no answer in {timeout:.0f} s"


def check_tracker_reachable(log_type: str, timeout: float = REACH_TIMEOUT_S) -> None:
    """Refuse ``--log_type wandb`` when it would log online and the server cannot be reached.

    Without this, wandb retries for minutes; the run would then stop having already marked its
    output folder, and the same command could not be run again.
    """
    if log_type != "wandb" or not wandb_logs_online():
        return
    url = os.environ.get("WANDB_BASE_URL", WANDB_DEFAULT_URL)
    problem = _unreachable(url, timeout)
    if problem is not None:
        raise TrackerError(
            f"cannot reach W&B at {url} ({problem}): use --log_type none or WANDB_MODE=offline"
        )


class Tracker:
    """Writes every logged row to ``metrics.jsonl`` and to the chosen tracker."""

    def __init__(
        self,
        output_dir: str | Path,
        *,
        log_type: str,
        log_dir: str | Path | None,
        project: str,
        run_name: str,
        config: dict[str, Any],
        resume_step: int | None = None,
        run_id: str | None = None,
    ) -> None:
        """``resume_step`` continues a run stopped after that step: later rows (logged after
        its last checkpoint) are dropped, and wandb continues the run ``run_id``."""
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.output_dir / METRICS_FILE
        if resume_step is not None and self.metrics_path.is_file():
            kept = [row for row in read_metrics(self.metrics_path) if row["step"] <= resume_step]
            write_atomically(self.metrics_path, "".join(json.dumps(row) + "\n" for row in kept))
        append = resume_step is not None
        self._metrics = self.metrics_path.open("a" if append else "w", encoding="utf-8")
        self._tensorboard = None
        self._wandb_run = None
        log_dir = Path(log_dir or self.output_dir)
        if log_type == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(
                log_dir=str(log_dir / "tensorboard" / run_name),
                # Events of steps after the checkpoint resumed from are replaced, not doubled.
                purge_step=None if resume_step is None else resume_step + 1,
            )
        elif log_type == "wandb":
            import wandb

            # Never wait for a login: without credentials the run is recorded offline.
            mode = os.environ.get("WANDB_MODE")
            if mode is None and not wandb_has_credentials():
                mode = "offline"
                print(
                    "wandb: no API key found, logging offline to "
                    f"{log_dir / 'wandb'} (upload later with `wandb sync`)",
                    flush=True,
                )
            self._wandb_run = wandb.init(
                project=project,
                name=run_name,
                dir=str(log_dir),
                config=config,
                mode=mode,
                id=run_id,
                resume="allow" if run_id else None,
                settings=wandb.Settings(console="off", silent=True),
            )

    @property
    def run_id(self) -> str | None:
        """The wandb run's id (kept in checkpoints so that a resumed run continues it)."""
        return self._wandb_run.id if self._wandb_run is not None else None

    def log(self, row: dict[str, Any], step: int) -> None:
        row = {"step": step, "time": round(time.time(), 3), **row}
        self._metrics.write(json.dumps(row) + "\n")
        self._metrics.flush()
        scalars = {
            tracker_name(k): v
            for k, v in row.items()
            if k not in ("step", "time") and _is_number(v)
        }
        if self._tensorboard is not None:
            for key, value in scalars.items():
                self._tensorboard.add_scalar(key, value, step)
        if self._wandb_run is not None:
            self._wandb_run.log(scalars, step=step)

    def close(self) -> None:
        self._metrics.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb_run is not None:
            self._wandb_run.finish()
        plot_loss_curve(self.metrics_path, self.output_dir / LOSS_CURVE_FILE)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def plot_loss_curve(metrics_path: str | Path, image_path: str | Path) -> Path | None:
    """Training (and evaluation, where logged) loss against the optimizer step."""
    rows = read_metrics(metrics_path)
    train = [(r["step"], r["train_loss"]) for r in rows if "train_loss" in r]
    evaluation = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    if not train and not evaluation:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4), dpi=120)
    if train:
        axes.plot(*zip(*train, strict=True), label="train loss", linewidth=1)
    if evaluation:
        axes.plot(*zip(*evaluation, strict=True), "o-", label="eval loss")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss per target token")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(image_path)
    plt.close(figure)
    return Path(image_path)
