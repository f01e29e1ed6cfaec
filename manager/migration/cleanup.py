"""Cleanup after Ready (cleanupPolicy) and on deletion (the finalizer).

After Ready, the condition ``CleanedUp`` (an addition to the reference's list) tracks
the cleanup policy: ``deleteIntermediate`` deletes every disk's object through the
DeleteObject RPC (so every backend, S3, HTTP and NFS, is cleaned the same way, by the
source provider that wrote it, unfinished multipart uploads included);
``deleteSnapshot`` deletes this migration's snapshots (``status.snapshotId`` and any
``vmmig-<uid8>-*`` snapshot a lost task left); ``deleteSource`` (only ever reached
after ValidatingTarget passed) deletes the source VM with its disks -- which removes its
snapshots too -- and then the source VirtualMachine object. Failed migrations keep
their objects and snapshot for diagnosis until the VMMigration is deleted.

The finalizer ``vmmigration.infra.virtrigaud.io/cleanup`` is added on the first pass.
On deletion: running export/import tasks are cancelled and awaited (a cancelled export
must not commit after its object was deleted); then the intermediate objects and
snapshots are deleted (for a Ready migration, only what its cleanupPolicy asks and has
not been done yet) and a half-created target VirtualMachine (ours, migration not Ready)
is deleted and awaited; then the finalizer is removed. While anything fails the
finalizer stays (event CleanupFailed; each delete is re-submitted in the next
``cleanup_retry_seconds`` round); the annotation ``virtrigaud.io/force-delete: "true"``
removes it at once. Disks imported on the target for a migration that never became
Ready are deleted through the target provider's DeleteDisk once no target VM of ours
exists any more (deleting the half-created VM with its disks usually removed them
already; a disk that is gone counts as done, one attached to some other VM is refused
and reported, and the finalizer stays until it is resolved or forced).

Deletes are probes (see ``model``): re-submitting the same operation id re-reads the
task, a NOT_FOUND (already gone) counts as done.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from manager.api import ConditionStatus, MigrationPhase, VMMigration, find_condition
from manager.migration import finish, naming, snapshot, target
from manager.migration.context import TERMINAL_TASK_STATES, Pass
from manager.migration.model import (
    FINALIZER,
    FORCE_DELETE_ANNOTATION,
    DeleteImportedDisk,
    DeleteObject,
    DeleteSnapshot,
    DeleteSourceObject,
    DeleteSourceVM,
    DeleteTargetVM,
    Observations,
    PowerOnSource,
    Probe,
    RemoveFinalizer,
    RpcFailure,
    Settings,
)
from virtrigaud.provider.v1 import provider_pb2 as pb


def _round(anchor: datetime | None, now: datetime, settings: Settings) -> int:
    if anchor is None:
        return 0
    return max(0, math.floor((now - anchor).total_seconds() / settings.cleanup_retry_seconds))


def _next_round(anchor: datetime | None, now: datetime, settings: Settings) -> float:
    if anchor is None:
        return settings.cleanup_retry_seconds
    start = (_round(anchor, now, settings) + 1) * settings.cleanup_retry_seconds
    return max(0.0, start - (now - anchor).total_seconds())


def _source_vm_id(obs: Observations) -> str | None:
    vm = obs.source_object
    if vm is None:
        return None
    return (vm.status.id if vm.status else None) or vm.spec.vm_id


def our_snapshots(migration: VMMigration, obs: Observations) -> list[str]:
    """Snapshot ids of this migration: the recorded one (deleting a snapshot already gone
    is answered NOT_FOUND, which counts as done) and any other ``vmmig-<uid8>-*`` one."""
    recorded = migration.status.snapshot_id if migration.status else None
    described = obs.source_vm
    if isinstance(described, RpcFailure) and described.code == pb.ERROR_CODE_NOT_FOUND:
        return []  # the source VM is gone, and its snapshots with it
    found = [recorded] if recorded else []
    if isinstance(described, pb.VM):
        prefix = naming.snapshot_prefix(migration)
        found += [s.id for s in described.snapshots if s.name.startswith(prefix)]
    return list(dict.fromkeys(found))


def _deletes(
    migration: VMMigration,
    obs: Observations,
    step: str,
    rnd: int,
    *,
    objects: bool,
    snapshots: bool,
) -> list[Probe]:
    status = migration.status
    attempt = f"{step}-r{rnd}"
    out: list[Probe] = []
    if objects and status:
        out += [
            DeleteObject(
                naming.op_id(migration, attempt, "delete-object", d.name),
                d.name,
                d.intermediate_storage_url,
            )
            for d in status.disks
            if d.intermediate_storage_url
        ]
    vm_id = _source_vm_id(obs)
    if snapshots and vm_id:
        out += [
            DeleteSnapshot(naming.op_id(migration, attempt, "delete-snapshot", s), vm_id, s)
            for s in our_snapshots(migration, obs)
        ]
    return out


def ready_probes(
    migration: VMMigration, obs: Observations, now: datetime, s: Settings
) -> list[Probe]:
    status = migration.status
    if status is None or status.phase is not MigrationPhase.READY:
        return []
    done = find_condition(status.conditions, "CleanedUp")
    if done is None or done.status is ConditionStatus.TRUE:
        return []
    policy = migration.spec.cleanup_policy
    rnd = _round(status.completion_time, now, s)
    out = _deletes(
        migration,
        obs,
        "cleanup",
        rnd,
        objects=policy.delete_intermediate,
        snapshots=policy.delete_snapshot and not policy.delete_source,
    )
    vm_id = _source_vm_id(obs)
    if policy.delete_source and vm_id:
        out.append(
            DeleteSourceVM(
                naming.op_id(migration, f"cleanup-r{rnd}", "delete-source", vm_id), vm_id
            )
        )
    return out


def _running(migration: VMMigration, obs: Observations) -> bool:
    for disk in migration.status.disks if migration.status else []:
        for ref in (disk.export_task_ref, disk.import_task_ref):
            view = obs.tasks.get(ref) if ref else None
            if isinstance(view, pb.Task) and view.state not in TERMINAL_TASK_STATES:
                return True
    return False


def forced(migration: VMMigration) -> bool:
    return migration.metadata.annotations.get(FORCE_DELETE_ANNOTATION, "").lower() == "true"


def finalize_probes(
    migration: VMMigration, obs: Observations, now: datetime, s: Settings
) -> list[Probe]:
    if FINALIZER not in migration.metadata.finalizers or forced(migration):
        return []
    if _running(migration, obs):
        return []
    status = migration.status
    rnd = _round(migration.metadata.deletion_timestamp, now, s)
    out: list[Probe] = []
    in_flight = status is not None and status.phase is MigrationPhase.SNAPSHOTTING
    in_flight = in_flight and not (status and status.snapshot_id)
    if in_flight and not snapshot.power_probe(migration, obs, s):
        found = snapshot.create_probe(migration, obs)  # wait for a snapshot in flight
        out += [found] if found else []
    ready = status is not None and status.phase is MigrationPhase.READY
    done = find_condition(status.conditions, "CleanedUp") if status else None
    cleaned = done is not None and done.status is ConditionStatus.TRUE
    policy = migration.spec.cleanup_policy
    out += _deletes(
        migration,
        obs,
        "finalize",
        rnd,
        objects=not ready or (not cleaned and policy.delete_intermediate),
        snapshots=not ready
        or (not cleaned and policy.delete_snapshot and not policy.delete_source),
    )
    if not ready and not _snapshot_left(migration, obs):
        restore = snapshot.restore_probe(migration, obs, f"finalize-r{rnd}")
        out += [restore] if restore else []
    if not ready and status is not None and not _our_target_exists(migration, obs):
        out += [
            DeleteImportedDisk(
                naming.op_id(migration, f"finalize-r{rnd}", "delete-disk", name), name, disk_id
            )
            for name, disk_id in _imported_disks(migration, obs)
        ]
    return out


def _imported_disks(migration: VMMigration, obs: Observations) -> list[tuple[str, str]]:
    """(disk name, target disk id) of every disk this migration imported: recorded in
    status, or produced by an import task that succeeded after the last status write
    (deletion stops recording results, so the task itself is asked)."""
    out: list[tuple[str, str]] = []
    for disk in migration.status.disks if migration.status else []:
        task = obs.tasks.get(disk.import_task_ref) if disk.import_task_ref else None
        disk_id = disk.imported_disk_id
        if not disk_id and isinstance(task, pb.Task) and task.state == pb.TASK_STATE_SUCCEEDED:
            disk_id = task.import_result.disk_id
        if disk_id:
            out.append((disk.name, disk_id))
    return out


def _snapshot_left(migration: VMMigration, obs: Observations) -> bool:
    """A snapshot of this migration may still be on the source (or cannot be checked):
    powering the source on waits for its deletion to finish."""
    described = obs.source_vm
    if not isinstance(described, pb.VM):
        return True
    prefix = naming.snapshot_prefix(migration)
    return any(s.name.startswith(prefix) for s in described.snapshots)


def _our_target_exists(migration: VMMigration, obs: Observations) -> bool:
    """A target VirtualMachine of this migration still exists (its disks are in use)."""
    found = obs.target_object
    return found is not None and target.is_ours(migration, found)


@dataclass
class Outcome:
    done: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def _describe(item: Probe) -> str:
    if isinstance(item, DeleteObject):
        return f"intermediate object {item.url}"
    if isinstance(item, DeleteSnapshot):
        return f"snapshot {item.snapshot_id}"
    if isinstance(item, DeleteSourceVM):
        return f"source VM {item.vm_id} (with its disks and snapshots)"
    if isinstance(item, PowerOnSource):
        return f"power-on of source VM {item.vm_id} (this migration shut it down)"
    if isinstance(item, DeleteImportedDisk):
        return f"imported disk {item.disk_id} on the target"
    return f"snapshot operation {item.op_id}"


def outcome(items: Sequence[Probe], obs: Observations) -> Outcome:
    """Sort the deletes by the state of their probe (NOT_FOUND: already gone, done)."""
    result = Outcome()
    for item in items:
        what = _describe(item)
        view = obs.probes.get(item.op_id)
        if isinstance(view, pb.Task) and view.state == pb.TASK_STATE_SUCCEEDED:
            result.done.append(what)
            continue
        if view is None or (isinstance(view, pb.Task) and view.state not in TERMINAL_TASK_STATES):
            result.pending.append(what)
            continue
        failure = RpcFailure.from_task(view) if isinstance(view, pb.Task) else view
        if failure.code == pb.ERROR_CODE_NOT_FOUND:
            result.done.append(what)
        else:
            result.failed.append(f"{what}: {failure}")
    return result


def _kept(p: Pass) -> str:
    policy = p.spec.cleanup_policy
    kept = [
        name
        for name, flag in (
            ("intermediate objects", policy.delete_intermediate),
            ("snapshot", policy.delete_snapshot or policy.delete_source),
            ("source VM", policy.delete_source),
        )
        if not flag
    ]
    return f"; kept by cleanupPolicy: {', '.join(kept)}" if kept else ""


def after_ready(p: Pass) -> None:
    """Apply the cleanup policy of a Ready migration."""
    current = find_condition(p.status.conditions, "CleanedUp")
    if current is None:
        finish.begin_cleanup(p)
        return
    if current.status is ConditionStatus.TRUE:
        _delete_source_object(p)
        return
    items = ready_probes(p.migration, p.obs, p.now, p.settings)
    result = outcome(items, p.obs)
    if result.failed:
        message = "cleanup failed, retrying: " + "; ".join(result.failed)
        p.condition("CleanedUp", False, "CleanupFailed", message)
        p.event("CleanupFailed", message, warning=True)
        p.requeue(_next_round(p.status.completion_time, p.now, p.settings))
    elif result.pending:
        p.condition(
            "CleanedUp", False, "CleanupInProgress", "deleting: " + ", ".join(result.pending)
        )
        p.poll()
    else:
        message = (
            "deleted " + ", ".join(result.done) if result.done else "nothing left to delete"
        ) + _kept(p)
        p.condition("CleanedUp", True, "CleanupCompleted", message)
        p.event("CleanupCompleted", message)
        _delete_source_object(p)


def _delete_source_object(p: Pass) -> None:
    source = p.obs.source_object
    if (
        p.spec.cleanup_policy.delete_source
        and source
        and source.metadata.deletion_timestamp is None
    ):
        p.act(DeleteSourceObject(p.spec.source_namespace, p.spec.source_name))
        p.poll()


def _target_pending(p: Pass) -> bool:
    """Delete a half-created target VirtualMachine; True while it still exists."""
    found = p.obs.target_object
    if found is None or not target.is_ours(p.migration, found):
        return False
    if p.old.phase is MigrationPhase.READY:
        return False
    if found.metadata.deletion_timestamp is None:
        p.act(DeleteTargetVM(p.spec.effective_target_namespace, p.spec.target_name))
    return True


def finalize(p: Pass) -> None:
    """The deletion path (see the module docstring)."""
    if FINALIZER not in p.migration.metadata.finalizers:
        return
    if forced(p.migration):
        p.act(RemoveFinalizer())
        p.event(
            "ForceDeleted",
            f"finalizer removed on request ({FORCE_DELETE_ANNOTATION}); cleanup skipped",
            warning=True,
        )
        return
    cancelled = p.cancel_running()
    if cancelled:
        p.status.message = f"Deleting: waiting for {cancelled} running tasks to stop"
        p.poll()
        return
    result = outcome(finalize_probes(p.migration, p.obs, p.now, p.settings), p.obs)
    waiting_target = _target_pending(p)
    if result.failed:
        message = "cleanup failed, the finalizer stays: " + "; ".join(result.failed)
        p.status.message = message
        p.event("CleanupFailed", message, warning=True)
        p.requeue(_next_round(p.migration.metadata.deletion_timestamp, p.now, p.settings))
    elif result.pending or waiting_target:
        what = result.pending + ([f"VirtualMachine {p.target_ref}"] if waiting_target else [])
        p.status.message = "Deleting: waiting for " + ", ".join(what)
        p.poll()
    else:
        message = "deleted " + ", ".join(result.done) if result.done else "nothing to delete"
        p.status.message = message
        p.event("CleanupCompleted", message)
        p.act(RemoveFinalizer())
