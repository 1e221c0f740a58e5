"""Packaging: the conda recipe matches pyproject.toml, the wheel holds the package alone, and the
data side never loads DeepSpeed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from setuptools.config.pyprojecttoml import apply_configuration
from setuptools.dist import Distribution

from ..conftest import REPO_ROOT


def test_conda_recipe_lists_the_same_dependencies_as_pyproject() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    recipe = yaml.safe_load((REPO_ROOT / "conda-recipe.yaml").read_text())
    pip_section = next(d["pip"] for d in recipe["dependencies"] if isinstance(d, dict))
    assert sorted(pip_section) == sorted(project["dependencies"])
    python = next(
        d for d in recipe["dependencies"] if isinstance(d, str) and d.startswith("python")
    )
    assert project["requires-python"] == ">=3.10" and python.split("=")[-1] >= "3.10"


def test_the_wheel_holds_the_package_and_not_the_benchmarks() -> None:
    # The packages setuptools puts in the wheel, found as `pip install .` finds them.
    packages = set(apply_configuration(Distribution(), REPO_ROOT / "pyproject.toml").packages)
    assert {"aligner", "aligner.commands", "aligner.training"} <= packages
    assert {name.split(".")[0] for name in packages} == {"aligner"}  # no benchmarks, no tests
    assert "aligner.bench" not in packages


def test_data_pipeline_imports_without_deepspeed() -> None:
    code = (
        "import sys, aligner.datasets, aligner.prompts, aligner.datasets.pipeline, "
        "aligner.commands.data, aligner.datasets.collate; "
        "print('deepspeed' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_aligner_command_is_installed() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "aligner.cli", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "aligner data" not in result.stderr
    assert "data" in result.stdout and "train" in result.stdout


def test_the_code_runs_on_the_oldest_python_the_project_allows() -> None:
    """vermin reads every module for what it needs of Python (``typing.Self``,
    ``hashlib.file_digest``... are 3.11); the suite itself runs on one newer Python only."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    oldest = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    target = oldest["requires-python"].removeprefix(">=")
    flags = [f"--target={target}-", "--violations", "--no-tips", "--eval-annotations"]
    found = subprocess.run(
        [Path(sys.executable).with_name("vermin"), *flags, "aligner", "benchmarks"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert found.returncode == 0, found.stdout
