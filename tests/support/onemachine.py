"""Driving ``virtrigaud run`` (one-machine mode) from a test, as a user would.

``run`` writes the manifests into ``<workdir>/manifests/all.yaml`` and starts
``virtrigaud run -f`` with its store at ``<workdir>/state.db`` (loopback storage
endpoints allowed, as the SSRF guard requires); ``cli`` runs another subcommand
against that store; ``migration_status`` reads a VMMigration's status while the run
goes on (``{}`` before it is loaded or after it is gone).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from manager.store.sqlite import SQLiteStore
from virtrigaud import errors

REPO = Path(__file__).resolve().parents[2]


def run(workdir: Path, manifests: list[Any], timeout: float = 900) -> subprocess.Popen[str]:
    (workdir / "manifests").mkdir(exist_ok=True)
    (workdir / "manifests" / "all.yaml").write_text(yaml.safe_dump_all(manifests))
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "virtrigaud.cli",
            "run",
            "-f",
            str(workdir / "manifests"),
            "--store",
            str(workdir / "state.db"),
            "--timeout",
            str(timeout),
        ],
        cwd=REPO,
        env={
            **os.environ,
            "VIRTRIGAUD_STORAGE_ALLOWED_HOSTS": "127.0.0.1",
            "PYTHONPATH": str(REPO),
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def cli(workdir: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "virtrigaud.cli", *args, "--store", str(workdir / "state.db")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def migration_status(store_path: Path, name: str, namespace: str = "default") -> dict[str, Any]:
    if not store_path.exists():
        return {}
    store = SQLiteStore(store_path)
    try:
        obj = store.get("VMMigration", namespace, name)
    except errors.NotFound:
        obj = {}
    finally:
        store.close()
    return dict(obj.get("status") or {})
