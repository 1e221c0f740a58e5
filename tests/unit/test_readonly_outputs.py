"""A read-only output folder is refused in one line before any work, by every command that writes.

Root may write anywhere the permission bits forbid, so the folder is a real read-only mount: a
tmpfs mounted read-only in a private mount namespace (``unshare``), which ends with the process.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TEMPLATE_DATASET

PROBE = """
import contextlib, io, json, sys
from pathlib import Path
from aligner.commands.data import main as data_main
from aligner.commands import correct as correct_cmd
from aligner.inference import correcting as correct
from aligner.training.checkpoints import check_output_dir

readonly, checkpoint, data = map(Path, sys.argv[1:4])

def boom(*args, **kwargs):
    raise AssertionError("the model was loaded")

correct.load_model = boom  # the refusal must come first
results = {}
try:
    check_output_dir(readonly / "run", resume=None, overwrite=False)
except ValueError as error:  # what aligner train prints after "error: "
    results["train"] = str(error)
for name, command, argv in [
    ("correct", correct_cmd.main, ["--model_name_or_path", str(checkpoint), "--input", str(data),
                               "--output", str(readonly / "out.jsonl")]),
    ("data", data_main, ["--model_name_or_path", str(checkpoint), "--train_datasets", str(data),
                         "--dump", str(readonly / "samples.jsonl")]),
]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = command(argv)
    results[name] = [code, err.getvalue().strip()]
print("RESULTS " + json.dumps(results))
"""


def test_a_read_only_output_folder_is_refused_before_any_work(
    tiny_checkpoint_dir: Path, tmp_path: Path
) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux) for a private read-only mount")
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    answers = tmp_path / "answers.json"
    answers.write_bytes(TEMPLATE_DATASET.read_bytes())
    mount = 'mount -t tmpfs -o ro,size=1m tmpfs "$1" && shift && exec "$@"'
    in_namespace = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", mount, "sh"]
    trial = subprocess.run([*in_namespace, str(readonly), "true"], capture_output=True, text=True)
    if trial.returncode != 0:
        pytest.skip(f"no private read-only mount here: {trial.stderr.strip()}")
    command = [*in_namespace, str(readonly), sys.executable, "-c", PROBE, str(readonly)]
    command += [str(tiny_checkpoint_dir), str(answers)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULTS ")]
    assert lines, result.stderr[-3000:]
    (line,) = lines
    results = json.loads(line.removeprefix("RESULTS "))
    reason = "Read-only file system"
    assert results["train"] == (
        f"--output_dir {readonly / 'run'}: cannot write in {readonly} ({reason})"
    )
    assert results["correct"] == [
        2,
        f"aligner correct: error: --output {readonly / 'out.jsonl'}: cannot write in "
        f"{readonly} ({reason})",
    ]
    assert results["data"] == [
        2,
        f"aligner data: error: --dump {readonly / 'samples.jsonl'}: cannot write in "
        f"{readonly} ({reason})",
    ]
