"""The run configuration: every flag of every command, in typed groups, validated in one place.

Each field of a group is one flag (``aligner.options``): its name, aliases, default and help live
here and nowhere else. A command takes the groups it needs, or part of one (``Part``), into its
own frozen config: ``TrainConfig`` for ``aligner train``, and a ``CommandConfig`` for ``answer``,
``correct``, ``eval``, ``serve`` and ``data``, whose flags also read as attributes of the whole
(``config.seed``). The groups of one server's flags (``EndpointArgs``) are added for a prefix:
``--aligner_url``, ``--upstream_url``, ``--judge_url``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import urllib.parse
from argparse import SUPPRESS
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from transformers import SchedulerType

from aligner.errors import UserError
from aligner.options import add_options, bool_or_auto, defaults_from_file, option, take
from aligner.runtime import Ranks
from aligner.secrets import redact
from aligner.training.ds_config import OFFLOAD_CHOICES
from aligner.training.ds_config import check_settings as check_deepspeed_settings

RECORD_FIELDS = ("question", "messages", "answer", "correction")
ATTN_IMPLEMENTATIONS = ("sdpa", "flash_attention_2", "eager")
PREFERENCE_FORMATS = ("standard", "conversational")
"""TRL's two forms of preference records: strings, or lists of messages."""
SCHEDULERS = tuple(s.value for s in SchedulerType)


class ArgumentError(UserError):
    """A flag value or combination the command cannot honour; reported as one line."""


def column_pair(text: str) -> tuple[str, str]:
    field_name, equals, column = text.partition("=")
    if not equals or field_name not in RECORD_FIELDS or not column:
        raise argparse.ArgumentTypeError(
            f"expected FIELD=COLUMN with FIELD one of {', '.join(RECORD_FIELDS)}, got {text!r}"
        )
    return field_name, column


@dataclass(frozen=True)
class ModelArgs:
    model_name_or_path: str = option(required=True, help="HF model folder or hub name")
    trust_remote_code: bool = option(
        False, "run Python code shipped with the model folder (only for models you trust)"
    )
    attn_implementation: str | None = option(
        None,
        "attention kernel (None: the one transformers picks for the model's family, sdpa "
        "where it supports it, else eager); flash_attention_2 needs the flash-attn package and "
        "a GPU, and is the one that skips the masked work of packed rows",
        choices=ATTN_IMPLEMENTATIONS,
    )
    resize_embeddings: bool = option(
        False,
        "when the tokenizer has more tokens than the model has embedding rows, add rows "
        "(rounded up to a multiple of 64) instead of stopping with an error",
    )
    use_liger: bool = option(
        False,
        "compute the LM head and cross-entropy in Liger's fused kernel (liger-kernel, GPU)",
    )


@dataclass(frozen=True)
class DataArgs:
    train_datasets: list[str] = option(
        None,
        "datasets to train on: a registered name with an optional proportion and path "
        "(correction-json::data/train.jsonl, correction-json:0.5:data/train.jsonl, "
        "my-data:1000/-1), or simply a record file",
        required=True,
        many=True,
        metavar="NAME[:PROPORTION[:PATH]]",
    )
    eval_datasets: list[str] | None = option(
        None,
        "datasets to evaluate on (same form as --train_datasets)",
        nargs="*",
        metavar="NAME[:PROPORTION[:PATH]]",
    )
    eval_split_ratio: float = option(
        0.0,
        "hold out this share of the training samples for evaluation (when no "
        "--eval_datasets are given)",
    )
    column_map: list[tuple[str, str]] | None = option(
        None,
        "read each source's COLUMN as the record FIELD (question, messages, answer, "
        "correction), e.g. question=prompt answer=response; for record files and Hub datasets",
        many=True,
        parse=column_pair,
        metavar="FIELD=COLUMN",
    )
    dataset_module: list[str] = option(
        [],
        "import a module (pkg.mod or path/to/file.py) that registers RawDataset classes; "
        "repeatable",
        action="append",
        metavar="MODULE",
    )
    prompt_template: str | None = option(
        "correction",
        "a template name (correction, aligner-v1, or chat: the tokenizer's own chat "
        "template) or a .json/.yaml template file",
        aliases=("--template",),
    )
    system_prompt: str | None = option(
        None, "with --prompt_template chat: the aligner's system message (default: none)"
    )
    max_length: int = option(2048, "maximum tokens per sample (prompt + target)")
    identity_warmup_ratio: float = option(
        0.0,
        "identity warm-up (residual correction): before the corrections, train on this "
        "share of the training records with their own answer as the target, i.e. "
        "(question, answer, answer)",
    )
    lenient_data: bool = option(
        False, "skip and count invalid records instead of stopping at the first one"
    )
    num_proc: int = option(1, "processes used to tokenize the data")
    data_cache_dir: str | None = option(
        None,
        "where tokenized data is cached (default: $ALIGNER_CACHE_DIR/data or "
        "~/.cache/aligner/data)",
    )
    seed: int = option(42, "seed of data sampling, shuffling and initialisation")

    def check(self) -> None:
        """Refuse a data flag out of its range, naming the flag, before anything is read."""
        if self.max_length < 2:
            raise ArgumentError(f"--max_length must be at least 2, got {self.max_length}")
        if self.num_proc < 1:
            raise ArgumentError(f"--num_proc must be at least 1, got {self.num_proc}")
        ratios = {
            "--eval_split_ratio": (self.eval_split_ratio, "[0, 1)", lambda x: 0 <= x < 1),
            "--identity_warmup_ratio": (
                self.identity_warmup_ratio,
                "[0, 1]",
                lambda x: 0 <= x <= 1,
            ),
        }
        for flag, (value, interval, inside) in ratios.items():
            if not (math.isfinite(value) and inside(value)):
                raise ArgumentError(f"{flag} must be in {interval}, got {value}")
        self._check_column_map()

    def _check_column_map(self) -> None:
        """One column per field and one field per column: a second pair would silently win."""
        for index, side in ((0, "field"), (1, "column")):
            seen: dict[str, str] = {}
            for pair in self.column_map or []:
                name, given = pair[index], "=".join(pair)
                if name in seen:
                    raise ArgumentError(
                        f"--column_map names {side} {name!r} twice ({seen[name]}, {given})"
                    )
                seen[name] = given


