"""The pure VMMigration planner: ``plan(migration, obs, now) -> Plan``. No I/O.

Phases and their work (each entered when its work really happens):

=================  =====================================================================
Pending            first pass: the finalizer is added; nothing else
Validating         rules 1-6 (``validation``); ValidationStarted / ValidationSuccessful
Snapshotting       optional graceful shutdown, then the snapshot (``snapshot``)
Exporting          a disk is queued, reading the snapshot, or converting on the source
Transferring       every unfinished export is uploading to intermediate storage
Converting         an import converts on the target (only when the source cannot
                   produce the target format; otherwise Converted is recorded done)
Importing          the target provider downloads, verifies and stores the disks
Creating           the target VirtualMachine object exists; its VM is being created
ValidatingTarget   DescribeVM on the target vs what was migrated (``finish``)
Ready              migration completed; the cleanup policy runs (``cleanup``)
Failed             terminal; running tasks are cancelled, data kept until deletion
=================  =====================================================================

The spec is read on every pass; what must not change under a running migration is
recorded in the status when it is decided (object URLs and formats per disk, the
snapshot, the attempt numbers), so editing the spec mid-flight cannot make the
manager look for objects under different names. Validation is not re-run on edits.

Besides ``plan`` the shell uses three more pure functions: ``needs`` (which quick RPCs
to make), ``probes`` (which idempotent short submissions to make while gathering, see
``model``) and ``record_submission`` / ``record_submission_error`` (fold the result of
submitting an export/import into the new status, in the same pass).
"""

from __future__ import annotations

from datetime import datetime

from manager.api import (
    ConditionStatus,
    DiskPhase,
    MigrationPhase,
    Provider,
    VMMigration,
    VMMigrationStatus,
    find_condition,
)
from manager.migration import cleanup, disks, finish, retry, snapshot, target, transfer, validation
from manager.migration.context import Pass
from manager.migration.model import (
    DEFAULT_SETTINGS,
    FINALIZER,
    AddFinalizer,
    ExportDisk,
    ImportDisk,
    Needs,
    Observations,
    Plan,
    Probe,
    RpcFailure,
    Settings,
    TaskRef,
)
from virtrigaud.provider.v1 import provider_pb2 as pb

DATA_PHASES = frozenset(
    {
        MigrationPhase.EXPORTING,
        MigrationPhase.TRANSFERRING,
        MigrationPhase.CONVERTING,
        MigrationPhase.IMPORTING,
    }
)
_NEEDS = {
    MigrationPhase.VALIDATING: Needs(source_vm=True, capabilities=True, validate=True),
    MigrationPhase.SNAPSHOTTING: Needs(source_vm=True, capabilities=True),
    MigrationPhase.CREATING: Needs(source_vm=True),
    MigrationPhase.VALIDATING_TARGET: Needs(capabilities=True, target_vm=True),
    MigrationPhase.READY: Needs(source_vm=True),
}


def _task_refs(status: VMMigrationStatus) -> tuple[TaskRef, ...]:
    refs: list[TaskRef] = []
    for disk in status.disks:
        if disk.phase is DiskPhase.EXPORTING and disk.export_task_ref:
            refs.append(TaskRef("source", disk.export_task_ref))
        if disk.phase is DiskPhase.IMPORTING and disk.import_task_ref:
            refs.append(TaskRef("target", disk.import_task_ref))
    return tuple(refs)


def needs(migration: VMMigration) -> Needs:
    """The quick RPCs this pass needs (everything else comes from the store)."""
    status = migration.status or VMMigrationStatus()
    phase = status.phase
    if migration.metadata.deletion_timestamp is not None:
        return Needs(source_vm=True, tasks=_task_refs(status))
    if phase in DATA_PHASES:  # the source VM only for Converted and the manifest
        exported = all(d.phase in disks.EXPORT_DONE for d in status.disks)
        return Needs(source_vm=exported, tasks=_task_refs(status))
    cleaned = find_condition(status.conditions, "CleanedUp")
    if phase is MigrationPhase.READY and cleaned and cleaned.status is ConditionStatus.TRUE:
        return Needs()
    return _NEEDS.get(phase, Needs()) if phase else Needs()


