"""The model builder: kernel flags refused where they cannot run; the fused loss's wiring."""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F

from aligner.config import ArgumentError, TrainConfig
from aligner.training.model import check_model_flags

REQUIRED = ["--model_name_or_path", "m", "--train_datasets", "d.jsonl", "--output_dir", "o"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--attn_implementation", "flash_attention_2"], "flash_attention_2 needs a CUDA GPU"),
        (["--use_liger"], "--use_liger needs a CUDA GPU"),
        (["--lora_r", "4", "--load_in_4bit", "--zero_stage", "2"], "--load_in_4bit needs a CUDA"),
    ],
)
def test_gpu_only_flags_are_refused_on_the_cpu(flags: list[str], message: str) -> None:
    with pytest.raises(ArgumentError, match=message):
        check_model_flags(TrainConfig.parse([*REQUIRED, *flags]), on_cpu=True)


def test_missing_package_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    args = TrainConfig.parse([*REQUIRED, "--use_liger"])
    with pytest.raises(ArgumentError, match="needs the liger_kernel package"):
        check_model_flags(args, on_cpu=False)


class _ReferenceFusedLoss(torch.nn.Module):
    """Stands in for Liger's kernel with its call signature: (weight, input, target)."""

    def __init__(self, reduction: str) -> None:
        super().__init__()
        self.reduction = reduction

    def forward(self, weight, hidden, target):
        return F.cross_entropy(hidden @ weight.T, target, reduction=self.reduction)


def test_fused_loss_gives_the_plain_loss(tiny_llama_dir, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoModelForCausalLM

    from aligner.constants import IGNORE_INDEX
    from aligner.loss import CorrectionLM

    fake = types.ModuleType("liger_kernel.transformers")
    fake.LigerFusedLinearCrossEntropyLoss = _ReferenceFusedLoss
    monkeypatch.setitem(sys.modules, "liger_kernel", types.ModuleType("liger_kernel"))
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", fake)
    lm = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    ids = torch.randint(3, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :5] = IGNORE_INDEX
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    with torch.no_grad():
        fused = CorrectionLM(lm, use_liger=True)(**batch)
        plain = CorrectionLM(lm)(**batch)
    torch.testing.assert_close(fused.loss_sum, plain.loss_sum, rtol=1e-5, atol=1e-5)
    assert fused.correct == plain.correct and fused.tokens == plain.tokens == 14


def test_liger_not_installed_is_a_clear_error(
    tiny_llama_dir, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoModelForCausalLM

    from aligner.loss import CorrectionLM

    monkeypatch.setitem(sys.modules, "liger_kernel", None)
    lm = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    with pytest.raises(ImportError, match="--use_liger needs the liger-kernel package"):
        CorrectionLM(lm, use_liger=True)
