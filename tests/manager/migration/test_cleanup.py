"""Cleanup policy after Ready and the finalizer on deletion (no I/O)."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

import pytest

from manager.api import (
    Condition,
    ConditionStatus,
    DiskMigrationStatus,
    DiskPhase,
    MigrationPhase,
    VirtualMachine,
    VMMigrationStatus,
)
from manager.migration import planner
from manager.migration.model import (
    FORCE_DELETE_ANNOTATION,
    CancelTask,
    DeleteImportedDisk,
    DeleteObject,
    DeleteSnapshot,
    DeleteSourceObject,
    DeleteSourceVM,
    DeleteTargetVM,
    Observations,
    RemoveFinalizer,
)
from tests.manager.migration.builders import (
    NOW,
    UID,
    Driver,
    cond,
    events,
    failed,
    good_obs,
    migration,
    task,
    vm,
)
from virtrigaud.provider.v1 import provider_pb2 as pb

URL = "nfs:///mnt/migrations/virtrigaud/default/mig-0f1e2d3c/{}.raw"
SNAP = "vmmig-0f1e2d3c-1"


def _status(phase: MigrationPhase, disk_phase: DiskPhase = DiskPhase.IMPORTED) -> VMMigrationStatus:
    status = VMMigrationStatus(
        phase=phase,
        snapshot_id="snap-1",
        completion_time=NOW if phase is MigrationPhase.READY else None,
        disks=[
            DiskMigrationStatus(
                name=name,
                id=name,
                phase=disk_phase,
                intermediate_storage_url=URL.format(name),
                export_task_ref=f"ex-{name}",
                imported_disk_id=f"pool/{name}" if disk_phase is DiskPhase.IMPORTED else None,
                attempt=1,
            )
            for name in ("vda", "vdb")
        ],
    )
    if phase is MigrationPhase.READY:
        status.conditions.append(
            Condition(
                type="CleanedUp",
                status=ConditionStatus.FALSE,
                reason="CleanupPending",
                last_transition_time=NOW,
            )
        )
    return status


def _obs(**changes: object) -> Observations:
    base = good_obs(vm(snapshots=(("snap-1", SNAP),)))
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


POLICIES = [
    ((True, True, False), ["DeleteObject:vda", "DeleteObject:vdb", "DeleteSnapshot:snap-1"]),
    ((False, True, False), ["DeleteSnapshot:snap-1"]),
    ((True, False, False), ["DeleteObject:vda", "DeleteObject:vdb"]),
    ((True, True, True), ["DeleteObject:vda", "DeleteObject:vdb", "DeleteSourceVM:vm-1"]),
    ((False, False, True), ["DeleteSourceVM:vm-1"]),
    ((False, True, True), ["DeleteSourceVM:vm-1"]),  # the snapshot goes with the VM
]


def _names(probes: list[object]) -> list[str]:
    out = []
    for probe in probes:
        detail = {
            DeleteObject: lambda p: p.disk,
            DeleteSnapshot: lambda p: p.snapshot_id,
            DeleteSourceVM: lambda p: p.vm_id,
            DeleteImportedDisk: lambda p: p.disk_id,
        }[type(probe)](probe)
        out.append(f"{type(probe).__name__}:{detail}")
    return out


def _policy(flags: tuple[bool, bool, bool]) -> dict[str, bool]:
    return dict(zip(("deleteIntermediate", "deleteSnapshot", "deleteSource"), flags, strict=True))


@pytest.mark.parametrize(("flags", "expected"), POLICIES)
def test_cleanup_policy_decides_the_deletes(
    flags: tuple[bool, bool, bool], expected: list[str]
) -> None:
    mig = migration(_status(MigrationPhase.READY), cleanupPolicy=_policy(flags))
    assert _names(planner.probes(mig, _obs(), NOW)) == expected  # type: ignore[arg-type]


def test_nothing_to_clean_is_done_at_once() -> None:
    from tests.manager.migration import flows

    d, obs = flows.all_exported((("vda", 10**9),), cleanupPolicy=_policy((False, False, False)))
    from manager.migration import finish
    from manager.migration.context import Pass

    p = Pass(d.mig, obs, NOW, d.settings)
    finish.begin_cleanup(p)
    assert cond(p.status, "CleanedUp") == (
        "True",
        "NothingToClean",
        "cleanupPolicy keeps everything",
    )


def test_cleanup_completes_and_deletes_the_source_object_last() -> None:
    d = Driver(migration(_status(MigrationPhase.READY), cleanupPolicy=_policy((True, False, True))))
    obs = _obs()
    probes = planner.probes(d.mig, obs, d.now)
    running = {p.op_id: task("t", pb.TASK_STATE_RUNNING) for p in probes}
    plan = d.step(obs, probes=running)
    assert cond(d.status, "CleanedUp")[:2] == ("False", "CleanupInProgress")
    assert plan.actions == []  # the source object stays until its VM is really gone
    done = {p.op_id: task("t", pb.TASK_STATE_SUCCEEDED) for p in probes}
    plan = d.step(obs, probes=done)
    assert cond(d.status, "CleanedUp") == (
        "True",
        "CleanupCompleted",
        f"deleted intermediate object {URL.format('vda')}, intermediate object "
        f"{URL.format('vdb')}, source VM vm-1 (with its disks and snapshots)",
    )
    assert "CleanupCompleted" in [r for r, _ in events(plan)]
    assert plan.actions == [DeleteSourceObject("default", "src")]
    assert planner.probes(d.mig, obs, d.now) == []  # done: nothing more is submitted
    assert d.phase() is MigrationPhase.READY


def test_failed_delete_is_resubmitted_in_the_next_round() -> None:
    d = Driver(
        migration(_status(MigrationPhase.READY), cleanupPolicy=_policy((True, False, False)))
    )
    obs = _obs()
    probes = planner.probes(d.mig, obs, d.now)
    assert probes[0].op_id == f"{UID}/cleanup-r0/delete-object/vda"
    results = {p.op_id: failed("t", pb.ERROR_CODE_UNAVAILABLE, "s3 down", True) for p in probes}
    plan = d.step(obs, probes=results, advance=10)
    assert cond(d.status, "CleanedUp")[1] == "CleanupFailed"
    assert plan.requeue_after == 50  # the next 60s round
    assert [r for r, _ in events(plan)] == ["CleanupFailed"]
    later = planner.probes(d.mig, obs, d.now + timedelta(seconds=50))
    assert later[0].op_id == f"{UID}/cleanup-r1/delete-object/vda"


def test_already_gone_counts_as_deleted() -> None:
    d = Driver(
        migration(_status(MigrationPhase.READY), cleanupPolicy=_policy((False, True, False)))
    )
    obs = _obs()
    (probe,) = planner.probes(d.mig, obs, d.now)
    d.step(
        obs, probes={probe.op_id: failed("t", pb.ERROR_CODE_NOT_FOUND, "no such snapshot", False)}
    )
    assert cond(d.status, "CleanedUp")[:2] == ("True", "CleanupCompleted")


def test_leftover_snapshots_of_lost_tasks_are_found_by_name() -> None:
    mig = migration(_status(MigrationPhase.READY), cleanupPolicy=_policy((False, True, False)))
    described = vm(snapshots=(("snap-1", SNAP), ("snap-x", "vmmig-0f1e2d3c-2"), ("mine", "user")))
    probes = planner.probes(mig, _obs(source_vm=described), NOW)
    assert _names(probes) == ["DeleteSnapshot:snap-1", "DeleteSnapshot:snap-x"]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "phase",
    [p for p in MigrationPhase if p is not MigrationPhase.READY],
)
def test_the_source_is_never_deleted_before_ready(phase: MigrationPhase) -> None:
    mig = migration(_status(phase), cleanupPolicy=_policy((True, True, True)))
    assert not any(isinstance(p, DeleteSourceVM) for p in planner.probes(mig, _obs(), NOW))
    mig.metadata.deletion_timestamp = NOW
    assert not any(isinstance(p, DeleteSourceVM) for p in planner.probes(mig, _obs(), NOW))


# -- the finalizer --------------------------------------------------------------------------


def _deleting(phase: MigrationPhase, disk_phase: DiskPhase, **spec: Any) -> Driver:
    mig = migration(_status(phase, disk_phase), **spec)
    mig.metadata.deletion_timestamp = NOW
    return Driver(mig)


def test_deleting_mid_flight_cancels_then_deletes_then_removes_the_finalizer() -> None:
    d = _deleting(MigrationPhase.TRANSFERRING, DiskPhase.EXPORTING)
    running = {f"ex-{n}": task(f"ex-{n}", stage="uploading") for n in ("vda", "vdb")}
    obs = dataclasses.replace(_obs(), tasks=running)
    assert planner.probes(d.mig, obs, d.now) == []  # nothing deleted while tasks run
    plan = d.step(obs, running)
    assert plan.actions == [CancelTask("source", "ex-vda"), CancelTask("source", "ex-vdb")]
    assert d.status.message == "Deleting: waiting for 2 running tasks to stop"
    stopped = {k: task(k, pb.TASK_STATE_CANCELLED) for k in running}
    obs = dataclasses.replace(obs, tasks=stopped)
    probes = planner.probes(d.mig, obs, d.now)
    assert _names(probes) == ["DeleteObject:vda", "DeleteObject:vdb", "DeleteSnapshot:snap-1"]  # type: ignore[arg-type]
    assert probes[0].op_id == f"{UID}/finalize-r0/delete-object/vda"
    plan = d.step(obs, stopped, {p.op_id: task("t", pb.TASK_STATE_RUNNING) for p in probes})
    assert plan.actions == []
    plan = d.step(obs, stopped, {p.op_id: task("t", pb.TASK_STATE_SUCCEEDED) for p in probes})
    assert plan.actions == [RemoveFinalizer()]
    assert ("CleanupCompleted", d.status.message) in events(plan)


def test_deleting_removes_a_half_created_target_vm_and_waits_for_it() -> None:
    d = _deleting(
        MigrationPhase.CREATING, DiskPhase.IMPORTED, cleanupPolicy=_policy((True, True, False))
    )
    target = VirtualMachine.from_dict(
        {
            "apiVersion": "infra.virtrigaud.io/v1beta1",
            "kind": "VirtualMachine",
            "metadata": {
                "name": "migrated",
                "namespace": "default",
                "annotations": {"virtrigaud.io/migration-uid": UID},
            },
            "spec": {"providerRef": {"name": "tgt"}, "importedDisk": {"diskID": "pool/vda"}},
        }
    )
    obs = _obs(target_object=target)
    done = {p.op_id: task("t", pb.TASK_STATE_SUCCEEDED) for p in planner.probes(d.mig, obs, d.now)}
    plan = d.step(obs, probes=done)
    assert plan.actions == [DeleteTargetVM("default", "migrated")]
    target.metadata.deletion_timestamp = NOW
    plan = d.step(obs, probes=done)
    assert plan.actions == []  # waiting for it to go
    gone = _obs(target_object=None)
    probes = planner.probes(d.mig, gone, d.now)
    # Only now, with no VM of ours using them, the imported disks are deleted too.
    assert _names(probes)[-2:] == ["DeleteImportedDisk:pool/vda", "DeleteImportedDisk:pool/vdb"]  # type: ignore[arg-type]
    done = {p.op_id: task("t", pb.TASK_STATE_SUCCEEDED) for p in probes}
    plan = d.step(gone, probes=done)
    assert plan.actions == [RemoveFinalizer()]
    assert "imported disk pool/vda on the target" in (d.status.message or "")


def test_deleting_before_the_vm_exists_deletes_imported_disks_on_the_target() -> None:
    d = _deleting(MigrationPhase.IMPORTING, DiskPhase.IMPORTED)
    obs = _obs(target_object=None)
    probes = planner.probes(d.mig, obs, d.now)
    disks = [p for p in probes if isinstance(p, DeleteImportedDisk)]
    assert [(p.op_id, p.disk_id) for p in disks] == [
        (f"{UID}/finalize-r0/delete-disk/vda", "pool/vda"),
        (f"{UID}/finalize-r0/delete-disk/vdb", "pool/vdb"),
    ]
    # A disk some other VM uses is refused: reported, the finalizer stays.
    answers = {p.op_id: task("t", pb.TASK_STATE_SUCCEEDED) for p in probes}
    answers[disks[1].op_id] = failed(
        "t", pb.ERROR_CODE_FAILED_PRECONDITION, "volume pool/vdb is attached to VM 'x'", False
    )
    plan = d.step(obs, probes=answers)
    assert RemoveFinalizer() not in plan.actions
    assert "imported disk pool/vdb on the target: " in (d.status.message or "")
    answers[disks[1].op_id] = task("t", pb.TASK_STATE_SUCCEEDED)
    plan = d.step(obs, probes=answers)
    assert plan.actions == [RemoveFinalizer()]


def test_deleting_a_ready_migration_keeps_its_vm() -> None:
    status = _status(MigrationPhase.READY)
    status.conditions[0].status = ConditionStatus.TRUE
    mig = migration(status)
    mig.metadata.deletion_timestamp = NOW
    target = VirtualMachine.from_dict(
        {
            "apiVersion": "infra.virtrigaud.io/v1beta1",
            "kind": "VirtualMachine",
            "metadata": {"name": "migrated", "annotations": {"virtrigaud.io/migration-uid": UID}},
            "spec": {"providerRef": {"name": "tgt"}, "importedDisk": {"diskID": "pool/vda"}},
        }
    )
    obs = _obs(target_object=target)
    assert planner.probes(mig, obs, NOW) == []  # already cleaned up
    plan = planner.plan(mig, obs, NOW)
    assert plan.actions == [RemoveFinalizer()]


def test_cleanup_failure_keeps_the_finalizer_until_forced() -> None:
    d = _deleting(MigrationPhase.EXPORTING, DiskPhase.EXPORTED)
    obs = _obs()
    probes = planner.probes(d.mig, obs, d.now)
    results = {
        p.op_id: failed("t", pb.ERROR_CODE_UNAUTHENTICATED, "bad key", False) for p in probes
    }
    plan = d.step(obs, probes=results)
    assert RemoveFinalizer() not in plan.actions
    assert [r for r, _ in events(plan)] == ["CleanupFailed"]
    assert (d.status.message or "").startswith("cleanup failed, the finalizer stays: ")
    d.mig.metadata.annotations[FORCE_DELETE_ANNOTATION] = "true"
    assert planner.probes(d.mig, obs, d.now) == []
    plan = d.step(obs)
    assert plan.actions == [RemoveFinalizer()]
    assert [r for r, _ in events(plan)] == ["ForceDeleted"]


def test_failed_migrations_keep_their_data_until_deleted() -> None:
    mig = migration(_status(MigrationPhase.FAILED, DiskPhase.EXPORTED))
    assert planner.probes(mig, _obs(), NOW) == []
    assert planner.plan(mig, _obs(), NOW).actions == []


def test_snapshot_in_flight_is_awaited_before_deletion() -> None:
    status = VMMigrationStatus(phase=MigrationPhase.SNAPSHOTTING)
    mig = migration(status)
    mig.metadata.deletion_timestamp = NOW
    probes = planner.probes(mig, _obs(source_vm=vm()), NOW)
    assert [type(p).__name__ for p in probes] == ["CreateSnapshot"]
    plan = planner.plan(mig, _obs(probes={probes[0].op_id: task("s", pb.TASK_STATE_RUNNING)}), NOW)
    assert plan.actions == []


def test_an_import_that_finished_after_the_last_status_write_is_deleted_too() -> None:
    d = _deleting(MigrationPhase.IMPORTING, DiskPhase.IMPORTING)
    for disk in d.mig.status.disks:  # type: ignore[union-attr]
        disk.import_task_ref = f"im-{disk.name}"
    finished = task("im-vda", pb.TASK_STATE_SUCCEEDED)
    finished.import_result.disk_id = "pool/late-vda"
    obs = dataclasses.replace(
        _obs(target_object=None),
        tasks={"im-vda": finished, "im-vdb": task("im-vdb", pb.TASK_STATE_CANCELLED)},
    )
    disks = [p for p in planner.probes(d.mig, obs, d.now) if isinstance(p, DeleteImportedDisk)]
    assert [(p.disk, p.disk_id) for p in disks] == [("vda", "pool/late-vda")]
