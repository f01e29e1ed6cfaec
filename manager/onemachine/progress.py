"""What ``virtrigaud run`` shows while it works.

On a terminal: one live line per VMMigration (phase, a bar with ``status.progress``,
bytes moved of the disks' total, the rate measured from successive
``status.bytesTransferred`` samples, ETA) and under it one line per disk (its phase,
a bar of its own bytes, rate and ETA while it uploads, else what it is doing), redrawn
in place; with no migrations, one line per VirtualMachine. Otherwise (a pipe, a log
file): a plain line per transition (phase change, or another 10 % of progress).
``summary`` describes a finished migration: time taken, bytes, each disk's checksum,
the target VM.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from manager.store.base import Obj, ObjectKey

BAR = 20
RATE_WINDOW = 15.0


def human_bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}TiB"  # pragma: no cover - loop always returns


def human_eta(seconds: float) -> str:
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


@dataclass
class _Track:
    phase: str = ""
    decile: int = -1
    samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=64))

    def sample(self, now: float, done: int) -> float | None:
        """Record ``done`` bytes at ``now``; the rate over the last RATE_WINDOW s."""
        self.samples.append((now, done))
        while self.samples and now - self.samples[0][0] > RATE_WINDOW:
            self.samples.popleft()
        return self.rate()

    def rate(self) -> float | None:
        if len(self.samples) < 2:
            return None
        (t0, b0), (t1, b1) = self.samples[0], self.samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 and b1 >= b0 else None


def _meter(percent: int, done: int, total: int, rate: float | None) -> list[str]:
    """Bar, bytes of total, rate and ETA (the parts that are known)."""
    filled = BAR * percent // 100
    parts = [f"[{'#' * filled}{'.' * (BAR - filled)}] {percent:3d}%"]
    if done or total:
        parts.append(f"{human_bytes(done)}/{human_bytes(total)}" if total else human_bytes(done))
    if rate:
        parts.append(f"{human_bytes(rate)}/s")
        if total > done:
            parts.append(f"ETA {human_eta((total - done) / rate)}")
    return parts


def _status(obj: Obj) -> dict[str, Any]:
    return dict(obj.get("status") or {})


def _total_bytes(status: dict[str, Any]) -> int:
    return sum(
        int(d.get("totalBytes") or d.get("sizeBytes") or 0) for d in status.get("disks") or []
    )


class Progress:
    def __init__(self, out: TextIO, tty: bool) -> None:
        self.out = out
        self.tty = tty
        self._tracks: dict[ObjectKey, _Track] = {}
        self._drawn = 0

    def _track(self, key: ObjectKey) -> _Track:
        return self._tracks.setdefault(key, _Track())

    def migration_line(self, obj: Obj, now: float) -> str:
        key = ObjectKey.of(obj)
        status = _status(obj)
        done = int(status.get("bytesTransferred") or 0)
        rate = self._track(key).sample(now, done)
        percent = int(status.get("progress") or 0)
        head = [f"{key.namespace}/{key.name}", f"{status.get('phase') or 'Pending':<16}"]
        return "  ".join(head + _meter(percent, done, _total_bytes(status), rate))

    def disk_lines(self, obj: Obj, now: float) -> list[str]:
        """One line per disk of a migration: its own bar, bytes, rate and ETA."""
        key = ObjectKey.of(obj)
        lines = []
        for disk in _status(obj).get("disks") or []:
            name = str(disk.get("name"))
            done = int(disk.get("bytesTransferred") or 0)
            total = int(disk.get("totalBytes") or disk.get("sizeBytes") or 0)
            rate = self._track(ObjectKey("disk", f"{key}", name)).sample(now, done)
            phase = str(disk.get("phase") or "Pending")
            percent = min(100, 100 * done // total) if total else 0
            if phase in ("Exported", "Importing", "Imported"):
                percent = 100  # the upload is done; the message says what follows
            parts = [f"  disk {name:<8}", f"{phase:<10}", *_meter(percent, done, total, rate)]
            if phase != "Exporting" and disk.get("message"):
                parts.append(str(disk["message"]))
            lines.append("  ".join(parts))
        return lines

    @staticmethod
    def summary(obj: Obj, target: Obj | None) -> list[str]:
        """What a finished migration did, for the end of a run."""
        key = ObjectKey.of(obj)
        status = _status(obj)
        lines = [f"{key.namespace}/{key.name}: {status.get('phase') or 'Pending'}"]
        start, end = status.get("startTime"), status.get("completionTime")
        if start and end:
            took = datetime.fromisoformat(end) - datetime.fromisoformat(start)
            lines.append(f"  time        {human_eta(took.total_seconds())}")
        moved = int(status.get("bytesTransferred") or 0)
        lines.append(f"  transferred {human_bytes(moved)} ({moved} bytes)")
        for disk in status.get("disks") or []:
            checksum = disk.get("contentChecksum") or disk.get("checksum") or "-"
            target_disk = disk.get("importedDiskId") or "-"
            lines.append(f"  disk {disk.get('name')}: {checksum} -> {target_disk}")
        if target is not None:
            vm_id = (target.get("status") or {}).get("id") or "-"
            lines.append(f"  target VM   {ObjectKey.of(target)} (id {vm_id})")
        if status.get("phase") == "Failed" and status.get("message"):
            lines.append(f"  reason      {status['message']}")
        return lines

    @staticmethod
    def vm_line(obj: Obj) -> str:
        key = ObjectKey.of(obj)
        status = _status(obj)
        power = status.get("powerState") or "-"
        return (
            f"virtualmachine {key.namespace}/{key.name}  {status.get('phase') or 'Pending':<12} "
            f"power {power:<8} {status.get('message') or ''}"
        )

    def update(self, migrations: Sequence[Obj], vms: Sequence[Obj]) -> None:
        now = time.monotonic()
        if self.tty:
            lines = [
                line
                for o in migrations
                for line in (self.migration_line(o, now), *self.disk_lines(o, now))
            ] or [self.vm_line(o) for o in vms]
            self._redraw(lines)
            return
        for obj in migrations:
            self._transition(obj, "vmmigration", with_progress=True)
        for obj in vms:
            self._transition(obj, "virtualmachine", with_progress=False)

    def _redraw(self, lines: list[str]) -> None:
        if self._drawn:
            self.out.write(f"\x1b[{self._drawn}F")
        for line in lines:
            self.out.write("\x1b[2K" + line + "\n")
        self._drawn = len(lines)
        self.out.flush()

    def _transition(self, obj: Obj, noun: str, *, with_progress: bool) -> None:
        key = ObjectKey.of(obj)
        status = _status(obj)
        track = self._track(key)
        phase = str(status.get("phase") or "Pending")
        percent = int(status.get("progress") or 0)
        decile = percent // 10 if with_progress else 0
        if phase == track.phase and decile <= track.decile:
            return
        stamp = datetime.now(UTC).strftime("%H:%M:%S")
        text = f"{stamp} {noun}/{key.name} ({key.namespace}): {phase}"
        if with_progress:
            text += f" {percent}%"
        if status.get("message"):
            text += f" - {status['message']}"
        self.out.write(text + "\n")
        self.out.flush()
        track.phase, track.decile = phase, decile

    def message(self, text: str) -> None:
        """A line above the live display (it is redrawn below)."""
        self._drawn = 0
        self.out.write(text + "\n")
        self.out.flush()
