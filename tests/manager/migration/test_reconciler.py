"""The reconciler over real provider servers (the in-memory driver as source and target),
the SQLite store and an NFS-style directory; reconcile() is driven in a loop."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from manager.api import VirtualMachine, VMMigration
from manager.migration.model import FINALIZER
from manager.migration.progress import human_bytes
from manager.store.base import Obj
from tests.manager.migration.content_provider import content_digest
from tests.manager.migration.harness import Harness, MiB, cleaned, phase_is
from virtrigaud import errors
from virtrigaud.provider.v1 import provider_pb2 as pb

VDA = bytes(range(256)) * (3 * MiB // 256)
VDB = b"\x5a" * MiB + b"\x00" * MiB


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path, {"vda": VDA, "vdb": VDB})
    yield harness
    harness.close()


def _disks(obj: Obj | None) -> list[dict[str, Any]]:
    return list(((obj or {}).get("status") or {}).get("disks") or [])


def _migration(obj: Obj | None) -> VMMigration:
    assert obj is not None
    return VMMigration.from_dict(obj)


def test_two_disks_migrate_to_ready_and_clean_up(world: Harness) -> None:
    key = world.migrate()
    obj = world.drive(key, cleaned)
    mig = _migration(obj)
    st = mig.status
    assert st is not None and st.phase is not None
    assert st.phase.value == "Ready" and st.progress == 100
    assert st.start_time is not None and st.completion_time is not None
    assert st.observed_generation == 1 and not st.retry_attempts
    assert FINALIZER in mig.metadata.finalizers
    # every disk: transport checksum = sha256 of the bytes that landed on the target
    vda, vdb = st.disks
    for disk, data in ((vda, VDA), (vdb, VDB)):
        assert disk.phase is not None and disk.phase.value == "Imported"
        landed = world.target.volumes[disk.imported_disk_id or ""].read_bytes()
        assert landed == data
        assert disk.checksum == sha(landed)
        assert disk.content_checksum == "sha256:" + content_digest(
            world.target.volumes[disk.imported_disk_id or ""]
        )
        assert disk.attempt == 1
    manifest = f"vda {sha(VDA)}\nvdb {sha(VDB)}\n".encode()
    assert st.checksum == "sha256:" + hashlib.sha256(manifest).hexdigest()
    assert st.bytes_transferred == len(VDA) + len(VDB)
    assert st.snapshot_id and st.export_task_ref and st.import_task_ref
    uid8 = (mig.metadata.uid or "").replace("-", "")[:8]
    assert st.intermediate_storage_url == f"nfs://{world.nfs}/virtrigaud/default/mig-{uid8}/"
    types = {c.type: (c.status.value, c.reason) for c in st.conditions}
    assert types == {
        "Validated": ("True", "ValidationSuccessful"),
        "Snapshotted": ("True", "SnapshotCreated"),
        "Exported": ("True", "ExportSuccessful"),
        "Transferred": ("True", "UploadCompleted"),
        "Converted": ("True", "NoConversionNeeded"),
        "Imported": ("True", "ImportSuccessful"),
        "Created": ("True", "VMCreated"),
        "Ready": ("True", "MigrationCompleted"),
        "CleanedUp": ("True", "CleanupCompleted"),
    }
    assert "content sha256 matched the source snapshot: vda, vdb" in (st.message or "")
    reasons = world.reasons(key)
    for reason in (
        "ValidationStarted",
        "ValidationSuccessful",
        "SnapshotCreated",
        "ExportStarted",
        "TransferStarted",
        "ExportCompleted",
        "TransferCompleted",
        "ImportStarted",
        "ImportCompleted",
        "VMCreated",
        "MigrationCompleted",
        "CleanupCompleted",
    ):
        assert reason in reasons
    assert not any(r in reasons for r in ("RetryScheduled", "MigrationFailed", "CleanupFailed"))
    size = human_bytes(len(VDA) + len(VDB))
    messages = {
        e.reason: e.message for e in world.store.events_for("VMMigration", "default", "mig")
    }
    assert messages["TransferCompleted"] == f"Upload completed ({size})"
    # the VirtualMachine created from the imported disks
    target = VirtualMachine.from_dict(world.store.get("VirtualMachine", "default", "mig-vm"))
    assert (
        target.spec.imported_disk is not None
        and target.spec.imported_disk.disk_id == vda.imported_disk_id
    )
    assert [d.imported_disk.disk_id for d in target.spec.disks if d.imported_disk] == [
        vdb.imported_disk_id
    ]
    assert target.metadata.annotations["virtrigaud.io/migration"] == "default/mig"
    assert target.metadata.annotations["virtrigaud.io/migrated-from"] == "default/src"
    assert target.metadata.annotations["virtrigaud.io/disk-checksum"] == st.checksum
    assert target.status is not None and target.status.id in world.target.vms
    hypervisor_vm = world.target.vms[target.status.id]
    assert [Path(d.path).read_bytes() for d in hypervisor_vm.disks] == [VDA, VDB]
    # cleanup: the intermediate objects and the snapshot are gone, the source stays
    assert world.nfs_files() == []
    assert list(world.source.vms[world.source_vm.id].snapshots) == []
    assert world.source_vm.id in world.source.vms


def test_a_second_migration_of_the_same_source_is_refused(world: Harness) -> None:
    first = world.migrate("a-first")
    second = world.migrate("b-second")
    world.drive(first, phase_is("Snapshotting", "Exporting", "Transferring", "Importing"))
    obj = world.drive(second, phase_is("Failed"))
    mig = _migration(obj)
    assert mig.status is not None
    assert mig.status.message == (
        "source VirtualMachine default/src is already being migrated by VMMigration "
        "default/a-first (created earlier)"
    )
    assert "MigrationFailed" in world.reasons(second)
    world.drive(first, cleaned)
    assert world.phase(first) == "Ready"


def test_a_corrupted_intermediate_object_is_caught_and_that_disk_retried(world: Harness) -> None:
    corrupted: list[str] = []

    def corrupt_once(request: pb.ImportDiskRequest) -> None:
        if not corrupted and request.source.url.endswith("/vdb.raw"):
            path = Path(request.source.url.removeprefix("nfs://"))
            data = bytearray(path.read_bytes())
            data[MiB + 7] ^= 0xFF
            path.write_bytes(bytes(data))
            corrupted.append(str(path))

    world.target.before_import = corrupt_once
    key = world.migrate()
    mig = _migration(world.drive(key, cleaned))
    assert corrupted, "the import of vdb never ran"
    st = mig.status
    assert st is not None and st.phase is not None and st.phase.value == "Ready"
    vda, vdb = st.disks
    assert (vda.attempt, vdb.attempt) == (1, 2)
    assert st.retry_attempts == 1
    assert world.source.exports.count("vda") == 1 and world.source.exports.count("vdb") == 2
    assert world.target.volumes[vdb.imported_disk_id or ""].read_bytes() == VDB
    assert vdb.checksum == sha(VDB)
    retry = [
        e
        for e in world.store.events_for("VMMigration", "default", "mig")
        if e.reason == "RetryScheduled"
    ]
    assert len(retry) == 1 and "import of disk vdb failed: CHECKSUM_MISMATCH" in retry[0].message


def test_a_lost_provider_task_is_resubmitted_without_redoing_finished_disks(tmp_path: Path) -> None:
    world = Harness(tmp_path, {"vda": VDA[:MiB], "vdb": b"\x11" * (8 * MiB)})
    release = threading.Event()

    def stall_big_disk(done: int) -> None:
        if done > 2 * MiB:
            release.wait(30)

    world.source.chunk_hook = stall_big_disk
    try:
        key = world.migrate()

        def vda_done_vdb_running(obj: Obj | None) -> bool:
            phases = {d["name"]: (d.get("phase"), d.get("exportTaskRef")) for d in _disks(obj)}
            return (
                phases.get("vda", ("",))[0] == "Exported"
                and phases.get("vdb", ("", None))[1] is not None
            )

        world.drive(key, vda_done_vdb_running)
        lost_ref = _migration(world.get(key)).status.disks[1].export_task_ref  # type: ignore[union-attr]
        release.set()
        world.restart("srcp")  # the new server has never heard of the export task
        mig = _migration(world.drive(key, cleaned))
        st = mig.status
        assert st is not None and st.phase is not None and st.phase.value == "Ready"
        vda, vdb = st.disks
        assert (vda.attempt, vdb.attempt) == (1, 2)
        assert world.source.exports.count("vda") == 1  # the finished disk was not redone
        assert world.source.exports.count("vdb") == 2
        messages = [e.message for e in world.store.events_for("VMMigration", "default", "mig")]
        assert any(f"export task {lost_ref} of disk vdb was lost" in m for m in messages)
        assert world.target.volumes[vdb.imported_disk_id or ""].read_bytes() == b"\x11" * (8 * MiB)
    finally:
        release.set()
        world.close()


def test_deleting_a_migration_mid_flight_leaves_nothing_behind(tmp_path: Path) -> None:
    world = Harness(tmp_path, {"vda": b"\x01" * (16 * MiB), "vdb": b"\x02" * (16 * MiB)})
    world.source.chunk_delay = 0.02
    try:
        key = world.migrate()
        world.drive(key, phase_is("Exporting", "Transferring"))
        world.drive(key, lambda obj: any(d.get("exportTaskRef") for d in _disks(obj)))
        world.store.delete("VMMigration", "default", "mig")
        world.drive(key, lambda obj: obj is None)
        assert world.nfs_files() == []
        assert list(world.source.vms[world.source_vm.id].snapshots) == []
        assert [o["metadata"]["name"] for o in world.store.list("VirtualMachine")] == ["src"]
        assert world.target.volumes == {} and world.target.vms == {}
        assert "CleanupCompleted" in world.reasons(key)
    finally:
        world.close()


def test_deleting_after_an_import_removes_the_imported_disk_on_the_target(tmp_path: Path) -> None:
    world = Harness(tmp_path, {"vda": b"\x03" * MiB, "vdb": b"\x04" * (16 * MiB)})
    world.target.chunk_delay = 0.1  # vdb's import takes a while; vda's is done at once
    try:
        key = world.migrate()

        def vda_imported_vdb_importing(obj: Obj | None) -> bool:
            disks = {d["name"]: d for d in _disks(obj)}
            vda, vdb = disks.get("vda", {}), disks.get("vdb", {})
            return (
                vda.get("phase") == "Imported"
                and bool(vdb.get("importTaskRef"))
                and vdb.get("phase") != "Imported"
            )

        world.drive(key, vda_imported_vdb_importing)
        (vda_id,) = list(world.target.volumes)
        world.store.delete("VMMigration", "default", "mig")
        world.drive(key, lambda obj: obj is None)
        assert world.target.volumes == {} and world.target.vms == {}
        assert world.nfs_files() == []
        completed = [
            e.message
            for e in world.store.events_for("VMMigration", "default", "mig")
            if e.reason == "CleanupCompleted"
        ]
        assert completed and f"imported disk {vda_id} on the target" in completed[0]
    finally:
        world.close()


def test_providers_without_content_digests_verify_the_transport_digest(tmp_path: Path) -> None:
    world = Harness(tmp_path, {"vda": VDA}, content=False)
    try:
        key = world.migrate()
        mig = _migration(world.drive(key, cleaned))
        assert mig.status is not None
        assert mig.status.disks[0].content_checksum is None
        assert "transport sha256 verified, content digest not reported by the providers: vda" in (
            mig.status.message or ""
        )
        assert mig.status.checksum == sha(VDA)
    finally:
        world.close()


def test_cold_migration_shuts_the_source_down(world: Harness) -> None:
    world.source.vms[world.source_vm.id].power_state = pb.POWER_STATE_ON
    key = world.migrate(sourcePowerPolicy="ShutdownBeforeSnapshot")
    mig = _migration(world.drive(key, cleaned))
    assert mig.status is not None and mig.status.source_powered_off is True
    assert world.source.vms[world.source_vm.id].power_state == pb.POWER_STATE_OFF
    assert "SourcePoweredOff" in world.reasons(key)


def test_missing_target_storage_fails_validation_with_the_providers_message(world: Harness) -> None:
    key = world.migrate(targetStorageHint="fast")
    mig = _migration(world.drive(key, phase_is("Failed")))
    assert mig.status is not None
    assert mig.status.message == "target Provider default/tgt: pool 'fast' does not exist"
    assert world.nfs_files() == [] and list(world.source.vms[world.source_vm.id].snapshots) == []


def test_delete_source_after_validation_removes_the_source_vm_and_object(world: Harness) -> None:
    key = world.migrate(
        cleanupPolicy={"deleteIntermediate": True, "deleteSnapshot": True, "deleteSource": True}
    )
    world.drive(key, lambda obj: cleaned(obj) and "src" not in _vm_names(world))
    assert world.phase(key) == "Ready"
    assert world.source_vm.id not in world.source.vms  # the hypervisor VM is gone
    assert _vm_names(world) == ["mig-vm"]  # and its VirtualMachine object
    assert world.nfs_files() == []
    target = world.store.get("VirtualMachine", "default", "mig-vm")
    assert target["status"]["id"] in world.target.vms  # the migrated VM stays


def _vm_names(world: Harness) -> list[str]:
    return [o["metadata"]["name"] for o in world.store.list("VirtualMachine")]


def test_a_providers_task_slots_bound_the_exports_in_flight(tmp_path: Path) -> None:
    data = {name: bytes([n]) * (4 * MiB) for n, name in enumerate(("vda", "vdb", "vdc"), 1)}
    world = Harness(tmp_path, data)
    world.source.chunk_delay = 0.02
    source = world.store.get("Provider", "default", "srcp")
    source["status"]["capabilities"] = {"maxConcurrentTasks": 1}  # as the provider reports
    world.store.update_status(source)
    in_flight: list[int] = []
    waiting: list[str] = []

    def record(obj: Obj | None) -> bool:
        disks = _disks(obj)
        in_flight.append(sum(1 for d in disks if d.get("phase") == "Exporting"))
        waiting.extend(d.get("message", "") for d in disks if d.get("phase") == "Pending")
        return cleaned(obj)

    try:
        key = world.migrate()
        world.drive(key, record)
        assert world.phase(key) == "Ready"
        assert max(in_flight) == 1  # without the bound all three export at once
        assert any("waiting for a free task slot on Provider default/srcp" in m for m in waiting)
        for disk in _migration(world.get(key)).status.disks:  # type: ignore[union-attr]
            landed = world.target.volumes[disk.imported_disk_id or ""].read_bytes()
            assert landed == data[disk.name]
    finally:
        world.close()


def test_a_failed_cold_migration_powers_its_source_back_on(world: Harness) -> None:
    world.source.vms[world.source_vm.id].power_state = pb.POWER_STATE_ON
    world.target.inject["import_disk"] = errors.InvalidArgument("target_format: refused")
    key = world.migrate(sourcePowerPolicy="ShutdownBeforeSnapshot")

    def restored(obj: Obj | None) -> bool:
        conditions = ((obj or {}).get("status") or {}).get("conditions") or []
        return any(c["type"] == "SourceRestored" for c in conditions)

    mig = _migration(world.drive(key, restored))
    st = mig.status
    assert st is not None and st.phase is not None and st.phase.value == "Failed"
    assert st.source_powered_off is True  # it did shut the source down ...
    assert world.source.vms[world.source_vm.id].power_state == pb.POWER_STATE_ON  # ... and back on
    reasons = world.reasons(key)
    assert reasons.index("SourcePoweredOff") < reasons.index("SourcePowerRestored")


def test_deleting_a_cold_migration_powers_the_source_on_after_its_snapshot_is_gone(
    tmp_path: Path,
) -> None:
    world = Harness(tmp_path, {"vda": b"\x01" * (16 * MiB)})
    world.source.chunk_delay = 0.02
    world.source.vms[world.source_vm.id].power_state = pb.POWER_STATE_ON
    try:
        key = world.migrate(sourcePowerPolicy="ShutdownBeforeSnapshot")
        world.drive(key, lambda obj: any(d.get("exportTaskRef") for d in _disks(obj)))
        assert world.source.vms[world.source_vm.id].power_state == pb.POWER_STATE_OFF
        world.store.delete("VMMigration", "default", "mig")
        world.drive(key, lambda obj: obj is None)
        source = world.source.vms[world.source_vm.id]
        assert list(source.snapshots) == [] and source.power_state == pb.POWER_STATE_ON
        completed = [
            e.message
            for e in world.store.events_for("VMMigration", "default", "mig")
            if e.reason == "CleanupCompleted"
        ]
        assert completed and "power-on of source VM" in completed[0]
    finally:
        world.close()


def test_a_powered_off_source_that_cannot_be_snapshotted_is_exported_as_it_is(
    world: Harness,
) -> None:
    world.source.inject["create_snapshot"] = errors.Unsupported(
        "snapshot feature is not available for raw disks on directory storage"
    )
    key = world.migrate()
    mig = _migration(world.drive(key, cleaned))
    st = mig.status
    assert st is not None and st.phase is not None and st.phase.value == "Ready"
    assert not st.snapshot_id
    snapshotted = next(c for c in st.conditions if c.type == "Snapshotted")
    assert (snapshotted.status.value, snapshotted.reason) == ("True", "SourceOffNoSnapshot")
    assert "SnapshotSkipped" in world.reasons(key)
    for disk, data in zip(st.disks, (VDA, VDB), strict=True):
        assert world.target.volumes[disk.imported_disk_id or ""].read_bytes() == data


def test_a_running_source_that_cannot_be_snapshotted_fails(world: Harness) -> None:
    world.source.vms[world.source_vm.id].power_state = pb.POWER_STATE_ON
    world.source.inject["create_snapshot"] = errors.Unsupported("no snapshots here")
    key = world.migrate()
    mig = _migration(world.drive(key, phase_is("Failed")))
    assert mig.status is not None and "snapshot failed: UNIMPLEMENTED" in (mig.status.message or "")
    assert world.target.volumes == {}
