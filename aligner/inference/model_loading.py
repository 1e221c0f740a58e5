"""Loading a checkpoint for inference: the flags, device, dtype, model and prompt template, and
which weights a run's output came from."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from aligner.config import ArgumentError, CommandConfig
from aligner.model_files import (
    LOAD_ERRORS,
    MODEL_CONFIG_FILES,
    CheckpointError,
    check_embedding_rows,
    check_source,
    load_failure,
)
from aligner.prompts import TEMPLATE_FILENAME, Template, TemplateError, get_template

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".index.json")


def resolved_name(model_name_or_path: str) -> str:
    """A local folder's absolute path; a Hub id as given."""
    path = Path(model_name_or_path)
    return str(path.resolve()) if path.exists() else model_name_or_path


def weights_fingerprint(model_name_or_path: str) -> str | None:
    """A hash of the name, size and modification time of each weight file in a checkpoint
    folder: new weights saved at the same path change it. None for a name that is no folder."""
    folder = Path(model_name_or_path)
    if not folder.is_dir():
        return None
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name.endswith(WEIGHT_SUFFIXES):
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


def model_source(model_name_or_path: str) -> dict[str, str | None]:
    """Which model a run's output came from, for its settings file: the name and its weights."""
    return {
        "model": resolved_name(model_name_or_path),
        "weights": weights_fingerprint(model_name_or_path),
    }


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` picks this rank's GPU when there is one, else the CPU; ``cuda`` is this rank's."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ArgumentError(f"--device {name!r}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ArgumentError(f"--device {name!r}: no CUDA device is available")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` is bfloat16 (else float16) on a GPU and float32 on the CPU, where half is slow."""
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name not in DTYPES:
        raise ArgumentError(f"--dtype {name!r}: use auto or one of {', '.join(DTYPES)}")
    return DTYPES[name]


def checkpoint_template(
    model_name_or_path: str, override: str | None = None, system_prompt: str | None = None
) -> Template:
    """The template to render prompts with: ``override`` if given, else the checkpoint's own;
    ``system_prompt`` replaces a chat template's system message.

    A checkpoint without a saved template is an error rather than a silent default, because
    a prompt that differs from the training prompt makes an aligner ramble or repeat itself.
    """
    if override:
        return get_template(override, system_prompt)
    path = Path(model_name_or_path) / TEMPLATE_FILENAME
    if not path.is_file():
        raise TemplateError(
            f"{model_name_or_path} has no {TEMPLATE_FILENAME}: pass --template NAME_OR_FILE "
            "(e.g. --template aligner-v1 for the released aligner-7b-v1.0)"
        )
    return get_template(str(path), system_prompt)


def load_model(args: CommandConfig, tokenizer_size: int, local_rank: int = 0) -> PreTrainedModel:
    """The model that ``args`` name, in evaluation mode on its device (this rank's GPU); its
    embeddings must hold every token of its tokenizer's ``tokenizer_size``."""
    flag = "--model_name_or_path"
    check_source(args.model_name_or_path, flag)
    device = resolve_device(args.device, local_rank)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            args.model_name_or_path,
            dtype=resolve_dtype(args.dtype, device),
            trust_remote_code=args.trust_remote_code,
        )
    except LOAD_ERRORS as error:
        raise CheckpointError(
            load_failure(args.model_name_or_path, flag, error, MODEL_CONFIG_FILES)
        ) from None
    rows = model.get_input_embeddings().num_embeddings
    check_embedding_rows(f"{flag} {args.model_name_or_path}", tokenizer_size, rows)
    return model.to(device).eval()
