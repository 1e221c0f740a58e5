"""LoRA on every family: only the adapter trains; a saved adapter or merged model reloads with
the same logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from aligner.tiny import FAMILIES
from aligner.training.lora import (
    DEFAULT_TARGET_MODULES,
    LoraSettings,
    add_lora,
    merge_lora_state,
)

FUSED_PROJECTIONS = {
    "phi3": {"qkv_proj", "gate_up_proj"},
    "gpt_neox": {"query_key_value", "dense_h_to_4h"},
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def family_dir(family: str, tiny_model) -> Path:
    """Each family's tiny model in turn."""
    return tiny_model(family)


@pytest.fixture(scope="module")
def lora_model(family_dir: Path):
    """The family's model with its default LoRA targets, the adapter given random weights."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_pretrained(family_dir, dtype=torch.float32)
    model = add_lora(lm, LoraSettings(r=4, alpha=8, dropout=0.0))
    # A fresh adapter is a no-op (B = 0); give it weights so that merging has an effect.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05)
    return model.eval()


def test_only_the_adapter_is_trainable(lora_model) -> None:
    trainable = [name for name, p in lora_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert not any("lm_head" in name for name in trainable)


def _adapted(model) -> set[str]:
    return {name for name, module in model.named_modules() if hasattr(module, "lora_A")}


def test_default_targets_are_every_projection_of_the_blocks(
    lora_model, family: str, family_dir: Path
) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    targets = set(lora_model.peft_config["default"].target_modules)
    assert targets == set(DEFAULT_TARGET_MODULES[FAMILIES[family].model_type])
    assert FUSED_PROJECTIONS.get(family, set()) <= targets
    # The family's named list adapts exactly the layers peft's all-linear finds.
    lm = AutoModelForCausalLM.from_pretrained(family_dir)
    all_linear = get_peft_model(lm, LoraConfig(r=2, target_modules="all-linear"))
    assert _adapted(lora_model) == _adapted(all_linear)
    assert not any("embed" in name or "lm_head" in name for name in _adapted(lora_model))


def test_unknown_target_is_refused_in_one_line_before_loading(lora_model, family_dir: Path) -> None:
    from aligner.config import ArgumentError, TrainConfig
    from aligner.training.model import plan_model

    real = sorted(lora_model.peft_config["default"].target_modules)[0]
    flags = ["--lora_r", "4", "--lora_target_modules", "q_projj", real]
    paths = ["--train_datasets", "d.jsonl", "--output_dir", "o"]
    args = TrainConfig.parse(["--model_name_or_path", str(family_dir), *paths, *flags])
    with pytest.raises(
        ArgumentError, match=r"^--lora_target_modules: no module of \w+ is named q_projj$"
    ):
        plan_model(args, tokenizer_size=1000)


def test_unknown_target_module_is_a_one_line_error(tiny_llama_dir) -> None:
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    with pytest.raises(ValueError, match="--lora_target_modules no_such_proj"):
        add_lora(lm, LoraSettings(r=2, alpha=4, dropout=0.0, target_modules=("no_such_proj",)))


def test_merged_state_equals_peft_merge(lora_model) -> None:
    import copy

    merged = merge_lora_state(lora_model.state_dict(), lora_model.peft_config["default"])
    reference = copy.deepcopy(lora_model).merge_and_unload().state_dict()
    assert merged.keys() == reference.keys()
    for key, value in reference.items():
        torch.testing.assert_close(merged[key], value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("merge", [False, True])
def test_saved_adapter_or_merged_model_reloads_with_the_same_logits(
    lora_model, family: str, family_dir: Path, tiny_tokenizer, tmp_path: Path, merge: bool
) -> None:
    from transformers import AutoModelForCausalLM

    from aligner.prompts import get_template
    from aligner.training.export import save_model

    out = save_model(
        lora_model,
        tmp_path / "saved",
        tokenizer=tiny_tokenizer(family),
        template=get_template(),
        training_args={},
        fp32_master=True,
        rank=0,
        merge_adapter=merge,
    )
    files = {path.name for path in out.iterdir()}
    if merge:
        assert "config.json" in files and "adapter_config.json" not in files
    else:
        assert {"adapter_config.json", "adapter_model.safetensors"} <= files
        assert "model.safetensors" not in files
        base = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
        assert base == str(family_dir)
    ids = torch.tensor([[1, 20, 30, 40, 50, 60]])
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    base_model = AutoModelForCausalLM.from_pretrained(family_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = lora_model(input_ids=ids).logits
        torch.testing.assert_close(reloaded(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(base_model(input_ids=ids).logits, expected, atol=1e-3)
