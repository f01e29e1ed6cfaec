"""Helpers shared by the test suite (ports, certificates, external tools)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from tests.servers.net import free_port

__all__ = ["free_port", "venv_tool"]


def venv_tool(name: str) -> str:
    """Path of a console tool installed beside the running interpreter (or on PATH)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} is not installed (make install)")
    return found
