"""Every phase transition of the pure planner, on a three-disk VM (no I/O)."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from manager.api import (
    Condition,
    ConditionStatus,
    DiskPhase,
    MigrationPhase,
    PowerState,
    VirtualMachine,
)
from manager.migration import planner
from manager.migration.model import (
    FINALIZER,
    AddFinalizer,
    CreateSnapshot,
    CreateTargetVM,
    ExportDisk,
    ImportDisk,
    Needs,
    Observations,
    Plan,
    PowerOffSource,
    PowerOnTargetVM,
    Slots,
    TaskRef,
    TaskView,
)
from tests.manager.migration import flows
from tests.manager.migration.builders import (
    GB,
    UID,
    Driver,
    cond,
    exported,
    good_obs,
    imported,
    migration,
    reasons,
    task,
    vm,
)
from virtrigaud.provider.v1 import provider_pb2 as pb


def test_first_pass_adds_the_finalizer_and_is_pending() -> None:
    d = Driver(migration(finalizers=False))
    plan = d.step(good_obs())
    assert plan.actions == [AddFinalizer()]
    assert d.phase() is MigrationPhase.PENDING
    assert d.status.observed_generation == 1
    assert plan.requeue_after == 0
    assert FINALIZER in d.mig.metadata.finalizers


def test_pending_starts_validating() -> None:
    d = Driver(migration())
    obs = good_obs()
    d.step(obs)
    plan = d.step(obs)
    assert d.phase() is MigrationPhase.VALIDATING
    assert d.status.start_time == d.now
    assert reasons(plan) == ["ValidationStarted"]
    assert cond(d.status, "Validated")[:2] == ("False", "ValidationInProgress")
    assert planner.needs(d.mig) == Needs(source_vm=True, capabilities=True, validate=True)


def test_validated_then_snapshot_probe_then_exports_of_every_disk() -> None:
    d, obs = flows.validating(vm(flows.THREE))
    plan = d.step(obs)
    assert d.phase() is MigrationPhase.SNAPSHOTTING
    assert cond(d.status, "Validated") == (
        "True",
        "ValidationSuccessful",
        "Source VM and target provider validated",
    )
    assert reasons(plan) == ["ValidationSuccessful"]
    probes = planner.probes(d.mig, obs, d.now)
    assert probes == [
        CreateSnapshot(
            f"{UID}/1/snapshot/vm-1", "vm-1", "vmmig-0f1e2d3c-1", "VMMigration default/mig"
        )
    ]
    # the snapshot task is still running: poll it (by re-submitting the same op id)
    running = task("t-snap", pb.TASK_STATE_RUNNING, stage="snapshotting")
    plan = d.step(obs, probes={probes[0].op_id: running})
    assert d.phase() is MigrationPhase.SNAPSHOTTING and plan.actions == []
    done = task("t-snap", pb.TASK_STATE_SUCCEEDED, snapshot_result={"snapshot_id": "snap-9"})
    plan = d.step(obs, probes={probes[0].op_id: done})
    assert d.status.snapshot_id == "snap-9"
    assert d.phase() is MigrationPhase.EXPORTING
    assert cond(d.status, "Snapshotted") == ("True", "SnapshotCreated", "Snapshot snap-9 created")
    assert reasons(plan) == ["SnapshotCreated", "ExportStarted"]
    exports = [a for a in plan.actions if isinstance(a, ExportDisk)]
    assert [(a.disk, a.op_id, a.snapshot_id, a.target_format) for a in exports] == [
        ("vda", f"{UID}/1/export/vda", "snap-9", "raw"),
        ("vdb", f"{UID}/1/export/vdb", "snap-9", "raw"),
        ("vdc", f"{UID}/1/export/vdc", "snap-9", "raw"),
    ]
    assert exports[0].url == "nfs:///mnt/migrations/virtrigaud/default/mig-0f1e2d3c/vda.raw"
    # the task ids were saved in the same pass (the shell records them before writing)
    assert [x.export_task_ref for x in d.status.disks] == [f"t:{a.op_id}" for a in exports]
    assert d.status.export_task_ref == f"t:{exports[-1].op_id}"
    assert d.status.intermediate_storage_url == (
        "nfs:///mnt/migrations/virtrigaud/default/mig-0f1e2d3c/"
    )
    assert [x.name for x in d.status.disks] == ["vda", "vdb", "vdc"]  # no CD-ROM


def test_cold_migration_shuts_the_source_down_before_the_snapshot() -> None:
    d, obs = flows.snapshotting(sourcePowerPolicy="ShutdownBeforeSnapshot")
    (probe,) = planner.probes(d.mig, obs, d.now)
    assert probe == PowerOffSource(f"{UID}/1/shutdown/vm-1", "vm-1", 300)
    plan = d.step(obs, probes={probe.op_id: task("t-off", pb.TASK_STATE_SUCCEEDED)})
    assert d.status.source_powered_off is True
    assert reasons(plan) == ["SourcePoweredOff"]
    (probe,) = planner.probes(d.mig, obs, d.now)
    assert isinstance(probe, CreateSnapshot)


def test_cold_migration_of_a_stopped_source_records_it_was_off() -> None:
    d, obs = flows.snapshotting(
        vm(power=pb.POWER_STATE_OFF), sourcePowerPolicy="ShutdownBeforeSnapshot"
    )
    assert d.status.source_powered_off is False
    (probe,) = planner.probes(d.mig, obs, d.now)
    assert isinstance(probe, CreateSnapshot)


def test_keep_policy_leaves_power_alone() -> None:
    d, obs = flows.snapshotting()
    assert d.status.source_powered_off is None
    assert [type(p) for p in planner.probes(d.mig, obs, d.now)] == [CreateSnapshot]


def test_exporting_then_transferring_follows_the_task_stages() -> None:
    d, obs = flows.exporting()
    refs = d.export_refs()
    assert planner.needs(d.mig).tasks == tuple(TaskRef("source", r) for r in refs if r)
    tasks = {
        refs[0]: task(refs[0], stage="converting"),
        refs[1]: task(refs[1], stage="uploading", done=GB, total=2 * GB, rate=1e6),
        refs[2]: task(refs[2], pb.TASK_STATE_PENDING, stage="queued"),
    }
    plan = d.step(obs, tasks)
    assert d.phase() is MigrationPhase.EXPORTING
    assert plan.actions == []  # nothing re-submitted while the tasks run
    assert cond(d.status, "Exported")[:2] == ("False", "ExportInProgress")
    assert reasons(plan) == ["TransferStarted"]
    tasks = {
        refs[0]: task(refs[0], stage="uploading", done=GB // 2, total=GB, rate=1e6),
        refs[1]: task(refs[1], stage="uploading", done=GB, total=2 * GB, rate=1e6),
        refs[2]: task(refs[2], stage="uploading", done=GB, total=7 * GB, rate=2e6),
    }
    plan = d.step(obs, tasks)
    assert d.phase() is MigrationPhase.TRANSFERRING
    assert cond(d.status, "Exported")[:2] == ("True", "ExportSuccessful")
    # 2.5GB of 10GB at 4MB/s: 7.5GB left -> 1875s -> 32m
    assert cond(d.status, "Transferred") == (
        "False",
        "UploadInProgress",
        "Uploading to NFS (25% complete, 2.5GB/10GB, ETA: 32m)",
    )
    assert d.status.bytes_transferred == 5 * GB // 2
    assert ("TransferProgress", "Upload progress: 25%") in [
        (e.reason, e.message) for e in plan.events
    ]


def test_progress_is_weighted_by_disk_size() -> None:
    d, obs = flows.exporting()
    refs = d.export_refs()
    tasks = {
        refs[0]: exported(refs[0], GB),
        refs[1]: task(refs[1], stage="uploading", done=GB, total=2 * GB),
        refs[2]: task(refs[2], pb.TASK_STATE_PENDING, stage="queued"),
    }
    d.step(obs, tasks)
    # vda: (1 + 0)/2 weighted 1; vdb: (0.5 + 0)/2 weighted 2; vdc: 0 weighted 7
    assert d.status.progress == int(99 * (0.5 * 1 + 0.25 * 2) / 10)
    tasks[refs[2]] = task(refs[2], stage="uploading", done=7 * GB // 2, total=7 * GB)
    d.step(obs, tasks)
    assert d.status.progress == int(99 * (0.5 * 1 + 0.25 * 2 + 0.25 * 7) / 10)


def test_all_exported_records_converted_and_submits_every_import() -> None:
    d, _ = flows.all_exported()
    st = d.status
    assert st.phase is MigrationPhase.IMPORTING
    assert cond(st, "Converted") == (
        "True",
        "NoConversionNeeded",
        "disks are raw on the source and on the target",
    )
    assert cond(st, "Transferred")[:2] == ("True", "UploadCompleted")
    imports = [a for a in d.submitted if isinstance(a, ImportDisk)]
    assert [
        (a.disk, a.op_id, a.volume_name, a.source_format, a.target_format) for a in imports
    ] == [
        ("vda", f"{UID}/1/import/vda", "migrated-vda.raw", "raw", "raw"),
        ("vdb", f"{UID}/1/import/vdb", "migrated-vdb.raw", "raw", "raw"),
        ("vdc", f"{UID}/1/import/vdc", "migrated-vdc.raw", "raw", "raw"),
    ]
    assert all(a.expected_sha256 == "ab" * 32 for a in imports)
    assert all(a.expected_content_sha256 == "cd" * 32 for a in imports)
    assert [x.checksum for x in st.disks] == ["sha256:" + "ab" * 32] * 3
    assert st.checksum is not None and st.checksum.startswith("sha256:")
    assert st.checksum != st.disks[0].checksum  # several disks: the manifest digest
    assert st.bytes_transferred == 10 * GB


def test_single_disk_checksum_is_that_disks_checksum() -> None:
    d, _ = flows.all_exported((("vda", GB),))
    assert d.status.checksum == "sha256:" + "ab" * 32
    assert d.status.intermediate_storage_url == (
        "nfs:///mnt/migrations/virtrigaud/default/mig-0f1e2d3c/vda.raw"
    )


def _import_all(d: Driver, obs: Observations, content: str = "cd" * 32) -> Plan:
    tasks: dict[str, TaskView] = {
        ref: imported(ref, f"pool/migrated-{x.name}", x.size_bytes or 0, content)
        for ref, x in zip(d.import_refs(), d.status.disks, strict=True)
    }
    return d.step(obs, tasks)


def test_imports_done_create_the_target_virtualmachine() -> None:
    d, obs = flows.all_exported()
    plan = _import_all(d, obs)
    assert d.phase() is MigrationPhase.CREATING
    assert cond(d.status, "Imported")[:2] == ("True", "ImportSuccessful")
    assert "ImportCompleted" in reasons(plan)
    (create,) = [a for a in plan.actions if isinstance(a, CreateTargetVM)]
    target = VirtualMachine.from_dict(create.manifest)
    assert target.metadata.name == "migrated" and target.metadata.namespace == "default"
    assert target.metadata.annotations == {
        "virtrigaud.io/migrated-from": "default/src",
        "virtrigaud.io/migration": "default/mig",
        "virtrigaud.io/migration-uid": UID,
        "virtrigaud.io/imported-disk-id": "pool/migrated-vda",
        "virtrigaud.io/disk-checksum": d.status.checksum,
    }
    boot = target.spec.imported_disk
    assert boot is not None
    assert (boot.disk_id, boot.format.value, boot.source and boot.source.value, boot.size_gib) == (
        "pool/migrated-vda",
        "raw",
        "migration",
        None,  # 1 GB is no whole number of GiB: the disk keeps its size
    )
    assert boot.migration_ref is not None and boot.migration_ref.name == "mig"
    assert [(x.name, x.imported_disk and x.imported_disk.disk_id) for x in target.spec.disks] == [
        ("vdb", "pool/migrated-vdb"),
        ("vdc", "pool/migrated-vdc"),
    ]
    assert [x.imported_disk.size_gib for x in target.spec.disks if x.imported_disk] == [None, None]
    assert target.spec.resources is not None
    assert (target.spec.resources.cpu, target.spec.resources.memory_mib) == (2, 2048)
    assert [(n.name, n.network, n.mac) for n in target.spec.networks] == [
        ("eth0", "default", "52:54:00:00:00:01")  # named after the hint that mapped it
    ]
    assert target.spec.power_state is not None and target.spec.power_state.value == "Off"
    assert target.spec.provider_ref.name == "tgt"


def test_resource_hints_override_the_source() -> None:
    d, obs = flows.all_exported(
        (("vda", GB),), targetResourceHints={"cpu": 8, "memory": 16384, "disk": 50}
    )
    plan = _import_all(d, obs)
    (create,) = [a for a in plan.actions if isinstance(a, CreateTargetVM)]
    target = VirtualMachine.from_dict(create.manifest)
    assert target.spec.resources is not None
    assert (target.spec.resources.cpu, target.spec.resources.memory_mib) == (8, 16384)
    assert target.spec.imported_disk is not None and target.spec.imported_disk.size_gib == 50


def _created(d: Driver, obs: Observations) -> tuple[Driver, Observations]:
    plan = _import_all(d, obs)
    (create,) = [a for a in plan.actions if isinstance(a, CreateTargetVM)]
    target = VirtualMachine.from_dict(create.manifest)
    target.metadata.uid = "vm-uid"
    obs = dataclasses.replace(obs, target_object=target)
    plan = d.step(obs)
    assert d.phase() is MigrationPhase.CREATING and plan.actions == []
    target.status = VirtualMachine.from_dict(
        {**create.manifest, "status": {"id": "vm-77", "phase": "Ready"}}
    ).status
    return d, obs


def test_creating_waits_for_the_vm_then_validates_the_target() -> None:
    d, obs = flows.all_exported()
    d, obs = _created(d, obs)
    plan = d.step(obs)
    assert d.phase() is MigrationPhase.VALIDATING_TARGET
    assert cond(d.status, "Created")[:2] == ("True", "VMCreated")
    assert reasons(plan) == ["VMCreated"]
    described = pb.VM(id="vm-77")
    for x in d.status.disks:
        described.disks.add(id=x.name, format=pb.DISK_FORMAT_RAW, virtual_size_bytes=x.size_bytes)
    described.nics.add(id="net0", network="default")
    obs = dataclasses.replace(obs, target_vm=described)
    plan = d.step(obs)
    assert d.phase() is MigrationPhase.READY
    assert d.status.progress == 100 and d.status.completion_time == d.now
    assert reasons(plan) == ["MigrationCompleted"]
    assert cond(d.status, "Ready")[0] == "True"
    assert "content sha256 matched the source snapshot: vda, vdb, vdc" in (d.status.message or "")
    assert cond(d.status, "CleanedUp")[:2] == ("False", "CleanupPending")


def test_target_validation_catches_a_wrong_disk_size() -> None:
    d, obs = flows.all_exported()
    d, obs = _created(d, obs)
    d.step(obs)
    described = pb.VM(id="vm-77")
    for x in d.status.disks:
        described.disks.add(id=x.name, format=pb.DISK_FORMAT_RAW, virtual_size_bytes=GB)
    described.nics.add(id="net0", network="default")
    d.step(dataclasses.replace(obs, target_vm=described))
    assert d.phase() is MigrationPhase.FAILED
    assert cond(d.status, "Failed")[1] == "TargetValidationFailed"
    assert "disk vdb (from vdb) is 1000000000 bytes, expected 2000000000" in (
        d.status.message or ""
    )


def test_creating_refuses_a_foreign_virtualmachine() -> None:
    d, obs = flows.all_exported((("vda", GB),))
    foreign = VirtualMachine.from_dict(
        {
            "apiVersion": "infra.virtrigaud.io/v1beta1",
            "kind": "VirtualMachine",
            "metadata": {"name": "migrated", "namespace": "default"},
            "spec": {"providerRef": {"name": "tgt"}, "vmId": "other"},
        }
    )
    _import_all(d, dataclasses.replace(obs, target_object=foreign))
    assert d.phase() is MigrationPhase.FAILED
    assert d.status.message == (
        "target VirtualMachine default/migrated already exists and was not created by "
        "this migration"
    )


def test_target_vm_timeout_fails() -> None:
    d, obs = flows.all_exported((("vda", GB),))
    plan = _import_all(d, obs)
    (create,) = [a for a in plan.actions if isinstance(a, CreateTargetVM)]
    target = VirtualMachine.from_dict(create.manifest)
    obs = dataclasses.replace(obs, target_object=target)
    d.step(obs, advance=1000)
    assert d.phase() is MigrationPhase.CREATING
    d.step(obs, advance=1000)
    assert d.phase() is MigrationPhase.FAILED
    assert cond(d.status, "Failed")[1] == "TargetVMTimeout"


def test_failed_is_terminal() -> None:
    d, obs = flows.exporting((("vda", GB),))
    (ref,) = d.export_refs()
    d.step(
        obs, {ref: task(ref, pb.TASK_STATE_FAILED, error=(pb.ERROR_CODE_NOT_FOUND, "gone", False))}
    )
    assert d.phase() is MigrationPhase.FAILED
    plan = d.step(obs, advance=timedelta(hours=1).total_seconds())
    assert plan.actions == [] and plan.events == [] and plan.requeue_after is None
    assert d.status.disks[0].phase is DiskPhase.FAILED


def test_converted_uses_the_format_the_export_read_not_the_snapshot_overlay() -> None:
    """While the migration snapshot exists, DescribeVM shows the qcow2 overlay on top of
    the raw disk; the export reports what it really read (raw), and that is what counts."""
    d, obs = flows.exporting()
    during_snapshot = dataclasses.replace(obs, source_vm=vm(flows.THREE, fmt=pb.DISK_FORMAT_QCOW2))
    tasks: dict[str, TaskView] = {}
    for ref, disk in zip(d.export_refs(), d.status.disks, strict=True):
        done = exported(ref, disk.size_bytes or 0)
        done.export_result.source_format = pb.DISK_FORMAT_RAW
        tasks[ref] = done
    d.step(during_snapshot, tasks)
    assert [disk.source_format for disk in d.status.disks] == ["raw", "raw", "raw"]
    assert cond(d.status, "Converted") == (
        "True",
        "NoConversionNeeded",
        "disks are raw on the source and on the target",
    )


def test_exports_wait_for_a_free_slot_on_the_source_provider() -> None:
    d, obs = flows.snapshotting(vm(flows.THREE))
    op = flows.snapshot_probe_id(d, obs)
    done = task("t-snap", 3, snapshot_result={"snapshot_id": "snap-1"})
    # limit 2, one export of another migration running: one slot is free
    bounded = dataclasses.replace(obs, slots={"source": Slots("default/srcp", 2, 1)})
    d.step(bounded, probes={op: done})
    assert [a.disk for a in d.submitted if isinstance(a, ExportDisk)] == ["vda"]
    waiting = [disk.message for disk in d.status.disks[1:]]
    assert (
        waiting
        == [
            "waiting for a free task slot on Provider default/srcp (2 of 2 exports/imports running)"
        ]
        * 2
    )
    # the other migration's export finished: the next disk starts, the last still waits
    freed = dataclasses.replace(obs, slots={"source": Slots("default/srcp", 2, 0)})
    running = {d.status.disks[0].export_task_ref or "": task("t-1", stage="uploading")}
    d.step(freed, running)
    assert [a.disk for a in d.submitted if isinstance(a, ExportDisk)] == ["vda", "vdb"]
    assert d.status.disks[2].phase is DiskPhase.PENDING


def test_imports_wait_for_a_free_slot_on_the_target_provider() -> None:
    d, obs = flows.exporting()
    sizes = [x.size_bytes or 0 for x in d.status.disks]
    tasks: dict[str, TaskView] = {
        ref: exported(ref, size) for ref, size in zip(d.export_refs(), sizes, strict=True)
    }
    # one Provider is the source and the target; another migration runs one task on it
    shared = Slots("default/p", 2, 1)
    d.step(dataclasses.replace(obs, slots={"source": shared, "target": shared}), tasks)
    assert [a.disk for a in d.submitted if isinstance(a, ImportDisk)] == ["vda"]
    assert d.status.disks[1].message == (
        "waiting for a free task slot on Provider default/p (2 of 2 exports/imports running)"
    )


def test_disks_keep_their_exact_size_unless_a_hint_grows_the_boot_disk() -> None:
    odd = 21 << 29  # 10.5 GiB: sizeGiB would round it up to 11
    d, obs = flows.all_exported((("vda", odd), ("vdb", odd)), targetResourceHints={"disk": 10})
    plan = _import_all(d, obs)
    (create,) = [a for a in plan.actions if isinstance(a, CreateTargetVM)]
    target = VirtualMachine.from_dict(create.manifest)
    assert target.spec.imported_disk is not None
    assert target.spec.imported_disk.size_gib is None  # a hint of 10 GiB never shrinks it
    assert [x.imported_disk.size_gib for x in target.spec.disks if x.imported_disk] == [None]


def test_whole_gib_disks_record_their_size_and_a_hint_grows_the_boot_disk() -> None:
    d, obs = flows.all_exported(
        (("vda", 4 << 30), ("vdb", 2 << 30)), targetResourceHints={"disk": 8}
    )
    plan = _import_all(d, obs)
    (create,) = [a for a in plan.actions if isinstance(a, CreateTargetVM)]
    target = VirtualMachine.from_dict(create.manifest)
    assert target.spec.imported_disk is not None and target.spec.imported_disk.size_gib == 8
    assert [x.imported_disk.size_gib for x in target.spec.disks if x.imported_disk] == [2]


def _described(d: Driver, power: int = pb.POWER_STATE_OFF) -> pb.VM:
    described = pb.VM(id="vm-77", power_state=power)  # type: ignore[arg-type]
    for x in d.status.disks:
        described.disks.add(id=x.name, format=pb.DISK_FORMAT_RAW, virtual_size_bytes=x.size_bytes)
    described.nics.add(id="net0", network="default")
    return described


def test_power_on_and_verify_powers_the_target_on_and_waits_until_it_runs() -> None:
    d, obs = flows.all_exported(targetPowerPolicy="PowerOnAndVerify")
    d, obs = _created(d, obs)
    d.step(obs)
    assert d.phase() is MigrationPhase.VALIDATING_TARGET
    plan = d.step(dataclasses.replace(obs, target_vm=_described(d)))
    assert plan.actions == [PowerOnTargetVM("default", "migrated")]
    assert d.phase() is MigrationPhase.VALIDATING_TARGET
    assert d.status.message == "Powering on the target VM default/migrated to verify it starts"
    target = obs.target_object
    assert target is not None
    target.spec.power_state = PowerState.ON  # the action landed; the VM is still starting
    plan = d.step(dataclasses.replace(obs, target_vm=_described(d)))
    assert plan.actions == [] and d.phase() is MigrationPhase.VALIDATING_TARGET
    plan = d.step(dataclasses.replace(obs, target_vm=_described(d, pb.POWER_STATE_ON)))
    assert d.phase() is MigrationPhase.READY
    assert (d.status.message or "").endswith("; target VM powered on and seen running")


def test_power_on_and_verify_fails_when_the_target_cannot_power_on() -> None:
    d, obs = flows.all_exported(targetPowerPolicy="PowerOnAndVerify")
    d, obs = _created(d, obs)
    d.step(obs)
    target = obs.target_object
    assert target is not None and target.status is not None
    target.spec.power_state = PowerState.ON
    target.status.conditions.append(
        Condition(
            type="Ready",
            status=ConditionStatus.FALSE,
            reason="PowerFailed",
            message="power action On failed: no bootable device",
            last_transition_time=d.now,
        )
    )
    d.step(dataclasses.replace(obs, target_vm=_described(d)))
    assert d.phase() is MigrationPhase.FAILED
    assert cond(d.status, "Failed")[1] == "TargetPowerOnFailed"
    assert "no bootable device" in (d.status.message or "")