def validate_request(
    migration: VMMigration, vm: pb.VM, provider: Provider | None
) -> tuple[str, list[str]]:
    """(storage hint, networks) for the target provider's Validate RPC."""
    plans = target.nic_plans(migration, vm, provider)
    nets = list(dict.fromkeys(plan.target for plan in plans if plan.target))
    return disks.hint_for(migration, provider), nets


def probes(
    migration: VMMigration, obs: Observations, now: datetime, settings: Settings = DEFAULT_SETTINGS
) -> list[Probe]:
    """Short idempotent submissions the shell makes while gathering (see ``model``)."""
    if migration.metadata.deletion_timestamp is not None:
        return cleanup.finalize_probes(migration, obs, now, settings)
    status = migration.status
    if status is None:
        return []
    if status.phase is MigrationPhase.SNAPSHOTTING:
        due = status.last_retry_time is None or now >= status.last_retry_time
        return snapshot.probes(migration, obs, settings) if due else []
    if status.phase is MigrationPhase.READY:
        return cleanup.ready_probes(migration, obs, now, settings)
    if status.phase is MigrationPhase.FAILED:
        found = snapshot.restore_probe(migration, obs, "restore")
        restored = find_condition(status.conditions, "SourceRestored")
        return [found] if found and restored is None else []
    return []


def plan(
    migration: VMMigration, obs: Observations, now: datetime, settings: Settings = DEFAULT_SETTINGS
) -> Plan:
    """The new status, actions, events and requeue delay for one pass."""
    p = Pass(migration, obs, now, settings)
    if migration.metadata.deletion_timestamp is not None:
        cleanup.finalize(p)
        return p.plan
    if FINALIZER not in migration.metadata.finalizers:
        p.act(AddFinalizer())
    p.status.observed_generation = migration.metadata.generation
    phase = p.status.phase
    if phase is None:
        p.enter(MigrationPhase.PENDING, "Migration created, awaiting processing")
        p.status.progress = 0
        p.requeue(0)
    elif phase is MigrationPhase.PENDING:
        validation.start(p)
    elif phase is MigrationPhase.VALIDATING:
        validation.step(p)
    elif phase is MigrationPhase.SNAPSHOTTING:
        snapshot.step(p)
    elif phase in DATA_PHASES:
        transfer.step(p)
    elif phase is MigrationPhase.CREATING:
        finish.creating(p)
    elif phase is MigrationPhase.VALIDATING_TARGET:
        finish.validating_target(p)
    elif phase is MigrationPhase.READY:
        cleanup.after_ready(p)
    elif phase is MigrationPhase.FAILED:
        snapshot.after_failure(p)
    return p.plan


def record_submission(plan: Plan, action: ExportDisk | ImportDisk, task: pb.Task) -> None:
    """Save the task id a submission returned into the new status (same pass)."""
    disk = next((d for d in plan.status.disks if d.name == action.disk), None)
    if disk is None:
        return
    if isinstance(action, ExportDisk):
        disk.export_task_ref = task.id
        plan.status.export_task_ref = task.id
    else:
        disk.import_task_ref = task.id
        plan.status.import_task_ref = task.id


def record_submission_error(
    migration: VMMigration,
    plan: Plan,
    action: ExportDisk | ImportDisk,
    failure: RpcFailure,
    now: datetime,
    *,
    settings: Settings = DEFAULT_SETTINGS,
) -> None:
    """A submission that failed: permanent errors fail the migration; transient ones are
    noted and the next pass submits again (same operation id)."""
    p = Pass.resume(migration, plan, now, settings)
    disk = next((d for d in plan.status.disks if d.name == action.disk), None)
    what = "export" if isinstance(action, ExportDisk) else "import"
    name = action.disk
    message = f"submitting the {what} of disk {name} failed: {failure}"
    if retry.classify(failure) is retry.Disposition.PERMANENT:
        p.fail(retry.failure_reason(failure), message, disk=disk)
        return
    if disk is not None:
        disk.message = message
    p.wait()
