"""The live progress of `virtrigaud run`: TTY lines and plain transition lines."""

from __future__ import annotations

import io
from typing import Any

from manager.onemachine.progress import Progress, human_bytes, human_eta
from tests.manager.store import factory

GiB = 1 << 30


def moving(done: int, progress: int, phase: str = "Transferring") -> dict[str, Any]:
    obj = factory.migration("web-move")
    obj["status"] = {
        "phase": phase,
        "progress": progress,
        "bytesTransferred": done,
        "disks": [{"name": "vda", "totalBytes": 8 * GiB}, {"name": "vdb", "totalBytes": 2 * GiB}],
    }
    return obj


def test_units() -> None:
    assert human_bytes(512) == "512B"
    assert human_bytes(1536) == "1.5KiB"
    assert human_bytes(5 * GiB) == "5.0GiB"
    assert human_eta(59) == "59s"
    assert human_eta(125) == "2m05s"
    assert human_eta(3 * 3600 + 120) == "3h02m"


def test_migration_line_has_phase_bar_bytes_rate_and_eta() -> None:
    progress = Progress(io.StringIO(), tty=True)
    first = progress.migration_line(moving(2 * GiB, 20), now=100.0)
    assert "default/web-move" in first and "Transferring" in first
    assert "[####................]  20%" in first
    assert "2.0GiB/10.0GiB" in first
    assert "/s" not in first  # one sample: no rate yet
    second = progress.migration_line(moving(3 * GiB, 30), now=110.0)  # 1 GiB in 10 s
    assert "102.4MiB/s" in second
    assert "ETA 1m10s" in second  # 7 GiB left at 102.4 MiB/s


def test_tty_redraws_in_place() -> None:
    out = io.StringIO()
    progress = Progress(out, tty=True)
    progress.update([moving(0, 0)], [])
    progress.update([moving(GiB, 10)], [])
    text = out.getvalue()
    assert text.count("\x1b[1F") == 1  # moved up over the one line drawn before
    assert text.count("\x1b[2K") == 2


def test_plain_output_prints_transitions_only() -> None:
    out = io.StringIO()
    progress = Progress(out, tty=False)
    for done, percent, phase in [
        (0, 0, "Exporting"),
        (0, 2, "Exporting"),
        (GiB, 12, "Transferring"),
        (GiB, 15, "Transferring"),
        (2 * GiB, 21, "Transferring"),
        (10 * GiB, 100, "Ready"),
    ]:
        progress.update([moving(done, percent, phase)], [])
    lines = out.getvalue().splitlines()
    assert [line.split(": ", 1)[1] for line in lines] == [
        "Exporting 0%",
        "Transferring 12%",
        "Transferring 21%",
        "Ready 100%",
    ]
    assert all("vmmigration/web-move (default)" in line for line in lines)
