"""Snapshotting: the optional graceful shutdown, then the snapshot every export reads.

Cold migration is opt-in with ``spec.sourcePowerPolicy: ShutdownBeforeSnapshot``: a
running source gets a Power SHUTDOWN task (graceful, forced off after
``Settings.shutdown_timeout_seconds``) before the snapshot, so the copy is
application-consistent. ``status.sourcePoweredOff`` records the original power state:
``true`` when this migration shut the source down (it was running), ``false`` when it
was already off; unset with the default policy ``Keep``. The source stays off after
the migration (a cold migration must not let the two copies diverge). When the
migration fails, or is deleted before Ready, a source it shut down is powered back on
(probe ``PowerOnSource``; condition ``SourceRestored``: ``SourcePoweredOn`` or
``PowerOnFailed``, with the events ``SourcePowerRestored`` /
``SourcePowerRestoreFailed``). On deletion this waits until the migration's snapshot
is gone, so the power-on never races the snapshot's merge.

A source that is powered off (by the user, or by the shutdown above) whose provider
cannot snapshot it (CreateSnapshot UNIMPLEMENTED or FAILED_PRECONDITION, e.g. a raw
disk on a Proxmox directory storage) is exported as it is, without a snapshot:
Snapshotted is True with reason ``SourceOffNoSnapshot``, and the VirtualMachine
controller holds the source's power off until the migration ends (a running source
that cannot be snapshotted still fails the migration).

The snapshot is named ``vmmig-<uid8>-<attempt>``. Both steps are probes: the shell
submits them with a deterministic operation id and the planner reads the task. A failed
snapshot is retried per the retry policy (new attempt, new name); a snapshot that
already exists under this attempt's name (the task was lost after it was taken) is
adopted rather than taken twice. On success the disks are set up and every export is
submitted in the same pass (phase Exporting).
"""

from __future__ import annotations

from manager.api import (
    Condition,
    ConditionStatus,
    MigrationPhase,
    SourcePowerPolicy,
    VMMigration,
    find_condition,
)
from manager.migration import disks, naming, retry, transfer
from manager.migration.context import TERMINAL_TASK_STATES, Pass
from manager.migration.model import (
    CreateSnapshot,
    Observations,
    PowerOffSource,
    PowerOnSource,
    Probe,
    RpcFailure,
    Settings,
)
from virtrigaud.provider.v1 import provider_pb2 as pb


def _vm_id(obs: Observations) -> str | None:
    vm = obs.source_object
    if vm is None:
        return None
    return (vm.status.id if vm.status else None) or vm.spec.vm_id


def _attempt(migration: VMMigration) -> int:
    return ((migration.status.retry_attempts if migration.status else None) or 0) + 1


def power_probe(migration: VMMigration, obs: Observations, s: Settings) -> PowerOffSource | None:
    status = migration.status
    vm_id = _vm_id(obs)
    wanted = migration.spec.source_power_policy is SourcePowerPolicy.SHUTDOWN_BEFORE_SNAPSHOT
    if not wanted or vm_id is None or status is None or status.source_powered_off is not None:
        return None
    op = naming.op_id(migration, _attempt(migration), "shutdown", vm_id)
    return PowerOffSource(op, vm_id, s.shutdown_timeout_seconds)


def restore_probe(migration: VMMigration, obs: Observations, label: str) -> PowerOnSource | None:
    """Power the source back on if this migration shut it down and has not restored it."""
    status = migration.status
    vm_id = _vm_id(obs)
    if status is None or not status.source_powered_off or vm_id is None:
        return None
    restored = find_condition(status.conditions, "SourceRestored")
    if restored is not None and restored.status is ConditionStatus.TRUE:
        return None
    return PowerOnSource(naming.op_id(migration, label, "power-on", vm_id), vm_id)


def after_failure(p: Pass) -> None:
    """Failed: power a source this migration shut down back on (once)."""
    if find_condition(p.status.conditions, "SourceRestored") is not None:
        return
    probe = restore_probe(p.migration, p.obs, "restore")
    if probe is None:
        return
    view = p.obs.probes.get(probe.op_id)
    if view is None or (isinstance(view, pb.Task) and view.state not in TERMINAL_TASK_STATES):
        p.poll()
        return
    if isinstance(view, pb.Task) and view.state == pb.TASK_STATE_SUCCEEDED:
        message = f"source VM {probe.vm_id} powered back on after the failed migration"
        p.condition("SourceRestored", True, "SourcePoweredOn", message)
        p.event("SourcePowerRestored", message)
        return
    failure = view if isinstance(view, RpcFailure) else RpcFailure.from_task(view)
    if failure.retryable and isinstance(view, RpcFailure):
        p.wait()  # the provider cannot be reached yet: try again
        return
    message = f"could not power source VM {probe.vm_id} back on: {failure}; power it on by hand"
    p.condition("SourceRestored", False, "PowerOnFailed", message)
    p.event("SourcePowerRestoreFailed", message, warning=True)


def create_probe(migration: VMMigration, obs: Observations) -> CreateSnapshot | None:
    vm_id = _vm_id(obs)
    if vm_id is None:
        return None
    attempt = _attempt(migration)
    ns = migration.metadata.namespace or "default"
    return CreateSnapshot(
        naming.op_id(migration, attempt, "snapshot", vm_id),
        vm_id,
        naming.snapshot_name(migration, attempt),
        f"VMMigration {ns}/{migration.metadata.name}",
    )


