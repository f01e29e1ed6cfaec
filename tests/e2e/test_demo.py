"""`make demo`'s script, run as a user runs it: it must migrate, verify and leave no
server behind (twice in a row would work the same: it keeps no state)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _demo_processes() -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "virtrigaud-demo-" in cmdline:
            found.append(f"{proc.name}: {cmdline[:200]}")
    return found


def test_demo_migrates_vsphere_to_libvirt_verifies_and_cleans_up() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo.py")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, f"{out[-6000:]}\n{done.stderr[-4000:]}"
    assert "Phase:                     Ready" in out  # virtrigaud describe
    assert out.count("== source") == 2 and "!= source" not in out  # both disks' data
    assert "powered on: running=True" in out
    assert "objects left in the S3 bucket after cleanup: 0" in out
    assert "migrated and verified" in out
    assert _demo_processes() == []
