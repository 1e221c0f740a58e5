"""Full training checkpoints for exact resume: DeepSpeed's engine state plus what it does not keep,
committed by a marker once every rank has written; finding, rotating and loading them; and the
guard that keeps a run out of an output folder that is not its own.

Layout: ``OUTPUT/checkpoints/step-N/`` holds DeepSpeed's files (tag ``step-N``), one
``trainer_state_rankR.pt`` per rank (RNG states, plain tensors) and, last, ``COMPLETE.json``
(step, skipped steps, tracker run, and the settings the data order depends on). A folder without
the marker is an interrupted save and is never resumed from.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from aligner.errors import RunFailure, UserError, one_line
from aligner.files import WRITE_PROBE_PREFIX, atomic_writer, check_writable, write_atomically
from aligner.secrets import redact

CHECKPOINTS_DIR = "checkpoints"
MARKER_FILE = "COMPLETE.json"
RUN_FILE = "aligner_run.json"
"""Written at the start of every run: marks the output folder as one of ours."""
LAUNCHER_ENTRIES = re.compile(r"(stdout|stderr)(\.node\d+)?\.log|model")
"""What scripts/sft-correction.sh writes before training starts: its logs (one pair per node)
and the demo's model."""
COMPLETE_MODEL_MARKERS = ("config.json", "adapter_config.json")
"""What a saved model (or LoRA adapter) folder holds once it is complete."""
FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"step-(\d+)")
# Every file a checkpoint folder of ours can hold: ours, DeepSpeed's, and temporary files.
_CHECKPOINT_FILES = re.compile(
    r"COMPLETE\.json|trainer_state_rank\d+\.pt|.*\.tmp|.*_model_states\.pt|.*_optim_states\.pt"
    r"|zero_to_fp32\.py"
)


class ResumeError(UserError):
    """A checkpoint that cannot be resumed from, or an output folder that is not ours; one line."""


class WriteError(RunFailure):
    """A checkpoint or model some rank could not write (a full disk, say); raised on every rank
    alike, so that none is left waiting for the others."""


@dataclass(frozen=True)
class TrainState:
    """What the trainer needs besides the engine to continue exactly where it stopped."""

    step: int
    skipped_steps: int = 0
    consecutive_skips: int = 0
    phase: str = ""
    epoch: float = 0.0
    run_name: str = ""
    tracker_run_id: str | None = None


