"""The VirtualMachine controller: create, adopt, power and delete VMs through providers.

* **Created VMs** (``imageRef`` / ``importedDisk``): CreateVM is submitted with the
  deterministic operation id ``<uid>/<generation>/create`` (``/<n>`` appended for the
  n-th retry after a retryable failure), the task id is stored in
  ``status.provider.createTask`` and polled with ``requeue_after``; a reconcile never
  waits for a task. A task lost with a provider restart is recovered by looking the
  VM up by name. Such VMs carry the finalizer ``FINALIZER``: deleting the object
  deletes the hypervisor VM (DeleteVM with its disks, unless the annotation
  ``virtrigaud.io/retain-disks: "true"`` keeps them) before the finalizer goes.
* **Adopted VMs** (``spec.vmId``): bound to an existing VM (DescribeVM fills status),
  never created; deleting the object leaves the hypervisor VM alone unless
  ``spec.deletionPolicy: Delete`` is set explicitly.
* **Power**: ``spec.powerState`` (default On for created VMs; adopted VMs keep their
  state unless it is set) is enforced with Power tasks (``.../power-on/<n>``); Off is
  a graceful shutdown forced after ``SHUTDOWN_TIMEOUT`` seconds. A VM that is the
  source of a cold migration (a VMMigration with ``sourcePowerPolicy:
  ShutdownBeforeSnapshot``, not Failed, not being deleted) is never powered on: the
  migration holds its power (it shuts the VM down for the snapshot, and the source of
  a finished cold migration stays off so the two copies cannot diverge). The hold ends
  when that migration fails (it powers the source back on itself) or is deleted. A
  migration exporting a powered-off source without a snapshot holds it off too, until
  it is Ready or Failed.

Status: ``id``, ``powerState``, ``phase`` (Pending, Provisioning, Ready, Deleting,
Failed), ``disks`` as the provider reports them, ``message``, the ``Ready``
condition, ``observedGeneration`` and ``provider`` (provider name, VM name, task refs).
A Ready VM is described again every ``refresh`` seconds.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

from manager.api import (
    DeletionPolicy,
    MigrationPhase,
    PowerState,
    SourcePowerPolicy,
    VirtualMachine,
    VirtualMachineStatus,
    VMMigration,
    VMPhase,
)
from manager.connections import ProviderConnections
from manager.controllers import vmspec
from manager.controllers.common import (
    TERMINAL_TASK_STATES,
    Blocked,
    ProviderLink,
    add_finalizer,
    ready_provider,
    remove_finalizer,
    task_error,
    task_progress,
    write_status,
)
from manager.controllers.vmdelete import FINALIZER, finalize
from manager.controllers.vmpass import Pass, power_matches
from manager.migration.snapshot import exporting_without_snapshot
from manager.runtime.controller import Watch
from manager.runtime.types import Result
from manager.store.base import Obj, ObjectKey, ObjectStore, WatchEvent
from virtrigaud import errors
from virtrigaud.provider.v1 import provider_pb2 as pb

__all__ = ["FINALIZER", "VirtualMachineReconciler", "migration_watch", "provider_watch"]

MAX_CREATE_ATTEMPTS = 5
SHUTDOWN_TIMEOUT = 60
POWER_RETRY = 30.0
POLL = 1.0


class VirtualMachineReconciler:
    kind = "VirtualMachine"

    def __init__(
        self, store: ObjectStore, connections: ProviderConnections, *, refresh: float = 60.0
    ) -> None:
        self.store = store
        self.connections = connections
        self.refresh = refresh

    # -- entry --------------------------------------------------------------------------

    def reconcile(self, key: ObjectKey) -> Result:
        try:
            obj = self.store.get(key.kind, key.namespace, key.name)
        except errors.NotFound:
            return Result()
        vm = VirtualMachine.from_dict(obj)
        if vm.metadata.deletion_timestamp is not None:
            return self._finalize(self._pass(obj, vm))
        obj = self._sync_finalizer(obj, vm)
        p = self._pass(obj, VirtualMachine.from_dict(obj))
        try:
            link = self._link(p)
            result = self._adopt(p, link) if p.vm.spec.adopted else self._run(p, link)
        except Blocked as blocked:
            if p.status.phase is None:
                p.status.phase = VMPhase.PENDING
            p.ready(False, blocked.reason, blocked.message)
            result = Result(requeue_after=blocked.retry_after)
        self._commit(p)
        return result

    def _pass(self, obj: Obj, vm: VirtualMachine) -> Pass:
        return Pass(obj, vm, copy.deepcopy(vm.status) or VirtualMachineStatus())

    def _link(self, p: Pass) -> ProviderLink:
        ref = p.vm.spec.provider_ref
        namespace = ref.namespace_or(p.vm.metadata.namespace or "default")
        link = ready_provider(self.store, self.connections, ref.name, namespace)
        p.refs["provider"] = link.label
        return link

    def _commit(self, p: Pass) -> None:
        p.status.observed_generation = p.vm.metadata.generation
        p.vm.status = p.status
        written = write_status(self.store, p.obj, p.vm.to_dict()["status"])
        for type_, reason, message in p.events:
            self.store.emit_event(written, type_, reason, message)

    def _sync_finalizer(self, obj: Obj, vm: VirtualMachine) -> Obj:
        want = vm.spec.effective_deletion_policy is DeletionPolicy.DELETE
        has = FINALIZER in vm.metadata.finalizers
        if want and not has:
            return add_finalizer(self.store, obj, FINALIZER)
        if has and not want:
            return remove_finalizer(self.store, obj, FINALIZER)
        return obj

    # -- adopt / create -----------------------------------------------------------------

    def _adopt(self, p: Pass, link: ProviderLink) -> Result:
        vm_id = str(p.vm.spec.vm_id)
        try:
            found = link.client.describe_vm(vm_id)
        except errors.NotFound:
            p.status.phase = VMPhase.FAILED
            message = f"no VM with id {vm_id} on provider {link.label}"
            p.ready(False, "VMNotFound", message)
            p.event("Warning", "VMNotFound", message)
            return Result(requeue_after=self.refresh)
        if p.status.id != vm_id:
            p.status.id = vm_id
            p.event("Normal", "Adopted", f"Bound to existing VM {found.name} ({vm_id})")
        return self._power_and_ready(p, link, found)

    def _run(self, p: Pass, link: ProviderLink) -> Result:
        if p.status.id is None:
            waiting = self._create(p, link)
            if waiting is not None:
                return waiting
        vm_id = str(p.status.id)
        try:
            found = link.client.describe_vm(vm_id)
        except errors.NotFound:
            p.status.phase = VMPhase.FAILED
            message = f"VM {vm_id} no longer exists on provider {link.label}"
            p.ready(False, "VMMissing", message)
            p.event("Warning", "VMMissing", message)
            return Result(requeue_after=self.refresh)
        return self._power_and_ready(p, link, found)

    def _create(self, p: Pass, link: ProviderLink) -> Result | None:
        """Submit or poll CreateVM; None once ``status.id`` is known."""
        task_id = p.refs.get("createTask")
        if task_id:
            return self._poll_create(p, link, task_id)
        reason = self._ready_reason(p)
        if (
            p.status.phase is VMPhase.FAILED
            and reason in ("CreateFailed", "InvalidSpec")
            and p.status.observed_generation == p.vm.metadata.generation
        ):
            return Result()  # terminal until the spec changes
        if (left := p.held("create")) is not None:
            return Result(requeue_after=left)
        attempt = int(p.refs.get("createAttempt", "0"))
        operation = p.op("create") + (f"/{attempt}" if attempt else "")
        try:
            request = vmspec.create_request(p.vm, link.provider, operation)
        except errors.ValidationError as exc:
            p.status.phase = VMPhase.FAILED
            p.ready(False, "InvalidSpec", str(exc))
            p.event("Warning", "InvalidSpec", str(exc))
            return Result()
        try:
            task = link.client.create_vm(request)
        except errors.TransientError:
            raise
        except errors.VirtrigaudError as exc:
            return self._create_failed(p, link, exc)
        p.refs["createTask"] = task.id
        p.status.phase = VMPhase.PROVISIONING
        p.ready(False, "Creating", f"creating VM {p.name} on provider {link.label}")
        return Result(requeue_after=POLL)

    @staticmethod
    def _ready_reason(p: Pass) -> str | None:
        found = next((c for c in p.status.conditions if c.type == "Ready"), None)
        return found.reason if found else None

    def _poll_create(self, p: Pass, link: ProviderLink, task_id: str) -> Result | None:
        try:
            task = link.client.get_task(task_id)
        except errors.NotFound:  # the provider restarted and forgot the task
            del p.refs["createTask"]
            existing = next(
                (vm for vm in link.client.iter_vms(name_filter=p.name) if vm.name == p.name),
                None,
            )
            if existing is None:
                return Result(requeue_after=0)
            p.status.id = existing.id
            p.event("Normal", "Created", f"Created VM {p.name} ({existing.id})")
            return None
        if task.state not in TERMINAL_TASK_STATES:
            p.status.phase = VMPhase.PROVISIONING
            p.ready(False, "Creating", f"creating VM {p.name}: {task_progress(task)}")
            return Result(requeue_after=POLL)
        del p.refs["createTask"]
        if task.state == pb.TASK_STATE_SUCCEEDED:
            p.status.id = task.create_vm_result.vm_id
            p.event("Normal", "Created", f"Created VM {p.name} ({p.status.id}) on {link.label}")
            return None
        return self._create_failed(p, link, task_error(task))

    def _create_failed(self, p: Pass, link: ProviderLink, err: errors.VirtrigaudError) -> Result:
        attempt = int(p.refs.get("createAttempt", "0"))
        if err.retryable and attempt + 1 < MAX_CREATE_ATTEMPTS:
            p.refs["createAttempt"] = str(attempt + 1)
            delay = min(60.0, 5.0 * 2**attempt)
            message = f"creating VM {p.name} failed ({err}); retry {attempt + 1} in {delay:.0f}s"
            p.status.phase = VMPhase.PROVISIONING
            p.ready(False, "CreateRetrying", message)
            p.event("Warning", "CreateRetrying", message)
            p.hold("create", delay)
            return Result(requeue_after=delay)
        message = f"creating VM {p.name} on provider {link.label} failed: {err}"
        p.status.phase = VMPhase.FAILED
        p.ready(False, "CreateFailed", message)
        p.event("Warning", "CreateFailed", message)
        return Result()

    # -- power and status ---------------------------------------------------------------

    def _observe(self, p: Pass, found: pb.VM) -> None:
        p.status.power_state = vmspec.observed_power(found)
        p.status.disks = vmspec.disk_statuses(found)
        p.refs["vmName"] = found.name

    def _power_and_ready(self, p: Pass, link: ProviderLink, found: pb.VM) -> Result:
        self._observe(p, found)
        desired = vmspec.desired_power(p.vm)
        task_id = p.refs.get("powerTask")
        if task_id:
            waiting = self._poll_power(p, link, task_id)
            if waiting is not None:
                return waiting
            self._observe(p, link.client.describe_vm(found.id))
        holder = self._power_holder(p.vm) if desired is PowerState.ON else None
        if holder is not None:
            desired = None  # a cold migration keeps the source off: see the docstring
        if desired is not None and not power_matches(desired, p.status.power_state):
            if (left := p.held("power")) is not None:
                return Result(requeue_after=left)  # after a failure: the condition says it
            return self._submit_power(p, link, found.id, desired)
        p.status.phase = VMPhase.READY
        power = p.status.power_state.value if p.status.power_state else "Unknown"
        held = f"; power held by VMMigration {holder} (cold migration)" if holder else ""
        if p.vm.spec.adopted:
            message = f"bound to VM {found.name} ({found.id}) on {link.label}; power {power}"
            p.ready(True, "Adopted", message + held)
        else:
            message = f"VM {found.name} ({found.id}) is {power} on {link.label}"
            p.ready(True, "VMReady", message + held)
        return Result(requeue_after=self.refresh)

    def _power_holder(self, vm: VirtualMachine) -> str | None:
        """namespace/name of a cold migration that holds this VM's power, if any."""
        namespace = vm.metadata.namespace or "default"
        for obj in self.store.list("VMMigration"):
            migration = VMMigration.from_dict(obj)
            spec = migration.spec
            if (spec.source_namespace, spec.source_name) != (namespace, vm.metadata.name):
                continue
            if migration.metadata.deletion_timestamp is not None:
                continue
            status = migration.status
            phase = status.phase if status else None
            cold = spec.source_power_policy is SourcePowerPolicy.SHUTDOWN_BEFORE_SNAPSHOT
            unsnapshotted = status is not None and exporting_without_snapshot(status.conditions)
            if (cold and phase is not MigrationPhase.FAILED) or (
                unsnapshotted and phase not in (MigrationPhase.READY, MigrationPhase.FAILED)
            ):
                return f"{migration.metadata.namespace or 'default'}/{migration.metadata.name}"
        return None

    def _poll_power(self, p: Pass, link: ProviderLink, task_id: str) -> Result | None:
        try:
            task = link.client.get_task(task_id)
        except errors.NotFound:
            del p.refs["powerTask"]
            return None
        if task.state not in TERMINAL_TASK_STATES:
            p.status.phase = VMPhase.PROVISIONING
            p.ready(False, "PowerChanging", f"changing power state: {task_progress(task)}")
            return Result(requeue_after=POLL)
        del p.refs["powerTask"]
        if task.state == pb.TASK_STATE_SUCCEEDED:
            p.event("Normal", "PowerChanged", f"Power action {p.refs.get('powerAction')} done")
            return None
        message = f"power action {p.refs.get('powerAction')} failed: {task_error(task)}"
        p.ready(False, "PowerFailed", message)
        p.event("Warning", "PowerFailed", message)
        p.hold("power", POWER_RETRY)
        return Result(requeue_after=POWER_RETRY)

    def _submit_power(self, p: Pass, link: ProviderLink, vm_id: str, desired: PowerState) -> Result:
        seq = int(p.refs.get("powerSeq", "0")) + 1
        action = pb.POWER_ACTION_ON if desired is PowerState.ON else pb.POWER_ACTION_SHUTDOWN
        request = pb.PowerRequest(
            operation_id=p.op(f"power-{desired.value.lower()}/{seq}"),
            vm_id=vm_id,
            action=action,
            graceful_timeout_seconds=SHUTDOWN_TIMEOUT,
        )
        try:
            task = link.client.power(request)
        except errors.TransientError:
            raise
        except errors.VirtrigaudError as exc:
            message = f"power {desired.value} failed: {exc}"
            p.ready(False, "PowerFailed", message)
            p.event("Warning", "PowerFailed", message)
            p.hold("power", POWER_RETRY)
            return Result(requeue_after=POWER_RETRY)
        p.refs.update(powerTask=task.id, powerSeq=str(seq), powerAction=desired.value)
        p.status.phase = VMPhase.PROVISIONING
        p.ready(False, "PowerChanging", f"powering {desired.value.lower()} VM {vm_id}")
        return Result(requeue_after=POLL)

    # -- deletion -----------------------------------------------------------------------

    def _finalize(self, p: Pass) -> Result:
        return finalize(self.store, self.connections, p, self._commit)


def migration_watch() -> Watch:
    """Wake a migration's source VirtualMachine when the migration changes (a cold
    migration's power hold starts and ends with it)."""

    def mapper(event: WatchEvent) -> Iterable[ObjectKey]:
        spec = (event.object or {}).get("spec") or {}
        name = spec.get("sourceName")
        if name:
            yield ObjectKey("VirtualMachine", spec.get("sourceNamespace") or "default", name)

    return Watch("VMMigration", mapper)


def provider_watch(store: ObjectStore) -> Watch:
    """Wake the VirtualMachines of a Provider when that Provider changes."""

    def mapper(event: WatchEvent) -> Iterable[ObjectKey]:
        provider = event.key
        for obj in store.list("VirtualMachine"):
            ref = (obj.get("spec") or {}).get("providerRef") or {}
            key = ObjectKey.of(obj)
            if (
                ref.get("name") == provider.name
                and (ref.get("namespace") or key.namespace) == provider.namespace
            ):
                yield key

    return Watch("Provider", mapper)
