"""Deleting a VirtualMachine object: the finalizer's work.

With ``deletionPolicy`` Delete (the default for created VMs, explicit for adopted
ones) the hypervisor VM is deleted through its provider (DeleteVM, operation id
``<uid>/delete/<attempt>``, with its disks unless ``virtrigaud.io/retain-disks`` is
``"true"``); a CreateVM still running is cancelled first. The finalizer is removed
only when the VM is really gone (the task succeeded, or the provider says NotFound).
With Retain the finalizer is removed at once and the VM is left alone.
"""

from __future__ import annotations

from collections.abc import Callable

from manager.api import DeletionPolicy, VMPhase
from manager.connections import ProviderConnections
from manager.controllers.common import (
    TERMINAL_TASK_STATES,
    Blocked,
    ProviderLink,
    ready_provider,
    remove_finalizer,
    task_error,
    task_progress,
)
from manager.controllers.vmpass import Pass
from manager.runtime.types import Result
from manager.store.base import ObjectStore
from virtrigaud import errors
from virtrigaud.provider.v1 import provider_pb2 as pb

FINALIZER = "virtualmachine.infra.virtrigaud.io/cleanup"
RETAIN_DISKS_ANNOTATION = "virtrigaud.io/retain-disks"
POLL = 1.0

Commit = Callable[[Pass], None]


def finalize(
    store: ObjectStore, connections: ProviderConnections, p: Pass, commit: Commit
) -> Result:
    if FINALIZER not in p.vm.metadata.finalizers:
        return Result()
    if p.vm.spec.effective_deletion_policy is DeletionPolicy.RETAIN:
        remove_finalizer(store, p.obj, FINALIZER)
        return Result()
    ref = p.vm.spec.provider_ref
    namespace = ref.namespace_or(p.vm.metadata.namespace or "default")
    try:
        link = ready_provider(store, connections, ref.name, namespace)
    except Blocked as blocked:
        p.status.phase = VMPhase.DELETING
        p.ready(False, "DeleteBlocked", f"cannot delete the VM yet: {blocked.message}")
        commit(p)
        return Result(requeue_after=blocked.retry_after)
    result = _delete(link, p)
    if result is None:  # gone: emit, then let the object go
        store.emit_event(p.obj, "Normal", "Deleted", f"Deleted VM {p.name} on {link.label}")
        remove_finalizer(store, p.obj, FINALIZER)
        return Result()
    commit(p)
    return result


def _vm_id(link: ProviderLink, p: Pass) -> tuple[str | None, Result | None]:
    """The hypervisor VM to delete; a Result while a CreateVM is being cancelled."""
    known = p.vm.spec.vm_id or p.status.id
    task_id = p.refs.get("createTask")
    if known or not task_id:
        return known, None
    try:
        task = link.client.get_task(task_id)
    except errors.NotFound:
        return None, None
    if task.state not in TERMINAL_TASK_STATES:
        link.client.cancel_task(task_id)
        p.status.phase = VMPhase.DELETING
        p.ready(False, "Deleting", f"cancelling the creation of VM {p.name}")
        return None, Result(requeue_after=POLL)
    if task.state == pb.TASK_STATE_SUCCEEDED:
        return task.create_vm_result.vm_id, None
    return None, None


def _delete(link: ProviderLink, p: Pass) -> Result | None:
    """None when the VM is gone; otherwise the Result to requeue with."""
    vm_id, waiting = _vm_id(link, p)
    if waiting is not None:
        return waiting
    if vm_id is None:
        return None  # never created
    task_id = p.refs.get("deleteTask")
    if task_id:
        return _poll(link, p, task_id)
    if (left := p.held("delete")) is not None:
        return Result(requeue_after=left)
    try:
        link.client.describe_vm(vm_id)
    except errors.NotFound:
        return None
    attempt = int(p.refs.get("deleteAttempt", "0"))
    retain = p.vm.metadata.annotations.get(RETAIN_DISKS_ANNOTATION, "").lower() == "true"
    task = link.client.delete_vm(
        pb.DeleteVMRequest(
            operation_id=f"{p.vm.metadata.uid}/delete/{attempt}",
            vm_id=vm_id,
            delete_disks=not retain,
        )
    )
    p.refs["deleteTask"] = task.id
    p.status.phase = VMPhase.DELETING
    p.ready(False, "Deleting", f"deleting VM {vm_id} on {link.label}")
    return Result(requeue_after=POLL)


def _poll(link: ProviderLink, p: Pass, task_id: str) -> Result | None:
    try:
        task = link.client.get_task(task_id)
    except errors.NotFound:  # provider restarted: look again next pass
        del p.refs["deleteTask"]
        return Result(requeue_after=0)
    if task.state not in TERMINAL_TASK_STATES:
        p.status.phase = VMPhase.DELETING
        p.ready(False, "Deleting", f"deleting VM {p.name}: {task_progress(task)}")
        return Result(requeue_after=POLL)
    del p.refs["deleteTask"]
    if task.state == pb.TASK_STATE_SUCCEEDED:
        return None
    err = task_error(task)
    if isinstance(err, errors.NotFound):
        return None
    attempt = int(p.refs.get("deleteAttempt", "0")) + 1
    p.refs["deleteAttempt"] = str(attempt)
    message = f"deleting VM {p.name} failed: {err}; retrying"
    p.ready(False, "DeleteFailed", message)
    p.event("Warning", "DeleteFailed", message)
    delay = min(60.0, 5.0 * 2 ** (attempt - 1))
    p.hold("delete", delay)
    return Result(requeue_after=delay)
