"""The original toolkit's user path: its README's command pasted as is, and its dataset classes
(written the original way) with its empathy aligner, on 2 CPU ranks through the real script."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from tests.conftest import TEMPLATE_DATASET
from tests.integration.conftest import SCRIPT, clean_env, run_command

pytestmark = pytest.mark.integration

ORIGINAL_STYLE = """
import json

from aligner.datasets import RawDataset, RawSample


class KindDataset(RawDataset):
    NAME = "kind-json"

    def __init__(self, path):
        with open(path, encoding="utf-8") as f:
            self.data = json.load(f)

    def __getitem__(self, index):
        data = self.data[index]
        return RawSample(input="Reply kindly: " + data["question"], answer=data["correction"])

    def __len__(self):
        return len(self.data)
"""


def safetensors_dtypes(path: Path) -> set[str]:
    """The dtypes a safetensors file holds, read from its header."""
    with path.open("rb") as handle:
        (size,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(size))
    return {entry["dtype"] for name, entry in header.items() if name != "__metadata__"}


@pytest.mark.timeout(600)
def test_the_original_readme_command_as_pasted(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """bash scripts/sft-correction.sh --train_datasets <file> --model_name_or_path <model>
    --output_dir output/sft: the original script's settings, a wandb run of project Aligner-SFT
    (offline: no key here) and a 16-bit model, with nothing else given."""
    output_dir = tmp_path / "output" / "sft"
    command = ["bash", str(SCRIPT), "--train_datasets", str(TEMPLATE_DATASET)]
    command += ["--model_name_or_path", str(tiny_llama_dir), "--output_dir", str(output_dir)]
    run = run_command(command, clean_env(tmp_path), output_dir, timeout=540)
    assert run.returncode == 0, run.output[-4000:]
    assert "wandb: no API key found, logging offline" in run.output
    (wandb_run,) = (output_dir / "wandb").glob("offline-run-*/run-*.wandb")
    assert b"Aligner-SFT" in wandb_run.read_bytes()
    assert safetensors_dtypes(output_dir / "model.safetensors") == {"BF16"}
    saved = json.loads((output_dir / "training_args.json").read_text())
    assert (saved["epochs"], saved["gradient_accumulation_steps"], saved["zero_stage"]) == (3, 8, 3)
    assert saved["log_project"] == "Aligner-SFT" and saved["lr"] == 2e-5


@pytest.mark.timeout(600)
def test_an_original_dataset_class_and_the_empathy_aligner_train(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    module = tmp_path / "kind_datasets.py"
    module.write_text(ORIGINAL_STYLE)
    records = json.loads(TEMPLATE_DATASET.read_text())
    data = tmp_path / "train.json"
    data.write_text(json.dumps(records[:8]))
    output_dir = tmp_path / "run"
    command = ["bash", str(SCRIPT), "--num_gpus", "2", "--dataset_module", str(module)]
    command += ["--train_datasets", f"kind-json::{data}", f"empathy-json::{data}"]
    command += ["--model_name_or_path", str(tiny_llama_dir), "--output_dir", str(output_dir)]
    command += ["--max_steps", "2", "--per_device_train_batch_size", "4"]
    command += ["--gradient_accumulation_steps", "1", "--max_length", "256", "--log_type", "none"]
    run = run_command(command, clean_env(tmp_path), output_dir, timeout=540)
    assert run.returncode == 0, run.output[-4000:]
    assert "data: 16 training samples" in run.output
    assert len(run.losses()) == 2
    assert (output_dir / "model.safetensors").is_file()
