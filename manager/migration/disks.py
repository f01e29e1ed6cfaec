"""The data phases: every disk exported to intermediate storage, then imported.

Every disk of the source VM except CD-ROMs has an entry in ``status.disks`` (the boot
disk first): its phase (Pending -> Exporting -> Exported -> Importing -> Imported), its
export and import task refs, the bytes uploaded, the object URL and format, the
transport checksum (``sha256:<hex>`` of the object, verified by the import) and the
content checksum (digest of the guest-visible data, when the source reports one), the
imported disk id and its ``attempt`` (1-based; part of its operation ids).

All exports are submitted at once (the source provider's worker pool bounds how many
run); imports start when every disk is exported (a barrier, so the Converting decision
is made once and the phases read in order). A restarted manager finds the task refs in
the status and polls them; nothing is re-submitted unless a task failed or was lost.

Phase while moving data (the least advanced disk decides):
Exporting while a disk is queued, reading or converting on the source; Transferring
once every unfinished export is uploading; Converting while an import converts on the
target; Importing otherwise. ``formats`` explains where conversion happens.

``status.checksum``: for one disk, that disk's transport checksum; for several, the
``sha256:`` of the manifest made of one line ``<disk name> sha256:<hex>\\n`` per disk in
``status.disks`` order (so it changes if any disk's object changes; each disk's own
digest is in ``status.disks[].checksum``). ``status.intermediateStorageURL`` is the
object URL for one disk, the folder holding all objects (ending in ``/``) for several.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from manager.api import DiskMigrationStatus, DiskPhase, MigrationPhase, Provider, VMMigration
from manager.migration import formats, naming, progress, retry
from manager.migration.context import Pass
from manager.migration.model import ExportDisk, ImportDisk, RpcFailure, TaskLost
from virtrigaud.provider.v1 import provider_pb2 as pb

EXPORT_DONE = frozenset({DiskPhase.EXPORTED, DiskPhase.IMPORTING, DiskPhase.IMPORTED})


@dataclass(frozen=True)
class Failure:
    disk: DiskMigrationStatus
    disposition: retry.Disposition
    failure: RpcFailure
    message: str
    importing: bool


def hexdigest(checksum: str | None) -> str:
    return (checksum or "").removeprefix("sha256:")


def combined_checksum(disks: Sequence[DiskMigrationStatus]) -> str | None:
    if not disks or any(not d.checksum for d in disks):
        return None
    if len(disks) == 1:
        return disks[0].checksum
    manifest = "".join(f"{d.name} {d.checksum}\n" for d in disks)
    return "sha256:" + hashlib.sha256(manifest.encode()).hexdigest()


def hint_for(migration: VMMigration, provider: Provider | None) -> str:
    """targetStorageHint, else the target Provider's default pool or datastore."""
    defaults = provider.spec.defaults if provider else None
    fallback = (defaults.storage_pool or defaults.datastore) if defaults else None
    return migration.spec.target_storage_hint or fallback or ""


def storage_hint(step: Pass) -> str:
    return hint_for(step.migration, step.obs.target_provider)


# -- starting --------------------------------------------------------------------------------


def source_disks(vm: pb.VM) -> list[pb.Disk]:
    """The disks to migrate: every disk but CD-ROMs, the boot disk first."""
    disks = [d for d in vm.disks if d.device != pb.DISK_DEVICE_CDROM]
    return sorted(disks, key=lambda d: not d.boot)


def init(step: Pass, vm: pb.VM, src: pb.Capabilities, tgt: pb.Capabilities) -> str | None:
    """Fill ``status.disks`` from the source VM; an error message if a disk cannot go."""
    desired = step.spec.target_disk_format.value if step.spec.target_disk_format else None
    entries: list[DiskMigrationStatus] = []
    for disk in source_disks(vm):
        plan = formats.choose(disk.format, desired, src, tgt)
        if isinstance(plan, str):
            return f"disk {disk.id}: {plan}"
        url = naming.object_url(
            step.spec.storage, naming.object_key(step.migration, disk.id, plan.object)
        )
        entries.append(
            DiskMigrationStatus(
                name=disk.id,
                id=disk.id,
                phase=DiskPhase.PENDING,
                size_bytes=disk.virtual_size_bytes,
                bytes_transferred=0,
                format=naming.api_format(plan.target),
                intermediate_storage_url=url,
                attempt=1,
            )
        )
    if not entries:
        return "the source VM has no disk to migrate"
    step.status.disks = entries
    first = entries[0].intermediate_storage_url or ""
    step.status.intermediate_storage_url = (
        first if len(entries) == 1 else first.rsplit("/", 1)[0] + "/"
    )
    total = sum(e.size_bytes or 0 for e in entries)
    step.event(
        "ExportStarted", f"Disk export started ({progress.disks(len(entries))}, {_size(total)})"
    )
    return None