@dataclass(frozen=True)
class LayoutArgs:
    per_device_train_batch_size: int = option(4, "samples per micro-batch on each rank")
    per_device_eval_batch_size: int = option(4, "samples per evaluation batch on each rank")
    gradient_accumulation_steps: int = option(8, "micro-batches per optimizer step")
    packing: bool = option(
        False,
        "padding-free packing: concatenate whole samples into micro-batches of at most "
        "--packing_max_tokens tokens; attention never crosses samples",
    )
    packing_max_tokens: int | None = option(
        None,
        "token budget of a packed micro-batch, at least max_length (None: "
        "per_device_train_batch_size x max_length)",
        metavar="TOKENS",
    )
    group_by_length: bool = option(
        False,
        "form global batches of similar lengths (seeded), so padded batches waste little",
    )


@dataclass(frozen=True)
class LoraArgs:
    lora_r: int = option(0, "LoRA rank; 0 trains every weight instead")
    lora_alpha: float = option(16.0, "LoRA scaling numerator")
    lora_dropout: float = option(0.05, "dropout on the adapters' inputs")
    lora_target_modules: list[str] | None = option(
        None,
        "module names that get adapters, e.g. q_proj v_proj (None: the family's attention "
        "and MLP projections, e.g. qkv_proj o_proj gate_up_proj down_proj for Phi-3; all-linear "
        "for a family without a default); all-linear: every linear layer but the output layer",
        many=True,
        metavar="NAME",
    )
    lora_merge: bool = option(
        False, "save the base weights with the adapter merged in, instead of the adapter alone"
    )
    load_in_4bit: bool = option(
        False, "QLoRA: load the base model in 4-bit NF4 (needs --lora_r, bitsandbytes and a GPU)"
    )


@dataclass(frozen=True)
class OptimArgs:
    epochs: int = option(3, "passes over the training data", aliases=("--num_train_epochs",))
    max_steps: int = option(-1, "stop after this many optimizer steps (-1: off)")
    gradient_checkpointing: bool = option(
        True, "recompute activations in the backward pass to save memory"
    )
    lr: float = option(2e-5, "peak learning rate", aliases=("--learning_rate",))
    lr_scheduler_type: str = option(
        "cosine", "a transformers.get_scheduler name", choices=SCHEDULERS
    )
    lr_warmup_ratio: float = option(
        0.03, "share of the steps with a rising learning rate", aliases=("--warmup_ratio",)
    )
    weight_decay: float = option(
        0.0, "AdamW weight decay; never applied to biases and norm weights"
    )
    adam_beta1: float = option(0.9, "AdamW beta1")
    adam_beta2: float = option(0.95, "AdamW beta2")
    adam_epsilon: float = option(1e-8, "AdamW epsilon")
    max_grad_norm: float = option(1.0, "clip the global gradient norm (0: off)")
    max_consecutive_skips: int = option(
        5,
        "stop the run (non-zero exit) after this many optimizer steps in a row were skipped "
        "for a non-finite loss or gradient",
    )


@dataclass(frozen=True)
class PrecisionArgs:
    bf16: bool | None = option(
        None,
        "train in bfloat16 (default: on where the accelerator supports it, else fp32)",
    )
    fp16: bool = option(False, "train in float16 with loss scaling")
    tf32: bool | None = option(
        False,
        "allow TF32 matmuls (NVIDIA Ampere or newer); auto: wherever the GPU supports them",
        parse=bool_or_auto,
        nargs="?",
        const=True,
        metavar="BOOL|auto",
    )


@dataclass(frozen=True)
class EvalArgs:
    need_eval: bool = option(
        False,
        "evaluate (needs --eval_datasets or --eval_split_ratio; giving either implies it)",
    )
    eval_strategy: str = option("epoch", "when to evaluate", choices=("epoch", "steps"))
    eval_interval: int = option(
        1000, "optimizer steps between evaluations with --eval_strategy steps"
    )


@dataclass(frozen=True)
class OutputArgs:
    output_dir: str = option(required=True, help="where the model, logs and checkpoints go")
    defaults: str = option(
        "aligner",
        "original: the original toolkit's script settings (wandb project Aligner-SFT, TF32 "
        "where supported, a 16-bit save), which scripts/sft-correction.sh applies; any flag "
        "given overrides them",
        choices=("aligner", "original"),
    )
    log_type: str = option("none", "tracker", choices=("wandb", "tensorboard", "none"))
    log_dir: str | None = option(None, "tracker files (default: OUTPUT_DIR)")
    log_project: str = option("aligner", "wandb project")
    log_run_name: str | None = option(None, "run name (default: from time)")
    save_fp32: bool = option(
        False,
        "save the optimizer's fp32 master weights instead of the weights in the training "
        "precision (bf16/fp16 runs: twice the disk)",
    )
    save_16bit: bool | None = option(
        None,
        "the original toolkit's flag: True saves 16-bit weights (the training precision, "
        "or bf16 when training in fp32), False as --save_fp32; default: the training precision",
    )
    save_interval: int = option(
        0, "also save a model folder every this many optimizer steps (0: only at the end)"
    )
    checkpoint_interval: int = option(
        0,
        "save a full checkpoint (engine, optimizer, scheduler, RNG, data position) to "
        "OUTPUT_DIR/checkpoints every this many optimizer steps (0: never)",
    )
    save_total_limit: int = option(
        2, "full checkpoints kept; older ones are deleted once a newer one is complete"
    )
    resume_from_checkpoint: str | None = option(
        None,
        "continue from a full checkpoint: auto takes the newest complete one in OUTPUT_DIR "
        "(or starts fresh when there is none)",
        metavar="auto|PATH",
    )
    overwrite: bool = option(
        False,
        "write into a non-empty OUTPUT_DIR that holds no resumable run, or start an earlier "
        "run over (only files the toolkit wrote are ever deleted)",
    )


