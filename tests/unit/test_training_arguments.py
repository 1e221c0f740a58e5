"""Training flags: original names and aliases, boolean values, validation, what gets saved."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from aligner.commands import train as train_command
from aligner.config import FLOAT_RANGES, ArgumentError, TrainConfig, saved_values

REQUIRED = ["--model_name_or_path", "m", "--train_datasets", "d.jsonl", "--output_dir", "o"]


def parse(*flags: str):
    return TrainConfig.parse([*REQUIRED, *flags])


def test_defaults_are_the_original_toolkit_ones() -> None:
    args = parse()
    assert (
        args.optim.epochs,
        args.optim.lr,
        args.optim.lr_scheduler_type,
        args.optim.lr_warmup_ratio,
    ) == (
        3,
        2e-5,
        "cosine",
        0.03,
    )
    assert (args.layout.per_device_train_batch_size, args.layout.gradient_accumulation_steps) == (
        4,
        8,
    )
    assert (args.dist.zero_stage, args.dist.offload, args.data.seed, args.data.max_length) == (
        3,
        "none",
        42,
        2048,
    )
    assert args.optim.gradient_checkpointing is True and args.optim.weight_decay == 0.0
    assert args.model.trust_remote_code is False
    assert args.precision.bf16 is None  # bf16 where the accelerator supports it
    assert args.model.attn_implementation is None  # transformers picks the family's kernel
    assert args.lora.lora_target_modules is None  # the family's projections
    assert args.model.resize_embeddings is False


@pytest.mark.parametrize(
    ("flags", "save_fp32"),
    [
        ([], False),  # the training precision, as the original toolkit and HF Trainer save
        (["--save_16bit"], False),
        (["--save_16bit", "True"], False),
        (["--save_16bit", "False"], True),
        (["--save_fp32"], True),
    ],
)
def test_weights_are_saved_in_the_training_precision_unless_fp32_is_asked_for(
    flags: list[str], save_fp32: bool
) -> None:
    assert parse(*flags).output.save_fp32 is save_fp32


@pytest.mark.parametrize(
    ("flags", "name", "value"),
    [
        (["--epochs", "2"], "epochs", 2),
        (["--num_train_epochs", "2"], "epochs", 2),
        (["--lr", "1e-4"], "lr", 1e-4),
        (["--learning_rate", "1e-4"], "lr", 1e-4),
        (["--warmup_ratio", "0.1"], "lr_warmup_ratio", 0.1),
    ],
)
def test_original_names_and_aliases(flags: list[str], name: str, value: object) -> None:
    assert parse(*flags).flat()[name] == value


@pytest.mark.parametrize(
    ("flags", "expected"),
    [(["--bf16"], True), (["--bf16", "True"], True), (["--bf16", "false"], False), ([], None)],
)
def test_boolean_flags_take_an_optional_value(flags: list[str], expected: bool | None) -> None:
    assert parse(*flags).precision.bf16 is expected


def test_a_bad_boolean_is_an_argparse_error() -> None:
    with pytest.raises(SystemExit):
        parse("--bf16", "maybe")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--bf16", "--fp16"], "exclusive"),
        (["--need_eval"], "--need_eval"),
        (["--gradient_accumulation_steps", "0"], "gradient_accumulation_steps"),
        (["--max_steps", "0"], "--max_steps"),
        (["--lr_warmup_ratio", "2"], "warmup"),
        (["--deepspeed_config", "/nonexistent.json"], "--deepspeed_config"),
        (["--save_16bit", "--save_fp32"], "exclusive"),
    ],
)
def test_impossible_combinations_are_one_line_errors(flags: list[str], message: str) -> None:
    with pytest.raises(ArgumentError, match=message) as error:
        parse(*flags)
    assert "\n" not in str(error.value)


def test_deepspeed_config_file_is_read_as_overrides(tmp_path) -> None:
    path = tmp_path / "ds.json"
    path.write_text('{"zero_optimization": {"overlap_comm": false}}')
    assert parse("--deepspeed_config", str(path)).deepspeed_overrides == {
        "zero_optimization": {"overlap_comm": False}
    }


@pytest.mark.parametrize(
    ("flags", "ds_config", "message"),
    [
        (
            ["--zero_stage", "0", "--offload", "all"],
            None,
            "--offload all needs --zero_stage 3 (got 0)",
        ),
        (
            ["--zero_stage", "0", "--offload", "optimizer"],
            None,
            "--offload optimizer needs --zero_stage 1, 2 or 3 (got 0)",
        ),
        (
            [],
            {"scheduler": None},
            '--deepspeed_config: "scheduler" is built from --lr_scheduler_type and '
            "--lr_warmup_ratio; remove it from the file",
        ),
        (
            [],
            {"optimizer": {"type": "Adam"}},
            '--deepspeed_config: "optimizer" is built from --lr, --weight_decay, --adam_beta1, '
            "--adam_beta2 and --adam_epsilon; remove it from the file",
        ),
        (
            [],
            {"train_batch_size": 64},
            '--deepspeed_config: "train_batch_size" is 64, but the flags give 32 '
            "(--per_device_train_batch_size x --gradient_accumulation_steps x world size 1); set "
            "the flags, and leave the batch sizes out of the file",
        ),
        (
            [],
            {"train_micro_batch_size_per_gpu": 2},
            '--deepspeed_config: "train_micro_batch_size_per_gpu" is 2, but the flags give 4 '
            "(--per_device_train_batch_size); set the flags, and leave the batch sizes out of "
            "the file",
        ),
        (
            ["--zero_stage", "2"],
            {"zero_optimization": {"stage": 0}},
            '--deepspeed_config: "zero_optimization.stage" is 0 but --zero_stage is 2; set the '
            "flag, and leave the stage out of the file",
        ),
        (
            [],
            {"zero_optimization": None},
            '--deepspeed_config: "zero_optimization" must be an object, got None',
        ),
    ],
    ids=[
        "offload-all-stage-0",
        "offload-optimizer-stage-0",
        "null-scheduler",
        "optimizer",
        "global-batch",
        "micro-batch",
        "stage",
        "null-zero",
    ],
)
def test_deepspeed_settings_that_conflict_are_refused_before_any_work(
    flags: list[str],
    ds_config: dict | None,
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if ds_config is not None:
        (tmp_path / "ds.json").write_text(json.dumps(ds_config))
        flags = [*flags, "--deepspeed_config", str(tmp_path / "ds.json")]
    output = tmp_path / "out"
    model = str(tmp_path / "model")  # a local path: a failed check must not reach for the Hub
    argv = ["--model_name_or_path", model, "--output_dir", str(output)]
    argv += ["--train_datasets", "d.jsonl"]
    argv += ["--gradient_accumulation_steps", "8", *flags]
    assert train_command.main(argv) == 2
    assert capsys.readouterr().err.strip() == f"aligner train: error: {message}"
    assert not output.exists()


def test_deepspeed_batch_sizes_are_checked_against_the_flags_and_the_ranks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")  # as the launcher sets it for two ranks
    monkeypatch.setenv("RANK", "0")
    path = tmp_path / "ds.json"
    path.write_text('{"train_batch_size": 64, "gradient_accumulation_steps": 8}')
    config = parse("--gradient_accumulation_steps", "8", "--deepspeed_config", str(path))
    assert config.deepspeed_overrides == {"train_batch_size": 64, "gradient_accumulation_steps": 8}
    path.write_text('{"train_batch_size": 32}')  # right for one rank, not for two
    with pytest.raises(ArgumentError, match='"train_batch_size" is 32, but the flags give 64'):
        parse("--gradient_accumulation_steps", "8", "--deepspeed_config", str(path))


def test_saved_arguments_are_json_values_without_credentials() -> None:
    config = parse("--eval_datasets", "e.jsonl")
    saved = saved_values({**config.flat(), "hub_token": "hf_secret", "wandb_api_key": "secret"})
    assert config.for_saving() == saved
    assert "hub_token" not in saved and "wandb_api_key" not in saved
    assert saved["eval_datasets"] == ["e.jsonl"] and saved["lr"] == 2e-5
    assert all(
        isinstance(v, (str, int, float, bool, list, dict, type(None))) for v in saved.values()
    )


def test_packing_budget_defaults_to_a_padded_micro_batch_and_fits_every_sample() -> None:
    args = parse("--packing", "--per_device_train_batch_size", "3", "--max_length", "512")
    assert args.layout.packing is True and args.layout.packing_max_tokens == 3 * 512
    with pytest.raises(ArgumentError, match="--packing_max_tokens 100 must be at least"):
        parse("--packing", "--packing_max_tokens", "100", "--max_length", "512")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--lora_merge"], "need --lora_r > 0"),
        (["--load_in_4bit"], "need --lora_r > 0"),
        (["--lora_r", "8", "--load_in_4bit", "--zero_stage", "3"], "not 3"),
        (["--lora_r", "-1"], "--lora_r must be >= 0"),
        (["--attn_implementation", "flash"], None),
    ],
)
def test_bad_lora_and_kernel_flags_are_refused(flags: list[str], message: str | None) -> None:
    if message is None:
        with pytest.raises(SystemExit):
            parse(*flags)
    else:
        with pytest.raises(ArgumentError, match=message):
            parse(*flags)


@pytest.mark.parametrize("value", ["True", "False", None])
def test_trust_remote_code_takes_the_original_form_in_every_command(value, tmp_path) -> None:
    from aligner.config import CorrectConfig, DataConfig, EvalConfig

    correct_parser, data_args, eval_parser = (
        CorrectConfig.parser,
        DataConfig.parse,
        EvalConfig.parser,
    )

    flag = ["--trust_remote_code"] + ([value] if value else [])
    expected = value != "False"
    common = ["--model_name_or_path", "m"]
    parsed = [
        TrainConfig.parser().parse_args([*REQUIRED, *flag]),
        data_args(["--train_datasets", "x", *common, *flag]),
        correct_parser().parse_args([*common, "--input", "i", "--output", "o", *flag]),
        eval_parser().parse_args(["--predictions", "p", *flag]),
    ]
    assert [args.trust_remote_code for args in parsed] == [expected] * 4


def test_deepscale_flags_are_accepted_as_in_the_original() -> None:
    args = TrainConfig.parser().parse_args(
        [*REQUIRED, "--deepscale", "--deepscale_config", "ds.json"]
    )
    assert args.deepspeed and args.deepspeed_config == "ds.json"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--learning_rate", "inf"], "--learning_rate must be a finite number in (0, 1], got inf"),
        (["--lr", "nan"], "--lr must be a finite number in (0, 1], got nan"),
        (["--lr", "3"], "--lr must be a finite number in (0, 1], got 3.0"),
        (["--weight_decay", "nan"], "--weight_decay must be a finite number at least 0, got nan"),
        (
            ["--weight_decay", "1e39"],
            "--weight_decay must be a finite number at least 0, got 1e+39",
        ),
        (["--adam_beta1", "1.5"], "--adam_beta1 must be a finite number in [0, 1), got 1.5"),
        (["--adam_beta2", "-0.1"], "--adam_beta2 must be a finite number in [0, 1), got -0.1"),
        (["--adam_epsilon", "0"], "--adam_epsilon must be a finite number above 0, got 0.0"),
        (
            ["--max_grad_norm", "inf"],
            "--max_grad_norm must be a finite number at least 0 (0: off), got inf",
        ),
        (["--warmup_ratio", "nan"], "--warmup_ratio must be a finite number in [0, 1], got nan"),
        (["--lora_alpha=-inf"], "--lora_alpha must be a finite number above 0, got -inf"),
        (["--lora_dropout", "1"], "--lora_dropout must be a finite number in [0, 1), got 1.0"),
    ],
)
def test_float_flags_must_be_finite_and_in_range(flags: list[str], message: str) -> None:
    with pytest.raises(ArgumentError) as error:
        parse(*flags)
    assert str(error.value) == message


def test_every_float_flag_has_a_range() -> None:
    floats = {a.dest for a in TrainConfig.parser()._actions if a.type is float}
    data_flags = {"eval_split_ratio", "identity_warmup_ratio"}  # checked with the data flags
    assert floats - data_flags == set(FLOAT_RANGES)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max_length", "-5"], "--max_length must be at least 2, got -5"),
        (["--eval_split_ratio", "nan"], "--eval_split_ratio must be in [0, 1), got nan"),
        (["--identity_warmup_ratio", "inf"], "--identity_warmup_ratio must be in [0, 1], got inf"),
        (
            ["--column_map", "question=prompt", "question=title"],
            "--column_map names field 'question' twice (question=prompt, question=title)",
        ),
        (
            ["--column_map", "question=text", "answer=text"],
            "--column_map names column 'text' twice (question=text, answer=text)",
        ),
    ],
)
def test_data_flags_are_named_as_given(flags: list[str], message: str) -> None:
    with pytest.raises(ArgumentError) as error:
        parse(*flags)
    assert str(error.value) == message


def test_the_original_scripts_defaults_are_a_profile_that_flags_override() -> None:
    neutral = parse()
    assert (
        neutral.output.log_type,
        neutral.output.log_project,
        neutral.precision.tf32,
        neutral.output.save_16bit,
    ) == (
        "none",
        "aligner",
        False,
        None,
    )
    original = parse("--defaults", "original")
    assert (original.output.log_type, original.output.log_project, original.precision.tf32) == (
        "wandb",
        "Aligner-SFT",
        None,
    )
    assert original.output.save_16bit is True and original.output.save_fp32 is False
    overridden = parse("--defaults", "original", "--log_type", "none", "--tf32", "False")
    assert (overridden.output.log_type, overridden.precision.tf32) == ("none", False)
    assert parse("--defaults", "original", "--save_16bit", "False").output.save_fp32 is True
    assert parse("--tf32", "auto").precision.tf32 is None


def test_a_validated_config_cannot_be_changed() -> None:
    """Derived values are filled in by validation into a new object; nothing writes after."""
    config = parse("--save_16bit", "False", "--packing")
    assert config.output.save_fp32 is True and config.layout.packing_max_tokens == 4 * 2048
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.output.save_fp32 = False
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.deepspeed_overrides = {}


def test_a_saved_training_args_file_reruns_with_a_flag_overriding_it(tmp_path: Path) -> None:
    flags = ("--lr", "1e-4", "--column_map", "question=prompt", "--eval_datasets", "e.jsonl")
    path = tmp_path / "training_args.json"
    path.write_text(json.dumps(parse(*flags, "--defaults", "original").for_saving()))
    rerun = TrainConfig.parse(["--config", str(path), "--lr", "3e-5"])
    assert rerun == parse(*flags, "--defaults", "original", "--lr", "3e-5")
    assert rerun.data.column_map == [("question", "prompt")] and rerun.optim.lr == 3e-5


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"lr": 1e-4, "learning_rat": 1}', "unknown flag 'learning_rat'"),
        ('{"zero_stage": 7}', "zero_stage: expected one of 0, 1, 2, 3, got 7"),
        ('{"epochs": "3"}', "epochs: expected an integer, got '3'"),
        ('{"train_datasets": "d.jsonl"}', "train_datasets: expected a list, got 'd.jsonl'"),
        ("[1, 2]", "must hold a JSON object of flag values"),
        ("{not json", "Expecting property name enclosed in double quotes"),
    ],
)
def test_a_bad_saved_training_args_file_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    path = tmp_path / "training_args.json"
    path.write_text(content)
    assert train_command.main([*REQUIRED, "--config", str(path)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"aligner train: error: --config {path}: ") and "\n" not in error
    assert message in error