def _size(count: int) -> str:
    return progress.human_bytes(count)


def submit_export(step: Pass, disk: DiskMigrationStatus) -> None:
    attempt = disk.attempt or 1
    url = disk.intermediate_storage_url or ""
    step.act(
        ExportDisk(
            op_id=naming.op_id(step.migration, attempt, "export", disk.name),
            disk=disk.name,
            vm_id=step.source_vm_id() or "",
            disk_id=disk.id or disk.name,
            snapshot_id=step.status.snapshot_id or "",
            url=url,
            target_format=naming.url_format(url),
        )
    )
    disk.phase = DiskPhase.EXPORTING
    disk.export_task_ref = None
    disk.bytes_transferred = 0
    disk.message = f"export submitted (attempt {attempt})"
    step.poll()


def submit_import(step: Pass, disk: DiskMigrationStatus) -> None:
    attempt = disk.attempt or 1
    url = disk.intermediate_storage_url or ""
    target = disk.format.value if disk.format else None
    step.act(
        ImportDisk(
            op_id=naming.op_id(step.migration, attempt, "import", disk.name),
            disk=disk.name,
            url=url,
            source_format=naming.url_format(url),
            target_format=target,
            expected_sha256=hexdigest(disk.checksum),
            expected_content_sha256=hexdigest(disk.content_checksum),
            storage_hint=storage_hint(step),
            volume_name=naming.volume_name(step.migration, disk.name, attempt, target),
        )
    )
    disk.phase = DiskPhase.IMPORTING
    disk.import_task_ref = None
    disk.message = f"import submitted (attempt {attempt})"
    step.poll()


# -- polling ---------------------------------------------------------------------------------


def _observe(step: Pass, disk: DiskMigrationStatus, ref: str, what: str) -> pb.Task | None:
    view = step.obs.tasks.get(ref)
    if isinstance(view, pb.Task):
        return view
    if isinstance(view, RpcFailure):
        disk.message = f"cannot read {what} task {ref}: {view}"
    step.wait()
    return None


def _failed(disk: DiskMigrationStatus, task: pb.Task, what: str, importing: bool) -> Failure:
    failure = RpcFailure.from_task(task)
    disposition = retry.classify(failure, importing=importing)
    message = f"{what} of disk {disk.name} failed: {failure}"
    return Failure(disk, disposition, failure, message, importing)


def _lost(disk: DiskMigrationStatus, ref: str, what: str, side: str) -> Failure:
    message = f"{what} task {ref} of disk {disk.name} was lost (the {side} provider restarted)"
    lost = RpcFailure(pb.ERROR_CODE_UNAVAILABLE, message, True)
    return Failure(disk, retry.Disposition.RETRY, lost, message, what == "import")


def poll_export(step: Pass, disk: DiskMigrationStatus) -> Failure | None:
    ref = disk.export_task_ref
    if ref is None:  # the submission did not go through: submit again (same op id)
        submit_export(step, disk)
        return None
    if isinstance(step.obs.tasks.get(ref), TaskLost):
        return _lost(disk, ref, "export", "source")
    task = _observe(step, disk, ref, "export")
    if task is None:
        return None
    if task.state == pb.TASK_STATE_SUCCEEDED:
        _exported(disk, task.export_result)
    elif task.state in (pb.TASK_STATE_FAILED, pb.TASK_STATE_CANCELLED):
        return _failed(disk, task, "export", importing=False)
    else:
        if task.stage in progress.UPLOAD_STAGES:
            disk.bytes_transferred = task.bytes_done
            disk.total_bytes = task.bytes_total or disk.total_bytes
        disk.message = f"export {task.stage} ({task.percent:.0f}%)"
        step.poll()
    return None


def _exported(disk: DiskMigrationStatus, result: pb.ExportResult) -> None:
    disk.phase = DiskPhase.EXPORTED
    disk.checksum = f"sha256:{result.sha256}" if result.sha256 else None
    disk.content_checksum = f"sha256:{result.content_sha256}" if result.content_sha256 else None
    disk.total_bytes = result.size_bytes
    disk.bytes_transferred = result.size_bytes
    disk.size_bytes = result.virtual_size_bytes or disk.size_bytes
    disk.source_format = naming.format_name(result.source_format) or None
    disk.message = f"exported ({result.size_bytes} bytes)"