def data_fingerprint(phases: Sequence[tuple[str, Sequence[int]]]) -> str:
    """A hash of each training phase's name and sample lengths: changed data changes it."""
    digest = hashlib.sha256()
    for name, lengths in phases:
        digest.update(name.encode() + b"\0")
        digest.update(np.asarray(lengths, dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]


# ---- RNG states ----------------------------------------------------------------------------------


def capture_rng() -> dict[str, Any]:
    """This process's Python, NumPy and torch RNG states as plain tensors and numbers, so that
    they load with ``torch.load(weights_only=True)``."""
    version, python_state, gauss = random.getstate()
    _, keys, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(python_state), "gauss": gauss},
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss"]))
    numpy = state["numpy"]
    keys = numpy["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, numpy["position"], numpy["has_gauss"], numpy["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- finding checkpoints -------------------------------------------------------------------------


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The commit marker of a checkpoint folder, or None when the save never completed."""
    try:
        marker = json.loads((folder / MARKER_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return marker if isinstance(marker, dict) and marker.get("format") == FORMAT_VERSION else None


def _step_folders(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _STEP_DIR.fullmatch(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found)


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """The committed checkpoints under ``output_dir``, oldest first."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    return [path for _, path in _step_folders(root) if read_marker(path) is not None]


def what_is_kept(output_dir: str | Path) -> str:
    """What a run that stopped leaves to resume from, for the line that reports the stop."""
    complete = complete_checkpoints(output_dir)
    if not complete:
        return "there is no complete checkpoint to resume from"
    return f"the last complete checkpoint ({complete[-1]}) is kept"


def find_checkpoint(output_dir: str | Path, spec: str | None) -> Path | None:
    """The checkpoint ``--resume_from_checkpoint spec`` names: ``auto`` is the newest complete one
    under ``output_dir`` (None when there is none); a path must be a complete checkpoint."""
    if spec is None:
        return None
    if spec == "auto":
        complete = complete_checkpoints(output_dir)
        return complete[-1] if complete else None
    folder = Path(spec)
    if read_marker(folder) is None:
        raise ResumeError(
            f"--resume_from_checkpoint {spec}: not a complete checkpoint (no {MARKER_FILE}; "
            "an interrupted save is never resumed from)"
        )
    return folder


def _is_ours(folder: Path) -> bool:
    """Whether every file in a checkpoint folder is one that a save of ours writes."""
    return all(
        entry.is_file() and _CHECKPOINT_FILES.fullmatch(entry.name) for entry in folder.iterdir()
    )


def _remove(folder: Path) -> None:
    # The marker goes first: a crash halfway leaves an incomplete folder, never a false one.
    (folder / MARKER_FILE).unlink(missing_ok=True)
    shutil.rmtree(folder)


# ---- the output folder ---------------------------------------------------------------------------


def check_output_dir(
    output_dir: str | Path,
    *,
    resume: str | None,
    overwrite: bool,
    model_name_or_path: str | None = None,
) -> None:
    """Refuse an output folder whose files a run could destroy, before any work.

    Refused: the base model's own folder (always); a non-empty folder that is not a run of ours
    (no ``aligner_run.json``), unless ``overwrite``; a run of ours without ``resume`` or
    ``overwrite``, so that a finished run is never replaced by accident; and ``resume`` auto in a
    run that saved a model but has no complete checkpoint, which would start over on top of it.
    A folder that cannot be written is refused too.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ResumeError(f"--output_dir {output_dir}: not a folder")
    if model_name_or_path and Path(model_name_or_path).resolve() == output_dir.resolve():
        raise ResumeError(
            f"--output_dir {output_dir} is the base model's folder (--model_name_or_path): "
            "training would overwrite the model it starts from; choose another folder"
        )
    check_writable(output_dir, "--output_dir", folder=True)
    if overwrite or not output_dir.exists():
        return
    entries = [
        entry
        for entry in output_dir.iterdir()
        if not (LAUNCHER_ENTRIES.fullmatch(entry.name) or entry.name.startswith(WRITE_PROBE_PREFIX))
    ]
    if not entries:
        return
    if not (output_dir / RUN_FILE).is_file():
        raise ResumeError(
            f"--output_dir {output_dir} is not empty and holds no aligner run: choose an empty "
            "folder, or pass --overwrite to write into it"
        )
    if resume is None:
        raise ResumeError(
            f"--output_dir {output_dir} holds an earlier run: pass --resume_from_checkpoint auto "
            "to continue it, or --overwrite to start over"
        )
    saved = _saved_models(output_dir)
    if resume == "auto" and saved and not complete_checkpoints(output_dir):
        raise ResumeError(
            f"--output_dir {output_dir} holds a saved model ({saved[0]}) and no complete "
            "checkpoint to resume from: --resume_from_checkpoint auto would start over on top "
            "of it; pass --overwrite to start over, or choose another folder"
        )


def _saved_models(output_dir: Path) -> list[str]:
    """The complete model folders a run saved: the final model and ``checkpoint-N/`` ones."""
    folders = [output_dir, *sorted(output_dir.glob("checkpoint-*"))]
    return [
        str(folder)
        for folder in folders
        if folder.is_dir() and any((folder / name).is_file() for name in COMPLETE_MODEL_MARKERS)
    ]


def write_run_file(output_dir: str | Path, run_name: str) -> None:
    """Mark ``output_dir`` as a run of ours (rank 0, at the start of training)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    record = {"format": FORMAT_VERSION, "run_name": redact(run_name)}
    write_atomically(output_dir / RUN_FILE, (json.dumps(record, indent=2) + "\n").encode())


# ---- saving and loading --------------------------------------------------------------------------


FULL_DISK_BYTES = 1 << 20
"""Less free space than this after a failed write means the disk is full."""


def _failure_code(error: BaseException, folder: Path) -> int:
    """The errno of a failed checkpoint write; -1 when it is not known.

    ``torch.save`` reports a full disk as an opaque RuntimeError ("unexpected pos", "file write
    failed"), so a write that failed where the disk has no space left is counted as ENOSPC.
    """
    if isinstance(error, OSError) and error.errno:
        return error.errno
    try:
        if shutil.disk_usage(folder if folder.exists() else folder.parent).free < FULL_DISK_BYTES:
            return errno.ENOSPC
    except OSError:
        pass
    return -1


def write_failure(error: BaseException, folder: Path) -> str:
    """Why writing into ``folder`` failed, in a few words ("no space left on device")."""
    code = _failure_code(error, folder)
    return os.strerror(code).lower() if code > 0 else one_line(error)


class CheckpointManager:
    """Saves, commits, rotates and loads the full checkpoints of one run.

    ``plan`` holds the settings the data order and the saved partitions depend on (world size,
    seed, batch sizes, data fingerprint...); a checkpoint saved under another plan is refused.
    Every rank reads what rank 0 writes, so the output folder must be on a file system that all
    nodes share (as DeepSpeed's own checkpoints require).
    """

    def __init__(
        self,
        output_dir: str | Path,
        *,
        rank: int,
        device: torch.device,
        keep: int,
        plan: dict[str, Any],
    ) -> None:
        if keep < 1:
            raise ValueError("a run keeps at least one checkpoint")
        self.root = Path(output_dir) / CHECKPOINTS_DIR
        self.rank = rank
        self.device = device
        self.keep = keep
        self.plan = plan

    def folder(self, step: int) -> Path:
        return self.root / f"step-{step}"

    def clear(self) -> None:
        """Remove the checkpoints of an earlier run in this folder (a fresh start). Collective."""
        if self.rank == 0:
            for _, folder in _step_folders(self.root):
                if _is_ours(folder):
                    _remove(folder)
        dist.barrier()

    def save(
        self,
        engine: Any,
        state: TrainState,
        *,
        after_write: Callable[[int], object] | None = None,
    ) -> Path:
        """Write a checkpoint of ``engine`` and ``state`` and commit it. Collective.

        A rank that cannot write its files (a full disk) does not leave the others waiting: the
        ranks agree on the failure, the incomplete folder is removed, and every rank raises
        :class:`WriteError`. ``after_write`` (a test hook, where a crash during the save is
        injected) is called with the step once this rank's files are written, before the commit.
        """
        folder = self.folder(state.step)
        if self.rank == 0 and folder.exists() and _is_ours(folder):
            # A stale save of this step (an interrupted one, or one from before a resume).
            _remove(folder)
        dist.barrier()
        failure = self._write(engine, folder, state.step)
        if after_write is not None:
            after_write(state.step)
        # Every rank's files are in place before any node calls the checkpoint complete.
        self._agree(failure, folder)
        if self.rank == 0:
            marker = {"format": FORMAT_VERSION, "plan": self.plan, **asdict(state)}
            try:
                write_atomically(folder / MARKER_FILE, json.dumps(redact(marker), indent=2))
                self._rotate()
            except OSError as error:
                failure = _failure_code(error, folder)
        self._agree(failure, folder)
        return folder

    def _write(self, engine: Any, folder: Path, step: int) -> int:
        """Write this rank's files of a checkpoint; the errno that stopped it, or 0."""
        try:
            engine.save_checkpoint(str(self.root), tag=folder.name, save_latest=False)
        except (OSError, RuntimeError) as error:  # torch.save's write errors are RuntimeErrors
            code = _failure_code(error, folder)
            # The other ranks wait in the barrier that ends DeepSpeed's save; meet them there.
            dist.barrier()
            return code
        rank_state = {"format": FORMAT_VERSION, "step": step, "rng": capture_rng()}
        try:
            with atomic_writer(folder / f"trainer_state_rank{self.rank}.pt", "wb") as handle:
                torch.save(rank_state, handle)
        except (OSError, RuntimeError) as error:
            return _failure_code(error, folder)
        return 0

    def _agree(self, failure: int, folder: Path) -> None:
        """All ranks learn which of them failed to write ``folder`` (``failure``: this rank's
        errno, or 0), and all stop alike."""
        errors = torch.zeros(dist.get_world_size(), dtype=torch.int64, device=self.device)
        errors[dist.get_rank()] = failure
        dist.all_reduce(errors)
        failed = [(rank, int(code)) for rank, code in enumerate(errors.tolist()) if code]
        if not failed:
            return
        if self.rank == 0 and folder.exists() and _is_ours(folder):
            _remove(folder)  # an incomplete checkpoint only takes space, and is never resumed
        rank, code = failed[0]
        reason = os.strerror(code).lower() if code > 0 else "write failed"
        raise WriteError(
            f"{reason}: cannot write checkpoint {folder} (rank {rank}); it was removed, and "
            f"{what_is_kept(self.root.parent)}"
        )

    def _rotate(self) -> None:
        """Keep the newest ``keep`` complete checkpoints; drop interrupted saves older than the
        newest complete one. Never touches a folder holding anything a save does not write."""
        folders = _step_folders(self.root)
        complete = [step for step, path in folders if read_marker(path) is not None]
        if not complete:
            return
        kept = set(complete[-self.keep :])
        for step, path in folders:
            if step in kept or step > complete[-1] or not _is_ours(path):
                continue
            _remove(path)

    def find(self, spec: str | None) -> Path | None:
        """:func:`find_checkpoint` on every rank, checking that all ranks found the same step
        (nodes may see different folders). Collective."""
        folder = find_checkpoint(self.root.parent, spec)
        marker = read_marker(folder) if folder is not None else None
        step = marker["step"] if marker is not None else -1
        steps = torch.tensor([step, -step], dtype=torch.float64, device=self.device)
        dist.all_reduce(steps, op=dist.ReduceOp.MAX)
        low, high = int(-steps[1].item()), int(steps[0].item())
        if low != high:
            raise ResumeError(
                f"ranks found different checkpoints to resume from (steps {low} to {high}; -1 is "
                "none); pass one with --resume_from_checkpoint PATH"
            )
        return folder

    def load(self, engine: Any, folder: Path) -> TrainState:
        """Restore ``engine`` and this rank's RNG from a complete checkpoint. Collective."""
        marker = read_marker(folder)
        if marker is None:
            raise ResumeError(f"{folder}: not a complete checkpoint")
        differences = [
            f"{key} was {marker['plan'].get(key)!r}, now {value!r}"
            for key, value in self.plan.items()
            if marker["plan"].get(key) != value
        ]
        if differences:
            raise ResumeError(
                f"cannot resume from {folder}: {'; '.join(differences)} (resume with the "
                "settings it was saved with, or start over with --overwrite)"
            )
        rank_file = folder / f"trainer_state_rank{self.rank}.pt"
        try:
            rank_state = torch.load(rank_file, weights_only=True)
        except OSError as error:
            raise ResumeError(f"cannot resume from {folder}: {error}") from None
        load_path, _ = engine.load_checkpoint(
            str(folder.parent),
            tag=folder.name,
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
        )
        if load_path is None:
            raise ResumeError(f"cannot resume from {folder}: DeepSpeed loaded nothing")
        restore_rng(rank_state["rng"])
        fields = TrainState.__dataclass_fields__
        return TrainState(**{key: marker[key] for key in fields if key in marker})