@dataclass(frozen=True)
class DistArgs:
    zero_stage: int = option(3, "DeepSpeed ZeRO stage", choices=(0, 1, 2, 3))
    offload: str = option("none", "ZeRO offload to the CPU", choices=OFFLOAD_CHOICES)
    local_rank: int = option(-1, "set by the deepspeed launcher")
    deepspeed: bool = option(
        False,
        "accepted for compatibility; the trainer always runs on DeepSpeed",
        aliases=("--deepscale",),
        action="store_true",
    )
    deepspeed_config: str | None = option(
        None,
        "a DeepSpeed config file whose keys override the built config",
        aliases=("--deepscale_config",),
        metavar="JSON",
    )
    dist_timeout: int = option(600, "seconds a collective may wait for a rank before the run fails")


SAMPLED = "with --do_sample; default: the checkpoint's generation_config"


@dataclass(frozen=True)
class GenerationArgs:
    """Decoding: greedy by default, sampled with --do_sample."""

    batch_size: int = option(
        8, "records per generate call, or per round of requests to --aligner_url (%(default)s)"
    )
    max_new_tokens: int = option(512, "most tokens per correction (%(default)s)")
    do_sample: bool = option(False, "sample instead of greedy decoding")
    temperature: float | None = option(None, SAMPLED)
    top_p: float | None = option(None, SAMPLED)
    top_k: int | None = option(None, f"{SAMPLED}; 0 disables it")

    def check(self) -> None:
        for flag in ("batch_size", "max_new_tokens"):
            if getattr(self, flag) < 1:
                raise ArgumentError(f"--{flag} must be at least 1")
        sampling = [
            f"--{f}" for f in ("temperature", "top_p", "top_k") if getattr(self, f) is not None
        ]
        if sampling and not self.do_sample:
            raise ArgumentError(f"{', '.join(sampling)} take effect only with --do_sample")
        if self.temperature is not None and not 0 < self.temperature < math.inf:
            raise ArgumentError(
                "--temperature must be a finite number above 0 (greedy decoding is the default)"
            )
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ArgumentError("--top_p must be in (0, 1]")
        if self.top_k is not None and self.top_k < 0:
            raise ArgumentError("--top_k must be at least 0 (0 disables it)")


@dataclass(frozen=True)
class LoadingArgs:
    """Where and how a checkpoint is loaded for inference (with ``--trust_remote_code``)."""

    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    dtype: str = option("auto", "auto, float32, bfloat16 or float16")


def check_base_url(url: str, flag: str) -> str:
    """The URL without a trailing slash; one that is not http(s) or holds credentials is
    refused, naming ``flag``."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ArgumentError(f"{flag} {url!r}: give the server's base URL, http(s)://host:port/v1")
    if parts.username or parts.password:
        raise ArgumentError(
            f"{flag} must not hold credentials; pass the key in an environment variable"
        )
    return url.rstrip("/")


@dataclass(frozen=True)
class EndpointArgs:
    """One OpenAI-compatible server's flags, added for a prefix: ``--aligner_url``,
    ``--upstream_model``, ``--judge_timeout``... (``add_options(..., prefix=...)``)."""

    url: str | None = option(
        None, "base URL of an OpenAI-compatible server, e.g. http://localhost:8000/v1"
    )
    model: str | None = option(None, "the model name the server serves")
    api_key_env: str | None = option(
        None,
        "environment variable holding the API key, sent as a bearer token; without it "
        "requests carry no key (%(default)s)",
        metavar="VAR",
    )
    concurrency: int = option(8, "requests at once (%(default)s)")
    timeout: float = option(
        120.0,
        "seconds a request may take in all: connecting, sending, and reading the whole "
        "reply (%(default)s)",
    )
    retries: int = option(5, "retries after a 429, 5xx, timeout or malformed reply (%(default)s)")
    backoff: float = option(
        1.0, "seconds before the first retry, doubled for each further one (%(default)s)"
    )
    max_reply_bytes: int = option(8 << 20, "a longer reply is cut off and retried (%(default)s)")

    def check(self, prefix: str) -> None:
        """The flags of the server named ``--{prefix}_url``, each named so in an error."""
        named = self.url is not None or self.model is not None
        if named and not (self.url and self.model):
            raise ArgumentError(f"give both --{prefix}_url and --{prefix}_model, or neither")
        if self.url is not None:
            check_base_url(self.url, f"--{prefix}_url")
        for name in ("concurrency", "max_reply_bytes"):
            if getattr(self, name) < 1:
                raise ArgumentError(f"--{prefix}_{name} must be at least 1")
        for name in ("retries", "backoff"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ArgumentError(f"--{prefix}_{name} must be a finite number, at least 0")
        if not 0 < self.timeout < math.inf:
            raise ArgumentError(f"--{prefix}_timeout must be a finite number above 0")


@dataclass(frozen=True)
class FilesArgs:
    """The files a record-processing command reads and writes."""

    input: str = option(
        required=True,
        help="records with question and answer: JSON, JSONL, Parquet, CSV or a save_to_disk "
        "folder, read and checked as for training",
    )
    output: str | None = option(required=True, help="JSONL written (and resumed) here")


@dataclass(frozen=True)
class CorrectionArgs:
    """What ``aligner correct`` writes beside the corrections."""

    rounds: int = option(
        1,
        "correct each correction again, N rounds in all; a record stops early once a "
        "round returns it unchanged",
    )
    preference_output: str | None = option(
        None, "also write DPO pairs (prompt=question, chosen=correction, rejected=answer)"
    )
    upstream_tokenizer: str | None = option(
        None,
        "the upstream model's tokenizer: its chat template writes standard-format "
        "preference prompts exactly as that model is prompted (default: the question and a "
        "blank line)",
        metavar="PATH",
    )
    preference_format: str = option(
        "standard",
        "TRL's standard (strings) or conversational (message lists) preference records",
        choices=PREFERENCE_FORMATS,
    )

    def check(self) -> None:
        if self.rounds < 1:
            raise ArgumentError("--rounds must be at least 1")


@dataclass(frozen=True)
class PredictionsArgs:
    """``aligner eval``'s corrected file, and its reward, cost and judge scoring."""

    predictions: str | None = option(None, "records with answer and correction (aligner correct)")
    reference_field: str | None = option(
        None,
        "field holding the reference correction (default: reference_correction, where a "
        "record has one); a field that no record has is an error",
    )


