"""The committed stubs are exactly what ``make proto`` generates from proto/."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STUB_DIR = REPO / "virtrigaud" / "provider" / "v1"


def test_committed_stubs_equal_a_fresh_generation(tmp_path: Path) -> None:
    subprocess.run([str(REPO / "scripts" / "gen-proto.sh"), str(tmp_path)], check=True, cwd=REPO)
    fresh_dir = tmp_path / "virtrigaud" / "provider" / "v1"
    fresh = {p.name: p.read_bytes() for p in fresh_dir.iterdir()}
    committed = {p.name: p.read_bytes() for p in STUB_DIR.iterdir() if p.name in fresh}
    assert set(fresh) == {
        "provider_pb2.py",
        "provider_pb2.pyi",
        "provider_pb2_grpc.py",
        "provider_pb2_grpc.pyi",
    }
    stale = sorted(name for name in fresh if committed.get(name) != fresh[name])
    assert not stale, f"stubs out of date, run `make proto`: {stale}"


def test_proto_dir_is_not_a_python_package() -> None:
    # A top-level package named `proto` would shadow proto-plus (google-cloud libraries).
    assert not (REPO / "proto" / "__init__.py").exists()
    assert not list((REPO / "proto").rglob("*.py"))
