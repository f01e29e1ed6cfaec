"""The Exporting / Transferring / Converting / Importing step and its conditions.

One pass: poll or submit each disk (``disks.advance``), apply failures (fail or one
retry), open the import barrier when every disk is exported (recording Converted
first), then derive the phase, the conditions, progress, bytes and events from the
disks. When every disk is imported, Creating begins in the same pass.

Conditions (types of the API reference; False while in progress, True when done):
Exported (``ExportInProgress`` -> ``ExportSuccessful``: every disk read from the
snapshot and, if needed, converted -- i.e. uploading or uploaded), Transferred
(``UploadInProgress`` with "Uploading to S3 (67% complete, 335GB/500GB, ETA: 15m)" ->
``UploadCompleted``), Converted (see ``formats``), Imported (``ImportInProgress`` with
"Downloading from S3 (...)" -> ``ImportSuccessful``). Events: ExportStarted (when the
disks are set up), TransferStarted, TransferProgress at 25/50/75%, ExportCompleted and
TransferCompleted, ImportStarted, ImportCompleted.
"""

from __future__ import annotations

from manager.api import DiskPhase, find_condition
from manager.migration import disks, finish, formats, naming, progress
from manager.migration.context import Pass
from virtrigaud.provider.v1 import provider_pb2 as pb


def step(p: Pass) -> None:
    pending = any(d.phase in (DiskPhase.PENDING, DiskPhase.EXPORTING) for d in p.status.disks)
    if pending and p.source_vm_id() is None:
        p.fail(
            "SourceVMGone",
            f"source VirtualMachine {p.source_ref} disappeared or lost its VM id during the "
            "migration",
        )
        return
    failures = disks.advance(p)
    if not disks.apply_failures(p, failures):
        return
    if _all_exported(p) and _convert_decided(p):
        disks.start_imports(p)
    _record(p)
    if all(d.phase is DiskPhase.IMPORTED for d in p.status.disks):
        _finish_conversion(p)
        finish.enter_creating(p)


def _all_exported(p: Pass) -> bool:
    return all(d.phase in disks.EXPORT_DONE for d in p.status.disks)


def _convert_decided(p: Pass) -> bool:
    """Record Converted the first time every disk is exported (needs the source VM)."""
    if find_condition(p.status.conditions, "Converted") is not None:
        return True
    vm = p.obs.source_vm
    if not isinstance(vm, pb.VM):
        p.status.message = "waiting for the source VM description to record the conversion"
        p.wait()
        return False
    ok, reason, message = formats.converted_condition(vm, p.status.disks, imported=False)
    p.condition("Converted", ok, reason, message)
    return True


def _finish_conversion(p: Pass) -> None:
    current = find_condition(p.status.conditions, "Converted")
    if current is None or current.reason != "ConversionPending":
        return
    vm = p.obs.source_vm
    if isinstance(vm, pb.VM):
        ok, reason, message = formats.converted_condition(vm, p.status.disks, imported=True)
        p.condition("Converted", ok, reason, message)
    else:
        p.condition("Converted", True, "ConvertedOnTarget", "converted on the target during import")


def _record(p: Pass) -> None:
    """Phase, conditions, progress, bytes, checksum and events from the disks."""
    st = p.status
    retry_note = None if p.retry_due() else st.message  # keep "retry n/m in ..." visible
    st.phase = disks.data_phase(p)
    st.progress = progress.data_progress(st.disks, p.obs.tasks)
    st.bytes_transferred = sum(d.bytes_transferred or 0 for d in st.disks)
    st.checksum = disks.combined_checksum(st.disks)
    where = naming.STORAGE_LABELS[p.spec.storage.type]
    _export_conditions(p, where)
    _import_conditions(p, where)
    if retry_note:
        st.message = retry_note


def _export_conditions(p: Pass, where: str) -> None:
    st, tasks = p.status, p.obs.tasks
    count = progress.disks(len(st.disks))
    total = progress.human_bytes(sum(d.size_bytes or 0 for d in st.disks))
    reading = [
        d
        for d in st.disks
        if d.phase is DiskPhase.PENDING
        or (d.phase is DiskPhase.EXPORTING and not progress.uploading(d, tasks))
    ]
    if reading:
        states = ", ".join(f"{d.name}: {d.message}" for d in reading)
        p.condition(
            "Exported",
            False,
            "ExportInProgress",
            f"Exporting {len(reading)} of {count} ({states})",
        )
        st.message = f"Exporting disks from snapshot {st.snapshot_id}"
    else:
        p.condition(
            "Exported",
            True,
            "ExportSuccessful",
            f"Disks exported from source ({count}, {total})",
        )
    started = not reading or any(progress.uploading(d, tasks) for d in st.disks)
    if not started and p.old_condition("Transferred") is None:
        return
    upload = progress.upload_throughput(st.disks, tasks)
    if _all_exported(p):
        p.condition(
            "Transferred",
            True,
            "UploadCompleted",
            f"Uploaded {count} to {where} ({progress.human_bytes(upload.total)})",
        )
    else:
        message = upload.describe("Uploading to", where)
        p.condition("Transferred", False, "UploadInProgress", message)
        st.message = message
    _transfer_events(p, upload)


def _transfer_events(p: Pass, upload: progress.Throughput) -> None:
    old = p.old_condition("Transferred")
    if old is None:
        p.event("TransferStarted", "Upload to storage started")
    before = progress.upload_throughput(p.old.disks, {}).percent
    for mark in progress.crossed(before, upload.percent):
        if mark < 100 and not p.is_true("Transferred"):
            p.event("TransferProgress", f"Upload progress: {mark}%")
    if p.is_true("Transferred") and not p.was_true("Transferred"):
        size = progress.human_bytes(upload.total)
        p.event("ExportCompleted", f"Disk export completed ({size})")
        p.event("TransferCompleted", f"Upload completed ({size})")


def _import_conditions(p: Pass, where: str) -> None:
    st = p.status
    if not any(d.phase in (DiskPhase.IMPORTING, DiskPhase.IMPORTED) for d in st.disks):
        return
    download = progress.download_throughput(st.disks, p.obs.tasks)
    count, size = progress.disks(len(st.disks)), progress.human_bytes(download.total)
    if all(d.phase is DiskPhase.IMPORTED for d in st.disks):
        p.condition(
            "Imported",
            True,
            "ImportSuccessful",
            f"Imported {count} from {where} ({size})",
        )
    else:
        message = download.describe("Downloading from", where)
        p.condition("Imported", False, "ImportInProgress", message)
        st.message = message
    if p.old_condition("Imported") is None:
        p.event("ImportStarted", "Download from storage started")
    if p.is_true("Imported") and not p.was_true("Imported"):
        p.event("ImportCompleted", f"Download completed ({size})")