def probes(migration: VMMigration, obs: Observations, s: Settings) -> list[Probe]:
    status = migration.status
    if status is None or status.phase is not MigrationPhase.SNAPSHOTTING:
        return []
    power = power_probe(migration, obs, s)
    if power is not None:
        return [power]
    if status.snapshot_id or exporting_without_snapshot(status.conditions):
        return []
    create = create_probe(migration, obs)
    return [create] if create else []


def enter(p: Pass, vm: pb.VM) -> None:
    """Validated: go to Snapshotting (and note whether a shutdown is needed)."""
    p.enter(MigrationPhase.SNAPSHOTTING, "Creating the source snapshot")
    message = f"Creating a snapshot of source VM {vm.id}"
    if p.spec.source_power_policy is SourcePowerPolicy.SHUTDOWN_BEFORE_SNAPSHOT:
        if vm.power_state == pb.POWER_STATE_ON:
            message = f"Shutting down source VM {vm.id} before the snapshot"
        else:
            p.status.source_powered_off = False
            message += " (it is already powered off)"
    p.condition("Snapshotted", False, "SnapshotInProgress", message)
    p.requeue(0)


def _task(p: Pass, probe: Probe, what: str) -> pb.Task | None:
    """The probe's task when it succeeded; handles running, failed and unreachable."""
    view = p.obs.probes.get(probe.op_id)
    if isinstance(view, pb.Task) and view.state == pb.TASK_STATE_SUCCEEDED:
        return view
    if view is None or (isinstance(view, pb.Task) and view.state not in TERMINAL_TASK_STATES):
        p.status.message = f"{what}: {view.stage if view is not None else 'submitting'}"
        p.poll()
        return None
    if isinstance(view, RpcFailure) and view.retryable:
        p.status.message = f"{what}: cannot reach the source provider: {view}"
        p.wait()
        return None
    _failed(p, view if isinstance(view, RpcFailure) else RpcFailure.from_task(view), what)
    return None


NO_SNAPSHOT = "SourceOffNoSnapshot"
_CANNOT_SNAPSHOT = frozenset({pb.ERROR_CODE_UNIMPLEMENTED, pb.ERROR_CODE_FAILED_PRECONDITION})


def _failed(p: Pass, failure: RpcFailure, what: str) -> None:
    if failure.code == pb.ERROR_CODE_ALREADY_EXISTS and _adopt(p):
        return
    vm = p.obs.source_vm
    source_off = isinstance(vm, pb.VM) and vm.power_state == pb.POWER_STATE_OFF
    if what == "snapshot" and source_off and failure.code in _CANNOT_SNAPSHOT:
        message = (
            f"source VM is powered off and cannot be snapshotted ({failure.message}): "
            "its disks are exported as they are; virtrigaud will not power it on until "
            "the migration ends (do not start it by other means meanwhile)"
        )
        p.condition("Snapshotted", True, NO_SNAPSHOT, message)
        p.event("SnapshotSkipped", message)
        return
    message = f"{what} failed: {failure}"
    if retry.classify(failure) is retry.Disposition.PERMANENT:
        p.fail(retry.failure_reason(failure), message)
    else:
        retry.schedule(p, message)


def _adopt(p: Pass) -> bool:
    vm = p.obs.source_vm
    name = naming.snapshot_name(p.migration, p.migration_attempt())
    found = (
        next((s for s in vm.snapshots if s.name == name), None) if isinstance(vm, pb.VM) else None
    )
    if found is None:
        return False
    _created(p, found.id)
    return True


def _created(p: Pass, snapshot_id: str) -> None:
    p.status.snapshot_id = snapshot_id
    p.condition("Snapshotted", True, "SnapshotCreated", f"Snapshot {snapshot_id} created")
    p.event("SnapshotCreated", f"Snapshot {snapshot_id} created")


def step(p: Pass) -> None:
    if p.source_vm_id() is None:
        p.fail("SourceVMGone", f"source VirtualMachine {p.source_ref} disappeared")
        return
    if not p.retry_due():
        p.requeue(p.retry_wait())
        return
    power = power_probe(p.migration, p.obs, p.settings)
    if power is not None:
        if _task(p, power, f"shutdown of source VM {power.vm_id}") is not None:
            p.status.source_powered_off = True
            p.event("SourcePoweredOff", f"Source VM {power.vm_id} shut down before the snapshot")
            p.condition(
                "Snapshotted",
                False,
                "SnapshotInProgress",
                "Source VM shut down; creating the snapshot",
            )
            p.requeue(0)
        return
    if not p.status.snapshot_id and not exporting_without_snapshot(p.status.conditions):
        create = create_probe(p.migration, p.obs)
        task = _task(p, create, "snapshot") if create else None
        if task is None:
            if exporting_without_snapshot(p.status.conditions):
                start_export(p)
            return
        _created(p, task.snapshot_result.snapshot_id)
    start_export(p)


def exporting_without_snapshot(conditions: list[Condition]) -> bool:
    found = find_condition(conditions, "Snapshotted")
    return found is not None and found.reason == NO_SNAPSHOT


def start_export(p: Pass) -> None:
    vm, src, tgt = p.obs.source_vm, p.obs.source_caps, p.obs.target_caps
    if not (
        isinstance(vm, pb.VM)
        and isinstance(src, pb.Capabilities)
        and isinstance(tgt, pb.Capabilities)
    ):
        p.status.message = "waiting for the source VM description and provider capabilities"
        p.wait()
        return
    error = disks.init(p, vm, src, tgt)
    if error is not None:
        p.fail("ExportFailed", error)
        return
    p.enter(MigrationPhase.EXPORTING)
    transfer.step(p)
