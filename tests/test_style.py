"""The code style and type gates run with the tests, so CI (.ci/run runs the README's test
command) enforces what the before-stop hook checks, and `mypy` keeps bot/ typed."""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUFF = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
UNDER_CI = bool(os.environ.get("CI"))


@pytest.mark.skipif(RUFF is None, reason="ruff is not installed")
@pytest.mark.parametrize("args", [["check", "."], ["format", "--check", "."]])
def test_ruff_is_clean(args: list[str]) -> None:
    result = subprocess.run([RUFF, *args], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(
    not UNDER_CI and importlib.util.find_spec("mypy") is None, reason="mypy is not installed"
)
def test_mypy_is_clean() -> None:
    """bot/ type-checks (configuration in pyproject.toml [tool.mypy]); under CI it must run."""
    result = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
