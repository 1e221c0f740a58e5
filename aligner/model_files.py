"""Where a model or tokenizer is read from (a local folder or a Hub id), and the one line a
user sees when it cannot be read."""

from __future__ import annotations

import pickle
from pathlib import Path

from huggingface_hub.utils import HFValidationError, validate_repo_id
from safetensors import SafetensorError

from aligner.errors import RunFailure, UserError, one_line

PICKLED_WEIGHTS_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    IndexError,
    KeyError,
    UnicodeDecodeError,
)
"""What ``torch.load`` raises for a ``.bin`` that holds no weights: random bytes (its weights-only
unpickler stops on whichever opcode or memo lookup fails first: about one file in twelve raises
one of the last three), an empty file, or a pickle that would run code (the weights-only loader
transformers uses refuses to run it)."""
LOAD_ERRORS = (OSError, ValueError, SafetensorError, *PICKLED_WEIGHTS_ERRORS)
"""What transformers raises for a folder or file that does not load: a missing or unreadable
file, a config it cannot parse, truncated or corrupt safetensors or pickled weights."""
MODEL_CONFIG_FILES = ("config.json",)
"""What a folder needs for transformers to build a model from it."""
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tekken.json", "vocab.json", "vocab.txt")
"""Any one of these lets transformers build a fast tokenizer."""


class CheckpointError(RunFailure):
    """A model folder that exists but does not load: truncated or corrupt weights."""


def check_source(name: str, flag: str) -> None:
    """Refuse a name that can only be a local folder and is not one, before transformers
    takes it for a Hub id and answers with a message about repository names or the network."""
    path = Path(name).expanduser()
    if path.is_dir():
        return
    if path.exists():
        raise UserError(f"{flag} {name}: is a file, not a model folder")
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise UserError(f"{flag} {name}: no such folder") from None


def load_failure(name: str, flag: str, error: BaseException, needs: tuple[str, ...]) -> str:
    """One line for a model or tokenizer that did not load: a folder without any of the files
    it ``needs`` says so (transformers' own message names neither the folder's problem nor the
    file); a Hub id that did not resolve also says no local folder has that name, since that is
    what a typing mistake usually means."""
    folder = Path(name).expanduser()
    if folder.is_dir() and not any((folder / file).is_file() for file in needs):
        files = needs[0] if len(needs) == 1 else f"file it needs ({', '.join(needs)})"
        return f"{flag} {name}: the folder holds no {files}"
    files = sorted(folder.glob("*.bin")) if folder.is_dir() else []
    if isinstance(error, PICKLED_WEIGHTS_ERRORS) and files:
        # torch's own message suggests loading with weights_only=False: the one thing not to do.
        named = ", ".join(str(path) for path in files)
        return (
            f"{flag} {name}: {named} does not load as PyTorch weights (corrupt, or a pickle "
            "holding code, which was not run)"
        )
    line = f"{flag} {name}: {first_sentence(error)}"
    if not folder.is_dir():
        line += f" (and no folder {name} exists here)"
    return line


def first_sentence(error: BaseException) -> str:
    """The first sentence of an error's first line: transformers' messages go on to list every
    model type or every option it knows."""
    return one_line(error).split(". ")[0].rstrip(".")


def check_embedding_rows(source: str, tokenizer_size: int, rows: int, remedy: str = "") -> None:
    """Refuse a tokenizer with more tokens than the model has embedding rows: a token id past
    the table fails only in the forward pass, as an IndexError from deep inside torch."""
    if tokenizer_size > rows:
        raise UserError(
            f"{source}: the tokenizer has {tokenizer_size} tokens but the model only {rows} "
            f"embedding rows (ids {rows} and up would fail in the forward pass){remedy}"
        )
