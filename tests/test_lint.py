"""ruff and mypy are part of the suite, so `make test` fails on a lint regression."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support import venv_tool

REPO = Path(__file__).resolve().parents[1]


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False, timeout=600)


def test_ruff_check_is_clean() -> None:
    done = _run(venv_tool("ruff"), "check", ".")
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_format_is_clean() -> None:
    done = _run(venv_tool("ruff"), "format", "--check", ".")
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_is_clean() -> None:
    done = _run(venv_tool("mypy"))
    assert done.returncode == 0, done.stdout + done.stderr
