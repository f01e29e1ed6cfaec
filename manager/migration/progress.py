"""Progress numbers and the messages that carry them.

``status.progress`` (0-100) is weighted by bytes: every disk weighs its virtual size and
contributes the mean of its export fraction (the upload's bytes done / total; 0 while
the export is still reading or converting; 1 once exported) and its import fraction
(the import task's percent; 1 once imported). During the data phases the percentage
is ``floor(99 * weighted fraction)``; Creating and ValidatingTarget report 99, Ready
100. A disk sent back to export by a retry counts from zero again (so progress can go
down: it is a measurement, not a promise).

``status.bytesTransferred`` is the sum of the bytes uploaded to intermediate storage
(the reference's example: 335GB transferred of a 500GB upload at 67%).

Sizes in messages use decimal units as the reference does ("4.5GB/10GB"); the ETA
is the remaining bytes over the current aggregate rate, in whole minutes above one
minute ("ETA: 15m").
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from manager.api import DiskMigrationStatus, DiskPhase
from manager.migration.model import TaskView
from virtrigaud.provider.v1 import provider_pb2 as pb

UPLOAD_STAGES = frozenset({"uploading"})
CONVERT_STAGES = frozenset({"converting"})
_UNITS = (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3))


def human_bytes(count: int) -> str:
    """10737418240 -> ``11GB``; 4500000000 -> ``4.5GB``; 512 -> ``512B``."""
    for unit, size in _UNITS:
        if count >= size:
            value = count / size
            text = f"{value:.1f}".removesuffix(".0") if value < 10 else f"{round(value)}"
            return f"{text}{unit}"
    return f"{count}B"


def disks(count: int) -> str:
    """``1 disk``, ``3 disks``."""
    return f"{count} disk" if count == 1 else f"{count} disks"


def human_eta(seconds: float) -> str:
    """Coarse remaining time: ``45s``, ``15m``, ``1h5m``."""
    total = max(0, math.ceil(seconds))
    if total < 60:
        return f"{total}s"
    minutes = math.ceil(total / 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes}m" if hours and minutes else f"{hours}h" if hours else f"{minutes}m"


def task_of(tasks: Mapping[str, TaskView], ref: str | None) -> pb.Task | None:
    view = tasks.get(ref) if ref else None
    return view if isinstance(view, pb.Task) else None


def uploading(disk: DiskMigrationStatus, tasks: Mapping[str, TaskView]) -> bool:
    task = task_of(tasks, disk.export_task_ref)
    return disk.phase is DiskPhase.EXPORTING and task is not None and task.stage in UPLOAD_STAGES


def export_fraction(disk: DiskMigrationStatus, tasks: Mapping[str, TaskView]) -> float:
    if disk.phase in (DiskPhase.EXPORTED, DiskPhase.IMPORTING, DiskPhase.IMPORTED):
        return 1.0
    if uploading(disk, tasks) and disk.total_bytes:
        return min(1.0, (disk.bytes_transferred or 0) / disk.total_bytes)
    return 0.0


def import_fraction(disk: DiskMigrationStatus, tasks: Mapping[str, TaskView]) -> float:
    if disk.phase is DiskPhase.IMPORTED:
        return 1.0
    task = task_of(tasks, disk.import_task_ref)
    if disk.phase is DiskPhase.IMPORTING and task is not None:
        return min(1.0, task.percent / 100.0)
    return 0.0


def data_progress(disks: Iterable[DiskMigrationStatus], tasks: Mapping[str, TaskView]) -> int:
    """``floor(99 * sum(w * (export + import) / 2) / sum(w))``, w = disk size."""
    weighted = total = 0.0
    for disk in disks:
        weight = float(disk.size_bytes or disk.total_bytes or 1)
        fraction = (export_fraction(disk, tasks) + import_fraction(disk, tasks)) / 2
        weighted += weight * fraction
        total += weight
    return math.floor(99 * weighted / total) if total else 0


@dataclass(frozen=True)
class Throughput:
    done: int
    total: int
    rate: float

    @property
    def percent(self) -> int:
        return math.floor(100 * self.done / self.total) if self.total else 0

    def describe(self, verb: str, where: str) -> str:
        """``Uploading to S3 (67% complete, 335GB/500GB, ETA: 15m)``."""
        text = f"{self.percent}% complete, {human_bytes(self.done)}/{human_bytes(self.total)}"
        if self.rate > 0 and self.total > self.done:
            text += f", ETA: {human_eta((self.total - self.done) / self.rate)}"
        return f"{verb} {where} ({text})"


def upload_throughput(
    disks: Iterable[DiskMigrationStatus], tasks: Mapping[str, TaskView]
) -> Throughput:
    done = total = 0
    rate = 0.0
    for disk in disks:
        size = disk.total_bytes or disk.size_bytes or 0
        total += size
        if disk.phase in (DiskPhase.EXPORTED, DiskPhase.IMPORTING, DiskPhase.IMPORTED):
            done += size
        elif disk.phase is DiskPhase.EXPORTING:
            done += disk.bytes_transferred or 0  # set only while uploading
            task = task_of(tasks, disk.export_task_ref)
            rate += task.bytes_per_second if task else 0.0
    return Throughput(done, total, rate)


def download_throughput(
    disks: Iterable[DiskMigrationStatus], tasks: Mapping[str, TaskView]
) -> Throughput:
    done = total = 0
    rate = 0.0
    for disk in disks:
        size = disk.total_bytes or disk.size_bytes or 0
        total += size
        if disk.phase is DiskPhase.IMPORTED:
            done += size
            continue
        task = task_of(tasks, disk.import_task_ref)
        if disk.phase is DiskPhase.IMPORTING and task is not None:
            done += math.floor(size * min(1.0, task.percent / 100.0))
            rate += task.bytes_per_second
    return Throughput(done, total, rate)


def crossed(before: int, after: int, marks: tuple[int, ...] = (25, 50, 75)) -> list[int]:
    """The progress marks passed between two readings (for TransferProgress events)."""
    return [mark for mark in marks if before < mark <= after]