@dataclass(frozen=True)
class ScoringArgs:
    reward_model: str | None = option(
        None, "sequence-classification checkpoint with one output: higher is more helpful"
    )
    cost_model: str | None = option(None, "the same, where higher is more harmful")
    scores_output: str | None = option(
        None, "per-record scores (JSONL, resumed); default: PREDICTIONS.scores.jsonl beside it"
    )
    device_map: str | None = option(
        None,
        "auto: spread each scorer over every GPU of the node (accelerate), for models too "
        "large for one",
        choices=["auto"],
    )
    tie_margin: float = option(0.0, "score differences up to this are ties (%(default)s)")
    bootstrap_samples: int = option(
        10_000, "resamples of the 95%% interval of the mean difference (%(default)s)"
    )

    def check(self) -> None:
        if self.bootstrap_samples < 1:
            raise ArgumentError("--bootstrap_samples must be at least 1")
        if not self.tie_margin >= 0:  # nan too
            raise ArgumentError(f"--tie_margin must not be negative, got {self.tie_margin}")


@dataclass(frozen=True)
class JudgeArgs:
    judge_prompt: str | None = option(
        None, "file with the judging prompt: {conversation}, {reply_a} and {reply_b}"
    )
    judge_output: str | None = option(
        None,
        "per-record verdicts (JSONL, resumed); default: PREDICTIONS.judge.jsonl beside it",
    )
    judge_max_tokens: int = option(1024, "most tokens per verdict (%(default)s)")
    judge_temperature: float = option(0.0, "judge sampling (%(default)s)")

    def check(self) -> None:
        if self.judge_max_tokens < 1:
            raise ArgumentError("--judge_max_tokens must be at least 1")
        if not self.judge_temperature >= 0:  # nan too
            raise ArgumentError(
                f"--judge_temperature must not be negative, got {self.judge_temperature}"
            )


@dataclass(frozen=True)
class ServerArgs:
    host: str = option("127.0.0.1", "address to listen on (%(default)s)")
    port: int = option(8080, "port to listen on (%(default)s)")
    served_model_name: str | None = option(
        None, "the model name /v1/models lists and replies carry (default: --upstream_model)"
    )
    api_key_env: str | None = option(
        None,
        "environment variable holding the key clients must send as a bearer token; "
        "without it no key is asked for",
        metavar="VAR",
    )


@dataclass(frozen=True)
class LimitArgs:
    """What one request to ``aligner serve`` may hold, and how many may run at once; more is
    refused with a 4xx."""

    max_body_bytes: int = option(
        1 << 20, "most bytes of a request's body; more is a 413 (%(default)s)"
    )
    max_messages: int = option(64, "most turns of a conversation (%(default)s)")
    max_prompt_tokens: int = option(
        4096,
        "most tokens of the aligner's prompt: the conversation and the upstream's reply "
        "(%(default)s)",
    )
    max_tokens: int = option(4096, "most max_tokens a client may ask of the upstream (%(default)s)")
    max_concurrent_requests: int = option(
        256,
        "most chat completions in flight at once, a stream until its last chunk; one more is "
        "refused with a 429 and Retry-After (%(default)s)",
    )

    def check(self) -> None:
        for flag, value in dataclasses.asdict(self).items():
            if value < 1:
                raise ArgumentError(f"--{flag} must be at least 1")


@dataclass(frozen=True)
class RerunArgs:
    config: str | None = option(
        None,
        "rerun with the flags saved in a run's training_args.json; a flag given here "
        "overrides the file's value",
        metavar="JSON",
    )


PROFILES: dict[str, dict[str, Any]] = {
    "aligner": {},
    # What the original toolkit's scripts/sft-correction.sh fixes on top of its trainer's own
    # defaults; this project's wrapper applies it, `aligner train` does not.
    "original": {
        "log_type": "wandb",
        "log_project": "Aligner-SFT",
        "tf32": None,
        "save_16bit": True,
    },
}
"""``--defaults``: the neutral defaults of ``aligner train``, or the original script's."""