def poll_import(step: Pass, disk: DiskMigrationStatus) -> Failure | None:
    ref = disk.import_task_ref
    if ref is None:
        submit_import(step, disk)
        return None
    if isinstance(step.obs.tasks.get(ref), TaskLost):
        return _lost(disk, ref, "import", "target")
    task = _observe(step, disk, ref, "import")
    if task is None:
        return None
    if task.state in (pb.TASK_STATE_FAILED, pb.TASK_STATE_CANCELLED):
        return _failed(disk, task, "import", importing=True)
    if task.state != pb.TASK_STATE_SUCCEEDED:
        disk.message = f"import {task.stage} ({task.percent:.0f}%)"
        step.poll()
        return None
    return _import_done(disk, task.import_result)


def _import_done(disk: DiskMigrationStatus, result: pb.ImportResult) -> Failure | None:
    expected = hexdigest(disk.content_checksum)
    if expected and result.content_sha256 and result.content_sha256 != expected:
        failure = RpcFailure(
            pb.ERROR_CODE_CHECKSUM_MISMATCH,
            f"content digest {result.content_sha256} of the imported disk differs from "
            f"the source's {expected}",
            False,
        )
        message = f"import of disk {disk.name} failed: {failure}"
        return Failure(disk, retry.Disposition.REEXPORT, failure, message, True)
    _imported(disk, result, verified=bool(expected and result.content_sha256))
    return None


def _imported(disk: DiskMigrationStatus, result: pb.ImportResult, verified: bool) -> None:
    disk.phase = DiskPhase.IMPORTED
    disk.imported_disk_id = result.disk_id
    disk.format = naming.api_format(naming.format_name(result.format)) or disk.format
    how = "content sha256 verified" if verified else "transport sha256 verified"
    disk.message = f"imported as {result.disk_id} ({how})"


# -- failures --------------------------------------------------------------------------------


def _reset(failure: Failure) -> None:
    disk = failure.disk
    disk.attempt = (disk.attempt or 1) + 1
    disk.message = failure.message
    if failure.importing and failure.disposition is retry.Disposition.RETRY:
        disk.phase = DiskPhase.EXPORTED
        disk.import_task_ref = None
        return
    disk.phase = DiskPhase.PENDING
    disk.export_task_ref = disk.import_task_ref = None
    disk.checksum = disk.content_checksum = None
    disk.bytes_transferred = 0


def apply_failures(step: Pass, failures: Sequence[Failure]) -> bool:
    """Fail, or reset the failed disks and schedule one retry; False when Failed."""
    for failure in failures:
        if failure.disposition is retry.Disposition.PERMANENT:
            reason = retry.failure_reason(failure.failure)
            step.fail(reason, failure.message, disk=failure.disk)
            return False
    for failure in failures:
        _reset(failure)
    if failures:
        return retry.schedule(step, "; ".join(f.message for f in failures))
    return True


def advance(step: Pass) -> list[Failure]:
    """Poll or submit every disk's current step; the failures seen in this pass."""
    failures: list[Failure] = []
    due = step.retry_due()
    for disk in step.status.disks:
        found: Failure | None = None
        if disk.phase is DiskPhase.PENDING and due:
            if (busy := step.slot_wait("source")) is None:
                submit_export(step, disk)
            else:
                disk.message = busy
                step.poll()
        elif disk.phase is DiskPhase.EXPORTING:
            found = poll_export(step, disk)
        elif disk.phase is DiskPhase.IMPORTING:
            found = poll_import(step, disk)
        if found is not None:
            failures.append(found)
    if not due:
        step.requeue(step.retry_wait())
    return failures


def start_imports(step: Pass) -> None:
    if not step.retry_due():
        return
    for disk in step.status.disks:
        if disk.phase is DiskPhase.EXPORTED:
            if (busy := step.slot_wait("target")) is None:
                submit_import(step, disk)
            else:
                disk.message = busy
                step.poll()


def data_phase(step: Pass) -> MigrationPhase:
    disks, tasks = step.status.disks, step.obs.tasks
    if any(
        d.phase is DiskPhase.PENDING
        or (d.phase is DiskPhase.EXPORTING and not progress.uploading(d, tasks))
        for d in disks
    ):
        return MigrationPhase.EXPORTING
    if any(d.phase is DiskPhase.EXPORTING for d in disks):
        return MigrationPhase.TRANSFERRING
    for disk in disks:
        task = progress.task_of(tasks, disk.import_task_ref)
        if disk.phase is DiskPhase.IMPORTING and task and task.stage in progress.CONVERT_STAGES:
            return MigrationPhase.CONVERTING
    return MigrationPhase.IMPORTING
