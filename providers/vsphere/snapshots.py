"""CreateSnapshot / DeleteSnapshot.

Snapshots for export never include memory unless asked (``include_memory`` on a
running VM). ``quiesce`` asks VMware Tools to flush the guest's file systems; it is
only possible while Tools run, so without them -- or when the quiesced snapshot
fails (e.g. a guest without a VSS/sync driver) -- the snapshot is taken without
quiescing and the log says so ("quiesce when possible"). The snapshot id is the
snapshot's managed object id. DeleteSnapshot removes only that snapshot
(``removeChildren=False``) and consolidates, so the VM's current state is kept; a
snapshot the VM does not have is NotFound.
"""

from __future__ import annotations

from typing import Any

from providers.runtime.tasks import TaskContext
from providers.vsphere import inventory, lifecycle, tasks
from providers.vsphere.client import VSphereClient, vim
from providers.vsphere.model import SnapshotInfo
from virtrigaud import errors
from virtrigaud.logging import get_logger

log = get_logger("virtrigaud.vsphere")


def _take(
    client: VSphereClient, vm: Any, name: str, description: str, *, memory: bool, quiesce: bool
) -> Any:
    what = f"creating snapshot {name!r}"
    task = client.call(lambda _c: vm.CreateSnapshot_Task(name, description, memory, quiesce), what)
    return tasks.wait(client, task, what)


def create_snapshot(
    client: VSphereClient,
    vm_id: str,
    name: str,
    description: str,
    *,
    quiesce: bool,
    include_memory: bool,
    ctx: TaskContext,
) -> str:
    vm = lifecycle.vm_ref(client, vm_id)
    props = client.properties(vm, ["runtime.powerState", "guest.toolsRunningStatus"], f"VM {vm_id}")
    running = props.get("runtime.powerState") == "poweredOn"
    tools = props.get("guest.toolsRunningStatus") == "guestToolsRunning"
    memory = include_memory and running
    quiesced = quiesce and running and tools and not memory
    if quiesce and not quiesced:
        log.info("snapshot_without_quiesce", vm_id=vm_id, running=running, tools=tools)
    ctx.check_cancelled()
    ctx.set_stage("snapshotting")
    try:
        snap = _take(client, vm, name, description, memory=memory, quiesce=quiesced)
    except errors.VirtrigaudError as exc:
        if not quiesced or isinstance(exc, (errors.NotFound, errors.AuthenticationError)):
            raise
        log.warning("quiesced_snapshot_failed_retrying", vm_id=vm_id, error=exc.message)
        snap = _take(client, vm, name, description, memory=memory, quiesce=False)
    log.info("snapshot_created", vm_id=vm_id, snapshot=snap._moId, quiesced=quiesced)
    return str(snap._moId)


def find(client: VSphereClient, vm_id: str, snapshot_id: str) -> SnapshotInfo:
    for snap in inventory.describe_vm(client, vm_id).snapshots:
        if snap.id == snapshot_id:
            return snap
    raise errors.NotFound(f"VM {vm_id} has no snapshot {snapshot_id!r}")


def delete_snapshot(client: VSphereClient, vm_id: str, snapshot_id: str, ctx: TaskContext) -> None:
    find(client, vm_id, snapshot_id)
    snap = client.ref(vim.vm.Snapshot, snapshot_id)
    ctx.check_cancelled()
    ctx.set_stage("removing snapshot")
    what = f"removing snapshot {snapshot_id}"
    task = client.call(lambda _c: snap.RemoveSnapshot_Task(False, True), what)
    tasks.wait(client, task, what)
    log.info("snapshot_deleted", vm_id=vm_id, snapshot=snapshot_id)