FLOAT_RANGES: dict[str, tuple[str, Callable[[float], bool]]] = {
    # An AdamW step moves each weight by about the LR: above 1, one step destroys the model.
    "lr": ("in (0, 1]", lambda x: 0 < x <= 1),
    "lr_warmup_ratio": ("in [0, 1]", lambda x: 0 <= x <= 1),
    "weight_decay": ("at least 0", lambda x: x >= 0),
    "adam_beta1": ("in [0, 1)", lambda x: 0 <= x < 1),
    "adam_beta2": ("in [0, 1)", lambda x: 0 <= x < 1),
    "adam_epsilon": ("above 0", lambda x: x > 0),
    "max_grad_norm": ("at least 0 (0: off)", lambda x: x >= 0),
    "lora_alpha": ("above 0", lambda x: x > 0),
    "lora_dropout": ("in [0, 1)", lambda x: 0 <= x < 1),
}
"""Every float flag's range (the data flags' are checked by ``DataArgs.check``). Each value must
also be finite, in float32 too: inf or nan passes a comparison like ``lr <= 0`` unnoticed and
trains a model of NaN weights, and 1e39 overflows the optimizer's float32 arithmetic."""
FLOAT32_MAX = 3.4028234663852886e38

SECRET_MARKERS = ("token", "key", "secret", "password")
"""Flag names holding any of these are never written to the output folder."""

TRAIN_GROUPS = {
    "model": (ModelArgs, "model"),
    "data": (DataArgs, "data"),
    "layout": (LayoutArgs, "batch layout"),
    "lora": (LoraArgs, "LoRA"),
    "optim": (OptimArgs, "optimisation"),
    "precision": (PrecisionArgs, "precision"),
    "eval": (EvalArgs, "evaluation"),
    "output": (OutputArgs, "output, checkpoints and tracking"),
    "dist": (DistArgs, "distributed"),
}


def spellings(parser: argparse.ArgumentParser, argv: list[str] | None) -> dict[str, str]:
    """Each flag given in ``argv`` by its name, mapped to the spelling used (``--lr`` given as
    ``--learning_rate``), so that an error names the flag the user typed."""
    given: dict[str, str] = {}
    for token in argv if argv is not None else sys.argv[1:]:
        action = parser._option_string_actions.get(token.split("=", 1)[0])
        if action is not None:
            given[action.dest] = token.split("=", 1)[0]
    return given


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``aligner train`` was asked to do, by group."""

    model: ModelArgs
    data: DataArgs
    layout: LayoutArgs
    lora: LoraArgs
    optim: OptimArgs
    precision: PrecisionArgs
    eval: EvalArgs
    output: OutputArgs
    dist: DistArgs
    deepspeed_overrides: dict[str, Any] | None = field(default=None)
    """The keys of ``--deepspeed_config``, read by ``validated``."""

    @staticmethod
    def parser() -> argparse.ArgumentParser:
        from aligner.errors import CommandParser

        parser = CommandParser(
            prog="aligner train",
            description="Supervised correction training on DeepSpeed: only the correction and "
            "its EOS carry loss, normalised per target token of the global batch.",
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
            allow_abbrev=False,
        )
        add_options(parser, RerunArgs)
        for group, title in TRAIN_GROUPS.values():
            add_options(parser, group, title=title)
        return parser

    @classmethod
    def parse(cls, argv: list[str] | None) -> TrainConfig:
        """Parse and validate; ``--defaults original`` swaps in the original script's defaults,
        and ``--config`` a saved run's flags, which any flag given still overrides."""
        profile = argparse.ArgumentParser(add_help=False)
        add_options(profile, OutputArgs, only=("defaults",))
        add_options(profile, RerunArgs)
        known, _ = profile.parse_known_args(argv)
        parser = cls.parser()
        parser.set_defaults(**PROFILES[known.defaults])
        if known.config is not None:
            defaults_from_file(parser, known.config)
        namespace = parser.parse_args(argv)
        config = cls(**{name: take(namespace, group) for name, (group, _) in TRAIN_GROUPS.items()})
        return config.validated(spellings(parser, argv))

    def flat(self) -> dict[str, Any]:
        """Every flag's value by its name."""
        values: dict[str, Any] = {}
        for name in TRAIN_GROUPS:
            values.update(dataclasses.asdict(getattr(self, name)))
        return values

    def for_saving(self) -> dict[str, Any]:
        """The flags as JSON-safe values, without anything that looks like a credential: no
        secret-named flag, and no secret from the environment inside any value."""
        return saved_values(self.flat())

    def validated(self, spelled: dict[str, str] | None = None) -> TrainConfig:
        """This config checked, with its derived values filled in (the save precision, the
        packing budget, the ``--deepspeed_config`` keys), as a new frozen config; raise
        ArgumentError with one clear line, naming a flag as ``spelled`` (flag name -> the alias
        given) where the user gave an alias."""
        self.data.check()  # first: the layout's defaults are derived from --max_length
        flat = self.flat()
        for name, (allowed, inside) in FLOAT_RANGES.items():
            value = flat[name]
            if not (math.isfinite(value) and abs(value) <= FLOAT32_MAX and inside(value)):
                flag = (spelled or {}).get(name, f"--{name}")
                raise ArgumentError(f"{flag} must be a finite number {allowed}, got {value}")
        positive = ("epochs", "per_device_train_batch_size", "per_device_eval_batch_size")
        for name in (*positive, "gradient_accumulation_steps", "dist_timeout"):
            if flat[name] < 1:
                raise ArgumentError(f"--{name} must be at least 1, got {flat[name]}")
        optim, output = self.optim, self.output
        if optim.max_steps == 0 or optim.max_steps < -1:
            raise ArgumentError(f"--max_steps must be positive or -1, got {optim.max_steps}")
        if optim.max_consecutive_skips < 1:
            raise ArgumentError(
                f"--max_consecutive_skips must be at least 1, got {optim.max_consecutive_skips}"
            )
        if self.precision.bf16 and self.precision.fp16:
            raise ArgumentError("--bf16 and --fp16 are exclusive")
        if self.eval.eval_interval < 1 or output.save_interval < 0:
            raise ArgumentError("--eval_interval must be >= 1 and --save_interval >= 0")
        if output.checkpoint_interval < 0 or output.save_total_limit < 1:
            raise ArgumentError("--checkpoint_interval must be >= 0 and --save_total_limit >= 1")
        if output.save_16bit and output.save_fp32:
            raise ArgumentError("--save_16bit True and --save_fp32 are exclusive")
        self._validate_layout_and_lora()
        data = self.data
        if self.eval.need_eval and not (data.eval_datasets or data.eval_split_ratio > 0):
            raise ArgumentError("--need_eval needs --eval_datasets or --eval_split_ratio")
        overrides = read_deepspeed_overrides(self.dist.deepspeed_config)
        try:
            check_deepspeed_settings(
                stage=self.dist.zero_stage,
                offload=self.dist.offload,
                micro_batch_size_per_gpu=self.layout.per_device_train_batch_size,
                gradient_accumulation_steps=self.layout.gradient_accumulation_steps,
                world_size=Ranks.from_env().world_size,
                overrides=overrides,
            )
        except ValueError as error:
            raise ArgumentError(str(error)) from None
        return dataclasses.replace(
            self,
            layout=dataclasses.replace(self.layout, packing_max_tokens=self._packing_budget()),
            output=dataclasses.replace(
                output, save_fp32=output.save_fp32 or output.save_16bit is False
            ),
            deepspeed_overrides=overrides,
        )

    def _packing_budget(self) -> int:
        """``--packing_max_tokens``, by default one padded micro-batch's tokens."""
        layout = self.layout
        if layout.packing_max_tokens is None:
            return layout.per_device_train_batch_size * self.data.max_length
        return layout.packing_max_tokens

    def _validate_layout_and_lora(self) -> None:
        lora, max_length, budget = self.lora, self.data.max_length, self._packing_budget()
        if budget < max_length:
            raise ArgumentError(
                f"--packing_max_tokens {budget} must be at least "
                f"--max_length {max_length}, so that every sample fits"
            )
        if lora.lora_r < 0:
            raise ArgumentError(f"--lora_r must be >= 0, got {lora.lora_r}")
        if lora.lora_r == 0 and (lora.lora_merge or lora.load_in_4bit):
            raise ArgumentError("--lora_merge and --load_in_4bit need --lora_r > 0")
        if lora.lora_merge and lora.load_in_4bit:
            raise ArgumentError("--lora_merge cannot merge into 4-bit weights; drop --load_in_4bit")
        if lora.load_in_4bit and self.dist.zero_stage == 3:
            raise ArgumentError("--load_in_4bit works with --zero_stage 0, 1 or 2, not 3")


