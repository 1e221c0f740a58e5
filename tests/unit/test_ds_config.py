"""The pure DeepSpeed config builder: stages, offload, precision, batch sizes, overrides."""

from __future__ import annotations

import pytest

from aligner.training.ds_config import get_deepspeed_train_config


def build(**kwargs):
    options = {"micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 8, "world_size": 2}
    return get_deepspeed_train_config(**(options | kwargs))


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_stage_is_set_and_batch_sizes_multiply(stage: int) -> None:
    config = build(stage=stage)
    assert config["zero_optimization"]["stage"] == stage
    assert config["train_micro_batch_size_per_gpu"] == 4
    assert config["gradient_accumulation_steps"] == 8
    assert config["train_batch_size"] == 4 * 8 * 2


def test_zero3_gathers_weights_for_saving() -> None:
    assert build(stage=3)["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"]
    assert "stage3_gather_16bit_weights_on_model_save" not in build(stage=2)["zero_optimization"]


@pytest.mark.parametrize(
    ("offload", "optimizer", "parameters"),
    [
        ("none", False, False),
        ("optimizer", True, False),
        ("parameter", False, True),
        ("all", True, True),
    ],
)
def test_offload_targets(offload: str, optimizer: bool, parameters: bool) -> None:
    zero = build(stage=3, offload=offload)["zero_optimization"]
    assert ("offload_optimizer" in zero) is optimizer
    assert ("offload_param" in zero) is parameters
    if optimizer:
        assert zero["offload_optimizer"]["device"] == "cpu"


@pytest.mark.parametrize(("stage", "offload"), [(2, "parameter"), (1, "all"), (0, "optimizer")])
def test_impossible_offload_is_refused(stage: int, offload: str) -> None:
    with pytest.raises(ValueError, match="--offload"):
        build(stage=stage, offload=offload)


@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
def test_precision_enables_exactly_one_mode(precision: str) -> None:
    config = build(precision=precision)
    assert config["bf16"]["enabled"] is (precision == "bf16")
    assert config["fp16"]["enabled"] is (precision == "fp16")


def test_gradient_clipping_is_explicit() -> None:
    assert build(max_grad_norm=0.5)["gradient_clipping"] == 0.5


def test_cpu_accelerator_allows_torch_adamw_with_offload() -> None:
    assert build(on_cpu=True)["zero_force_ds_cpu_optimizer"] is False
    assert "zero_force_ds_cpu_optimizer" not in build(on_cpu=False)


def test_overrides_merge_key_by_key() -> None:
    config = build(stage=3, overrides={"zero_optimization": {"overlap_comm": False}, "x": 1})
    assert config["zero_optimization"]["overlap_comm"] is False
    assert config["zero_optimization"]["stage"] == 3
    assert config["x"] == 1


@pytest.mark.parametrize(
    "bad", [{"stage": 4}, {"offload": "disk"}, {"precision": "fp8"}, {"world_size": 0}]
)
def test_bad_values_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        build(**bad)


def test_same_inputs_give_equal_configs() -> None:
    assert build(stage=2, offload="optimizer") == build(stage=2, offload="optimizer")
