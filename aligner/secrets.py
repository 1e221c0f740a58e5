"""Secret values from the environment, and masking them in anything the trainer writes or prints."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

SECRET_VARIABLES = ("WANDB_API_KEY", "HF_TOKEN")
SECRET_SUFFIXES = ("_TOKEN", "_KEY", "_SECRET", "_PASSWORD")
REDACTED = "<redacted>"
MIN_SECRET_LENGTH = 4
"""Shorter values (``1``, ``no``) would mask innocent text and protect nothing."""


def is_secret_variable(name: str) -> bool:
    upper = name.upper()
    return upper in SECRET_VARIABLES or upper.endswith(SECRET_SUFFIXES)


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """The values of secret-named environment variables, longest first (so that a secret
    containing another is masked whole)."""
    environ = os.environ if environ is None else environ
    values = {
        value
        for name, value in environ.items()
        if is_secret_variable(name) and len(value) >= MIN_SECRET_LENGTH
    }
    return sorted(values, key=len, reverse=True)


def redact(value: Any, environ: Mapping[str, str] | None = None) -> Any:
    """``value`` with every secret from the environment replaced by ``<redacted>``, looking into
    strings, lists, tuples and dict keys and values."""
    secrets = secret_values(environ)
    return _redact(value, secrets) if secrets else value


def _redact(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {_redact(k, secrets): _redact(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_redact(item, secrets) for item in value)
    return value
