"""The shell's reads: store objects and quick provider RPCs -> ``Observations``.

Nothing here decides anything. Every failure is recorded, not raised: a store object
that is missing is ``None``, a provider call that fails is an ``RpcFailure`` (GetTask
NOT_FOUND is a ``TaskLost``), and the planner decides what each means. Probes (short
idempotent submissions the planner asked for) are submitted here too, since their task
is an observation (see ``model``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from manager.api import DiskPhase, Provider, VirtualMachine, VMMigration
from manager.connections import ProviderConnections
from manager.migration import naming, planner
from manager.migration.model import (
    CreateSnapshot,
    DeleteImportedDisk,
    DeleteObject,
    DeleteSnapshot,
    Needs,
    Observations,
    OtherMigration,
    PowerOffSource,
    PowerOnSource,
    Probe,
    RpcFailure,
    Side,
    Slots,
    TaskLost,
    TaskView,
)
from manager.providerclient import ProviderClient
from manager.store.base import Obj, ObjectStore
from virtrigaud import errors
from virtrigaud.provider.v1 import provider_pb2 as pb

T = TypeVar("T")


class World:
    """Store objects, provider clients and storage credentials of one pass."""

    def __init__(
        self, store: ObjectStore, connections: ProviderConnections, migration: VMMigration
    ) -> None:
        self.store = store
        self.connections = connections
        self.migration = migration
        self.namespace = migration.metadata.namespace or "default"
        self.providers: dict[Side, Obj | None] = {"source": None, "target": None}
        self.credentials: dict[str, str] = {}

    # -- plumbing -----------------------------------------------------------------------

    def _get(self, kind: str, namespace: str, name: str) -> Obj | None:
        try:
            return self.store.get(kind, namespace, name)
        except errors.NotFound:
            return None

    def client(self, side: Side) -> ProviderClient:
        provider = self.providers[side]
        if provider is None:
            raise errors.FailedPrecondition(f"the {side} Provider is not known")
        return self.connections.client_for(provider)

    def call(self, side: Side, fn: Callable[[ProviderClient], T]) -> T | RpcFailure:
        """``fn(client)``; a provider that cannot be reached yet (no Provider object, no
        endpoint) is reported as UNAVAILABLE, since that can change by itself."""
        try:
            client = self.client(side)
        except errors.VirtrigaudError as exc:
            return RpcFailure(pb.ERROR_CODE_UNAVAILABLE, exc.message, True)
        try:
            return fn(client)
        except errors.VirtrigaudError as exc:
            return RpcFailure.of(exc)

    def location(self, url: str) -> pb.StorageLocation:
        return naming.storage_location(self.migration.spec.storage, url, self.credentials)

    # -- store reads ---------------------------------------------------------------------

    def _source(self) -> VirtualMachine | None:
        spec = self.migration.spec
        found = self._get("VirtualMachine", spec.source_namespace, spec.source_name)
        if found is None:
            return None
        vm = VirtualMachine.from_dict(found)
        ref = vm.spec.provider_ref
        self.providers["source"] = self._get(
            "Provider", ref.namespace_or(spec.source_namespace), ref.name
        )
        return vm

    def _secret(self) -> bool | None:
        ref = self.migration.spec.storage.credentials_secret_ref
        if ref is None:
            return None
        try:
            self.credentials = self.store.read_secret(ref.namespace_or(self.namespace), ref.name)
        except errors.NotFound:
            return False
        return True

    def _all_others(self) -> list[VMMigration]:
        uid = self.migration.metadata.uid
        found = (VMMigration.from_dict(obj) for obj in self.store.list("VMMigration"))
        return [m for m in found if m.metadata.uid != uid]

    def _others(self, migrations: Sequence[VMMigration]) -> tuple[OtherMigration, ...]:
        spec, uid = self.migration.spec, self.migration.metadata.uid
        out: list[OtherMigration] = []
        for other in migrations:
            same = (other.spec.source_namespace, other.spec.source_name) == (
                spec.source_namespace,
                spec.source_name,
            )
            if same and other.metadata.uid != uid:
                out.append(
                    OtherMigration(
                        namespace=other.metadata.namespace or "default",
                        name=other.metadata.name,
                        created=other.metadata.creation_timestamp,
                        phase=other.status.phase if other.status else None,
                        deleting=other.metadata.deletion_timestamp is not None,
                    )
                )
        return tuple(out)

    def _provider_key(self, obj: Obj | None) -> str | None:
        if obj is None:
            return None
        meta = obj.get("metadata") or {}
        return f"{meta.get('namespace') or 'default'}/{meta.get('name')}"

    def _source_provider_of(self, other: VMMigration, cache: dict[tuple[str, str], str]) -> str:
        spec = other.spec
        key = (spec.source_namespace, spec.source_name)
        if key not in cache:
            found = self._get("VirtualMachine", *key)
            ref = VirtualMachine.from_dict(found).spec.provider_ref if found else None
            cache[key] = f"{ref.namespace_or(spec.source_namespace)}/{ref.name}" if ref else ""
        return cache[key]

    def _slots(self, migrations: Sequence[VMMigration], cap: int) -> dict[Side, Slots]:
        """Task slots of this migration's source and target Provider: the limit (the
        smaller of ``cap`` and the provider's reported maxConcurrentTasks; 0 = none) and
        the exports/imports other migrations have in flight on it."""
        out: dict[Side, Slots] = {}
        cache: dict[tuple[str, str], str] = {}
        sides: tuple[Side, ...] = ("source", "target")
        for side in sides:
            key = self._provider_key(self.providers[side])
            typed = self._typed_provider(side)
            if key is None or typed is None:
                continue
            caps = typed.status.capabilities if typed.status else None
            limits = [n for n in (cap, caps.max_concurrent_tasks if caps else None) if n]
            if not limits:
                continue
            busy = 0
            for other in migrations:
                disks = other.status.disks if other.status else []
                if self._source_provider_of(other, cache) == key:
                    busy += sum(1 for d in disks if d.phase is DiskPhase.EXPORTING)
                ref = other.spec.target_provider_ref
                namespace = other.metadata.namespace or "default"
                if f"{ref.namespace_or(namespace)}/{ref.name}" == key:
                    busy += sum(1 for d in disks if d.phase is DiskPhase.IMPORTING)
            out[side] = Slots(key, min(limits), busy)
        return out

    # -- observations ------------------------------------------------------------------

    def observe(self, needs: Needs, max_tasks_per_provider: int = 0) -> Observations:
        spec = self.migration.spec
        source = self._source()
        ref = spec.target_provider_ref
        self.providers["target"] = self._get("Provider", ref.namespace_or(self.namespace), ref.name)
        found = self._get("VirtualMachine", spec.effective_target_namespace, spec.target_name)
        target_object = VirtualMachine.from_dict(found) if found else None
        target_provider = self._typed_provider("target")
        source_vm = self._describe_source(source) if needs.source_vm else None
        migrations = self._all_others()
        return Observations(
            source_object=source,
            source_provider=self._typed_provider("source"),
            target_provider=target_provider,
            secret_found=self._secret(),
            source_vm=source_vm,
            source_caps=self._caps("source") if needs.capabilities else None,
            target_caps=self._caps("target") if needs.capabilities else None,
            validation=self._validate(source_vm, target_provider) if needs.validate else None,
            target_object=target_object,
            target_vm=self._describe_target(target_object) if needs.target_vm else None,
            tasks=self._tasks(needs),
            others=self._others(migrations),
            slots=self._slots(migrations, max_tasks_per_provider),
        )

    def _typed_provider(self, side: Side) -> Provider | None:
        found = self.providers[side]
        return Provider.from_dict(found) if found else None

    def _describe_source(self, source: VirtualMachine | None) -> pb.VM | RpcFailure | None:
        vm_id = (
            ((source.status.id if source.status else None) or source.spec.vm_id) if source else None
        )
        if vm_id is None or self.providers["source"] is None:
            return None
        return self.call("source", lambda c: c.describe_vm(vm_id))

    def _describe_target(self, target: VirtualMachine | None) -> pb.VM | RpcFailure | None:
        vm_id = target.status.id if target and target.status else None
        if vm_id is None:
            return None
        return self.call("target", lambda c: c.describe_vm(vm_id))

    def _caps(self, side: Side) -> pb.Capabilities | RpcFailure | None:
        if self.providers[side] is None:
            return None
        return self.call(side, lambda c: c.get_capabilities())

    def _validate(
        self, vm: pb.VM | RpcFailure | None, provider: Provider | None
    ) -> pb.ValidateResponse | RpcFailure | None:
        if not isinstance(vm, pb.VM) or provider is None:
            return None
        hint, nets = planner.validate_request(self.migration, vm, provider)
        # No probe while a referenced Secret is missing: that is waited for on its own.
        secret_missing = self.migration.spec.storage.credentials_secret_ref and not self.credentials
        probe = None if secret_missing else self.location(naming.probe_url(self.migration))
        return self.call("target", lambda c: c.validate(hint, nets, storage_probe=probe))

    def _tasks(self, needs: Needs) -> dict[str, TaskView]:
        out: dict[str, TaskView] = {}
        for ref in needs.tasks:
            found = self.call(ref.side, _get_task(ref.task_id))
            lost = isinstance(found, RpcFailure) and found.code == pb.ERROR_CODE_NOT_FOUND
            out[ref.task_id] = TaskLost(ref.task_id) if lost else found
        return out

    # -- probes -------------------------------------------------------------------------

    def run_probes(self, probes: Sequence[Probe]) -> dict[str, pb.Task | RpcFailure]:
        return {probe.op_id: self.call(_side(probe), _submitter(self, probe)) for probe in probes}


def _get_task(task_id: str) -> Callable[[ProviderClient], pb.Task]:
    return lambda client: client.get_task(task_id)


def _side(probe: Probe) -> Side:
    """The provider a probe goes to: imported disks live on the target, all else on
    the source (objects are deleted by the provider that wrote them)."""
    return "target" if isinstance(probe, DeleteImportedDisk) else "source"


def _request(world: World, probe: Probe) -> tuple[str, Any]:
    """(ProviderClient method, request) that submits ``probe``."""
    op = probe.op_id
    if isinstance(probe, PowerOffSource | PowerOnSource):
        off = probe if isinstance(probe, PowerOffSource) else None
        return "power", pb.PowerRequest(
            operation_id=op,
            vm_id=probe.vm_id,
            action=pb.POWER_ACTION_SHUTDOWN if off else pb.POWER_ACTION_ON,
            graceful_timeout_seconds=off.timeout_seconds if off else 0,
        )
    if isinstance(probe, CreateSnapshot):
        return "create_snapshot", pb.CreateSnapshotRequest(
            operation_id=op,
            vm_id=probe.vm_id,
            name=probe.name,
            description=probe.description,
            quiesce=True,
        )
    if isinstance(probe, DeleteObject):
        location = world.location(probe.url)
        return "delete_object", pb.DeleteObjectRequest(operation_id=op, location=location)
    if isinstance(probe, DeleteSnapshot):
        return "delete_snapshot", pb.DeleteSnapshotRequest(
            operation_id=op, vm_id=probe.vm_id, snapshot_id=probe.snapshot_id
        )
    if isinstance(probe, DeleteImportedDisk):
        return "delete_disk", pb.DeleteDiskRequest(operation_id=op, disk_id=probe.disk_id)
    return "delete_vm", pb.DeleteVMRequest(operation_id=op, vm_id=probe.vm_id, delete_disks=True)


def _submitter(world: World, probe: Probe) -> Callable[[ProviderClient], pb.Task]:
    method, request = _request(world, probe)

    def submit(client: ProviderClient) -> pb.Task:
        task: pb.Task = getattr(client, method)(request)
        return task

    return submit
