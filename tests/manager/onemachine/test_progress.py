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
    # one line for the migration and one per disk, redrawn over the three drawn before
    assert text.count("\x1b[3F") == 1
    assert text.count("\x1b[2K") == 6


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


def test_disk_lines_have_their_own_bar_bytes_rate_and_eta() -> None:
    progress = Progress(io.StringIO(), tty=True)

    def obj(vda_done: int) -> dict[str, Any]:
        made = moving(vda_done, 10)
        made["status"]["disks"][0].update(phase="Exporting", bytesTransferred=vda_done)
        made["status"]["disks"][1].update(
            phase="Importing", bytesTransferred=2 * GiB, message="import converting (40%)"
        )
        return made

    progress.disk_lines(obj(GiB), now=50.0)
    vda, vdb = progress.disk_lines(obj(2 * GiB), now=60.0)  # vda: 1 GiB in 10 s
    assert "disk vda" in vda and "Exporting" in vda
    assert "[#####...............]  25%" in vda and "2.0GiB/8.0GiB" in vda
    assert "102.4MiB/s" in vda and "ETA 1m00s" in vda
    assert "disk vdb" in vdb and "100%" in vdb and "import converting (40%)" in vdb


def test_summary_names_time_bytes_checksums_and_the_target() -> None:
    done = moving(3 * GiB, 100, phase="Ready")
    done["status"].update(startTime="2026-11-26T10:00:00Z", completionTime="2026-11-26T10:02:05Z")
    done["status"]["disks"][0].update(contentChecksum="sha256:" + "ab" * 32, importedDiskId="p/a")
    target = factory.vm("web-new")
    target["status"] = {"id": "uuid-1"}
    lines = Progress.summary(done, target)
    assert lines[0] == "default/web-move: Ready"
    assert "  time        2m05s" in lines
    assert "  transferred 3.0GiB (3221225472 bytes)" in lines
    assert f"  disk vda: sha256:{'ab' * 32} -> p/a" in lines
    assert "  target VM   VirtualMachine/default/web-new (id uuid-1)" in lines
