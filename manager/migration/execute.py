"""The shell's writes: run a plan's actions (finalizer changes excepted, see controller).

Export and import submissions return a task whose id goes into the new status at once
(``planner.record_submission``); a failed submission is folded in by
``planner.record_submission_error``. Store writes are idempotent: creating an object
that exists and deleting one that is gone are not errors (the next pass observes the
result). A CancelTask that fails is logged; the next pass sees the task still running
and asks again.
"""

from __future__ import annotations

from datetime import datetime

from manager.migration import planner
from manager.migration.gather import World
from manager.migration.model import (
    Action,
    CancelTask,
    CreateTargetVM,
    DeleteSourceObject,
    DeleteTargetVM,
    ExportDisk,
    ImportDisk,
    Plan,
    PowerOnTargetVM,
    RpcFailure,
    Settings,
)
from manager.providerclient import ProviderClient
from virtrigaud import errors
from virtrigaud.formats import FORMAT_VALUES
from virtrigaud.logging import get_logger
from virtrigaud.provider.v1 import provider_pb2 as pb

log = get_logger("virtrigaud.migration")


def _format(name: str | None) -> pb.DiskFormat:
    return FORMAT_VALUES.get(name or "", pb.DISK_FORMAT_UNSPECIFIED)


def _export(world: World, action: ExportDisk) -> pb.Task | RpcFailure:
    request = pb.ExportDiskRequest(
        operation_id=action.op_id,
        vm_id=action.vm_id,
        disk_id=action.disk_id,
        snapshot_id=action.snapshot_id,
        destination=world.location(action.url),
        target_format=_format(action.target_format),
    )
    return world.call("source", lambda c: c.export_disk(request))


def _import(world: World, action: ImportDisk) -> pb.Task | RpcFailure:
    request = pb.ImportDiskRequest(
        operation_id=action.op_id,
        source=world.location(action.url),
        expected_sha256=action.expected_sha256,
        source_format=_format(action.source_format),
        target_format=_format(action.target_format),
        storage_hint=action.storage_hint,
        target_volume_name=action.volume_name,
        expected_content_sha256=action.expected_content_sha256,
    )
    return world.call("target", lambda c: c.import_disk(request))


def _cancel(world: World, action: CancelTask) -> None:
    def cancel(client: ProviderClient) -> pb.Task:
        return client.cancel_task(action.task_id)

    found = world.call(action.side, cancel)
    if isinstance(found, RpcFailure):
        log.warning("cancel_failed", task_id=action.task_id, error=str(found))


def _store_write(world: World, action: Action) -> None:
    try:
        if isinstance(action, CreateTargetVM):
            world.store.create(action.manifest)
        elif isinstance(action, DeleteTargetVM | DeleteSourceObject):
            world.store.delete("VirtualMachine", action.namespace, action.name)
        elif isinstance(action, PowerOnTargetVM):
            found = world.store.get("VirtualMachine", action.namespace, action.name)
            found["spec"]["powerState"] = "On"
            world.store.update(found)  # a Conflict: the next pass asks again
    except (errors.AlreadyExists, errors.NotFound, errors.Conflict) as exc:
        log.info("store_write_already_done", action=type(action).__name__, detail=str(exc))


def run(world: World, plan: Plan, now: datetime, settings: Settings) -> None:
    """Execute every action but AddFinalizer/RemoveFinalizer, in plan order."""
    for action in plan.actions:
        if isinstance(action, ExportDisk | ImportDisk):
            submit = _export if isinstance(action, ExportDisk) else _import
            found = submit(world, action)  # type: ignore[arg-type]
            if isinstance(found, RpcFailure):
                planner.record_submission_error(
                    world.migration, plan, action, found, now, settings=settings
                )
            else:
                planner.record_submission(plan, action, found)
        elif isinstance(action, CancelTask):
            _cancel(world, action)
        else:
            _store_write(world, action)