def read_deepspeed_overrides(path_text: str | None) -> dict[str, Any] | None:
    """The JSON object of a ``--deepspeed_config`` file, or None without one."""
    if path_text is None:
        return None
    path = Path(path_text)
    try:
        overrides = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ArgumentError(f"--deepspeed_config {path}: {error}") from None
    if not isinstance(overrides, dict):
        raise ArgumentError(f"--deepspeed_config {path}: must hold a JSON object")
    return overrides


def saved_values(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` as JSON-safe values, without secret-named keys or secrets inside values."""
    saved: dict[str, Any] = {}
    for name, value in sorted(values.items()):
        if any(marker in name.lower() for marker in SECRET_MARKERS):
            continue
        if value is None or isinstance(value, (bool, int, float, str)):
            saved[name] = value
        elif isinstance(value, (list, tuple, dict)):
            # A --column_map pair becomes a two-item list, which --config reads back.
            saved[name] = json.loads(json.dumps(value, default=str))
        else:
            saved[name] = str(value)
    return redact(saved)


@dataclass(frozen=True)
class Part:
    """A group of flags as one command takes it: ``add_options``' settings for the group."""

    group: type
    title: str | None = None
    only: tuple[str, ...] | None = None
    defaults: dict[str, Any] = field(default_factory=dict)
    helps: dict[str, str] = field(default_factory=dict)
    optional: tuple[str, ...] = ()
    prefix: str | None = None


Command = TypeVar("Command", bound="CommandConfig")
"""A command's own config class (``typing.Self`` is Python 3.11)."""


@dataclass(frozen=True)
class CommandConfig:
    """A command's flags, by group (frozen). Every flag also reads as an attribute of the
    whole, by its command-line name (``config.seed``, ``config.aligner_url``), so that code
    reads a flag the same way whichever group declares it."""

    PROG: ClassVar[str] = ""
    DESCRIPTION: ClassVar[str] = ""
    PARTS: ClassVar[dict[str, Part]] = {}

    def __getattr__(self, name: str) -> Any:
        for part_name, part in self.PARTS.items():
            group = object.__getattribute__(self, part_name)
            flag = name
            if part.prefix is not None:
                if not name.startswith(f"{part.prefix}_"):
                    continue
                flag = name.removeprefix(f"{part.prefix}_")
            if flag in group.__dataclass_fields__:
                return getattr(group, flag)
        raise AttributeError(f"{type(self).__name__} has no flag {name!r}")

    @classmethod
    def parser(cls) -> argparse.ArgumentParser:
        from aligner.errors import CommandParser

        parser = CommandParser(prog=cls.PROG, description=cls.DESCRIPTION)
        sections: dict[str | None, Any] = {None: parser}
        for part in cls.PARTS.values():
            if part.title not in sections:
                sections[part.title] = parser.add_argument_group(part.title)
            add_options(
                sections[part.title],
                part.group,
                only=part.only,
                defaults=part.defaults,
                helps=part.helps,
                optional=part.optional,
                prefix=part.prefix,
            )
        return parser

    @classmethod
    def parse(cls: type[Command], argv: list[str]) -> Command:
        """The command line as this config, each group checked (once, here) by its own
        ``check``; what a check refuses is an ArgumentError naming the flag."""
        namespace = cls.parser().parse_args(argv)
        groups = {}
        for name, part in cls.PARTS.items():
            groups[name] = group = take(namespace, part.group, prefix=part.prefix)
            if hasattr(group, "check"):
                group.check() if part.prefix is None else group.check(part.prefix)
        return cls(**groups)


def generation_parts(title: str, seed_help: str = "seed of sampling (%(default)s)") -> dict:
    """The decoding flags of a command that generates, with where its model loads."""
    return {
        "generation": Part(GenerationArgs, title),
        "seeding": Part(DataArgs, title, only=("seed",), helps={"seed": seed_help}),
        "loading": Part(LoadingArgs, title),
        "remote_code": Part(ModelArgs, title, only=("trust_remote_code",)),
    }


LAUNCHER = Part(
    DistArgs, only=("local_rank",), defaults={"local_rank": None}, helps={"local_rank": SUPPRESS}
)
"""``--local_rank``, which the deepspeed launcher passes; the rank is read from the environment."""


def endpoint_part(prefix: str, what: str, **defaults: Any) -> Part:
    """The ``--{prefix}_*`` flags of one server, with their defaults for this command."""
    return Part(EndpointArgs, f"{what}: the endpoint", defaults=defaults, prefix=prefix)


@dataclass(frozen=True)
class AnswerConfig(CommandConfig):
    """``aligner answer``: the upstream model answers the questions."""

    PROG = "aligner answer"
    DESCRIPTION = "Answer questions with the upstream model, locally or through an endpoint."
    PARTS: ClassVar[dict[str, Part]] = {
        "model": Part(
            ModelArgs,
            "input and output",
            only=("model_name_or_path",),
            optional=("model_name_or_path",),
            helps={
                "model_name_or_path": "the upstream chat model, run locally (or give "
                "--upstream_url)"
            },
        ),
        "files": Part(
            FilesArgs,
            "input and output",
            helps={
                "input": "records with question or messages: JSON, JSONL, Parquet, CSV or a "
                "save_to_disk folder, read and checked as for training",
                "output": "JSONL written (and resumed) here: each input record plus its answer; "
                "an input's own answer field is kept as reference_answer",
            },
        ),
        "saving": Part(
            OutputArgs,
            "input and output",
            only=("overwrite",),
            helps={
                "overwrite": "replace an existing --output instead of resuming it; without it, a "
                "file this command did not write is refused"
            },
        ),
        **generation_parts("generation"),
        "upstream": endpoint_part(
            "upstream",
            "upstream model (instead of --model_name_or_path)",
            api_key_env="OPENAI_API_KEY",
        ),
        "launcher": LAUNCHER,
    }

    model: ModelArgs
    files: FilesArgs
    saving: OutputArgs
    generation: GenerationArgs
    seeding: DataArgs
    loading: LoadingArgs
    remote_code: ModelArgs
    upstream: EndpointArgs
    launcher: DistArgs


@dataclass(frozen=True)
class CorrectConfig(CommandConfig):
    """``aligner correct``: a trained aligner corrects upstream answers."""

    PROG = "aligner correct"
    DESCRIPTION = "Correct upstream answers with a trained aligner."
    PARTS: ClassVar[dict[str, Part]] = {
        "model": Part(
            ModelArgs,
            "input and output",
            only=("model_name_or_path",),
            helps={"model_name_or_path": "the trained aligner checkpoint"},
        ),
        "files": Part(
            FilesArgs,
            "input and output",
            helps={
                "output": "JSONL written (and resumed) here: each input record plus its "
                "correction; an input's own correction field is kept as reference_correction"
            },
        ),
        "saving": Part(
            OutputArgs,
            "input and output",
            only=("overwrite",),
            helps={
                "overwrite": "replace an existing --output (and --preference_output) instead of "
                "resuming it; without it, a file this command did not write is refused"
            },
        ),
        "data": Part(
            DataArgs,
            "input and output",
            only=("prompt_template", "system_prompt"),
            defaults={"prompt_template": None},
            helps={
                "prompt_template": "prompt template name (correction, aligner-v1, chat) or "
                "file; default: the checkpoint's prompt_template.json",
                "system_prompt": "the aligner's system message with a chat template; default: "
                "the checkpoint's",
            },
        ),
        "correction": Part(CorrectionArgs, "input and output"),
        **generation_parts("generation"),
        "aligner": endpoint_part(
            "aligner", "the aligner on a vLLM or SGLang server, instead of loaded here"
        ),
        "launcher": LAUNCHER,
    }

    model: ModelArgs
    files: FilesArgs
    saving: OutputArgs
    data: DataArgs
    correction: CorrectionArgs
    generation: GenerationArgs
    seeding: DataArgs
    loading: LoadingArgs
    remote_code: ModelArgs
    aligner: EndpointArgs
    launcher: DistArgs


@dataclass(frozen=True)
class ServeConfig(CommandConfig):
    """``aligner serve``: an OpenAI-compatible endpoint whose replies an aligner corrects."""

    PROG = "aligner serve"
    DESCRIPTION = "Serve an OpenAI-compatible endpoint whose replies an aligner corrects."
    PARTS: ClassVar[dict[str, Part]] = {
        "model": Part(
            ModelArgs,
            "server",
            only=("model_name_or_path",),
            helps={"model_name_or_path": "the trained aligner folder"},
        ),
        "server": Part(ServerArgs, "server"),
        "limits": Part(LimitArgs, "limits: a request over one is refused with a 4xx"),
        # One retry, not five: a client waits on each, and the openai client retries a 502
        # itself; five with doubling back-off held an unreachable upstream's 502 for 31 s.
        "upstream": endpoint_part(
            "upstream",
            "the upstream model",
            concurrency=64,
            retries=1,
            api_key_env="OPENAI_API_KEY",
        ),
        **generation_parts("the aligner's decoding (--batch_size: most requests batched)"),
        "aligner": endpoint_part(
            "aligner", "the aligner on a vLLM or SGLang server, instead of loaded here"
        ),
    }

    model: ModelArgs
    server: ServerArgs
    limits: LimitArgs
    upstream: EndpointArgs
    generation: GenerationArgs
    seeding: DataArgs
    loading: LoadingArgs
    remote_code: ModelArgs
    aligner: EndpointArgs


LOSS = "loss of a checkpoint on correction data"


@dataclass(frozen=True)
class EvalConfig(CommandConfig):
    """``aligner eval``: whether corrections helped, and a checkpoint's loss."""

    PROG = "aligner eval"
    DESCRIPTION = "Evaluate an aligner: whether its corrections helped, its loss on data."
    PARTS: ClassVar[dict[str, Part]] = {
        "files": Part(
            FilesArgs,
            only=("output",),
            optional=("output",),
            helps={"output": "also write the JSON report here"},
        ),
        "seeding": Part(
            DataArgs,
            only=("seed",),
            helps={"seed": "seed of the bootstrap and the judge's A/B order"},
        ),
        "saving": Part(
            OutputArgs,
            only=("overwrite",),
            helps={
                "overwrite": "replace a --scores_output or --judge_output this command did not "
                "write, or start over one written with other settings"
            },
        ),
        "predicted": Part(PredictionsArgs, "metrics of generated corrections"),
        "scoring": Part(ScoringArgs, "reward and cost models (on --predictions)"),
        "judge": endpoint_part(
            "judge", "LLM judge (on --predictions)", api_key_env="OPENAI_API_KEY"
        ),
        "judging": Part(JudgeArgs, "LLM judge: prompt and output"),
        "model": Part(
            ModelArgs,
            LOSS,
            only=("model_name_or_path",),
            optional=("model_name_or_path",),
            helps={"model_name_or_path": "the trained aligner checkpoint"},
        ),
        "data": Part(
            DataArgs,
            LOSS,
            only=(
                "eval_datasets",
                "prompt_template",
                "system_prompt",
                "max_length",
                "dataset_module",
                "lenient_data",
                "data_cache_dir",
            ),
            defaults={"prompt_template": None},
            helps={
                "eval_datasets": "correction datasets (question, answer, correction), as for "
                "training",
                "prompt_template": "prompt template; default: the checkpoint's own",
                "system_prompt": "the aligner's system message with a chat template; default: "
                "the checkpoint's",
            },
        ),
        "generation": Part(
            GenerationArgs,
            LOSS,
            only=("batch_size",),
            helps={
                "batch_size": "samples per forward pass, for the loss and the scorers (%(default)s)"
            },
        ),
        "loading": Part(LoadingArgs, LOSS),
        "remote_code": Part(ModelArgs, LOSS, only=("trust_remote_code",)),
        "launcher": LAUNCHER,
    }

    files: FilesArgs
    seeding: DataArgs
    saving: OutputArgs
    predicted: PredictionsArgs
    scoring: ScoringArgs
    judge: EndpointArgs
    judging: JudgeArgs
    model: ModelArgs
    data: DataArgs
    generation: GenerationArgs
    loading: LoadingArgs
    remote_code: ModelArgs
    launcher: DistArgs


@dataclass(frozen=True)
class DumpArgs:
    dump: str | None = option(None, 'write each sample as {"input_ids", "labels"}')


@dataclass(frozen=True)
class DataConfig(CommandConfig):
    """``aligner data``: the training data checked, described, and optionally dumped."""

    PROG = "aligner data"
    DESCRIPTION = "Validate correction data and show exactly what the model will train on."
    PARTS: ClassVar[dict[str, Part]] = {
        "model": Part(ModelArgs, only=("model_name_or_path", "trust_remote_code")),
        "layout": Part(
            LayoutArgs,
            only=("per_device_train_batch_size",),
            helps={"per_device_train_batch_size": "batch size used to estimate the padding share"},
        ),
        "dumping": Part(DumpArgs),
        "saving": Part(
            OutputArgs,
            only=("overwrite",),
            helps={"overwrite": "let --dump replace an existing file"},
        ),
        "data": Part(DataArgs, "data", helps={"seed": "seed of proportion sampling"}),
    }

    model: ModelArgs
    layout: LayoutArgs
    dumping: DumpArgs
    saving: OutputArgs
    data: DataArgs
