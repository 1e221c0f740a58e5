"""aligner: train models that correct an upstream model's answers."""

from __future__ import annotations

__version__ = "0.1.0"
