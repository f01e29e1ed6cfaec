"""A one-process world for the reconciler tests: the SQLite store, two real provider
servers (the in-memory driver, source and target), NFS-style intermediate storage in a
directory, and a stand-in for the VirtualMachine controller.

``FakeVMController`` is a test double at our own seam: it does for a VirtualMachine
created by a migration what the real VirtualMachine controller does (CreateVM from the
imported disks through the target provider, then ``status.id``), so these tests need
neither the runtime nor the other controllers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from manager.api import VirtualMachine
from manager.connections import ProviderConnections
from manager.migration.controller import VMMigrationReconciler
from manager.migration.model import ANN_MIGRATION_UID, Settings
from manager.store.base import Obj, ObjectKey
from manager.store.sqlite import SQLiteStore
from providers.runtime import server as runtime_server
from tests.manager.migration.content_provider import ContentMemoryProvider
from virtrigaud import errors
from virtrigaud.provider.v1 import provider_pb2 as pb

MiB = 1 << 20
FAST = Settings(poll_seconds=0.01, wait_seconds=0.01, validation_timeout=5.0)
API = "infra.virtrigaud.io/v1beta1"


class FakeVMController:
    """Creates the hypervisor VM of every migrated VirtualMachine (see module doc)."""

    def __init__(self, store: SQLiteStore, connections: ProviderConnections) -> None:
        self.store = store
        self.connections = connections

    def sync(self) -> None:
        for obj in self.store.list("VirtualMachine"):
            vm = VirtualMachine.from_dict(obj)
            ours = ANN_MIGRATION_UID in vm.metadata.annotations
            if ours and not (vm.status and vm.status.id) and not vm.metadata.deletion_timestamp:
                self._create(obj, vm)

    def _create(self, obj: Obj, vm: VirtualMachine) -> None:
        ref = vm.spec.provider_ref
        provider = self.store.get("Provider", ref.namespace or "default", ref.name)
        client = self.connections.client_for(provider)
        disks = [vm.spec.imported_disk] + [d.imported_disk for d in vm.spec.disks]
        request = pb.CreateVMRequest(
            operation_id=f"{vm.metadata.uid}/create",
            name=vm.metadata.name,
            cpu=vm.spec.resources.cpu if vm.spec.resources and vm.spec.resources.cpu else 1,
            memory_mib=(vm.spec.resources.memory_mib if vm.spec.resources else None) or 512,
            disks=[pb.DiskSpec(imported=pb.ImportedDisk(disk_id=d.disk_id)) for d in disks if d],
            nics=[
                pb.NicSpec(network=n.network or n.bridge or "", mac=n.mac or "")
                for n in vm.spec.networks
            ],
        )
        task = client.wait_task(client.create_vm(request).id, timeout=30)
        assert task.state == pb.TASK_STATE_SUCCEEDED, task.error.message
        obj = self.store.get("VirtualMachine", vm.metadata.namespace or "default", vm.metadata.name)
        obj["status"] = {"id": task.create_vm_result.vm_id, "phase": "Ready", "powerState": "Off"}
        self.store.update_status(obj)


class Harness:
    def __init__(self, tmp_path: Path, disks: dict[str, bytes], *, content: bool = True) -> None:
        self.tmp = tmp_path
        self.store = SQLiteStore(tmp_path / "store.db")
        self.nfs = tmp_path / "nfs"
        self.nfs.mkdir()
        self.source = ContentMemoryProvider(root=tmp_path / "src", with_content=content)
        self.target = ContentMemoryProvider(root=tmp_path / "tgt", with_content=content)
        self.source_vm = self.source.add_vm("source-vm", disks)
        self.servers = {
            "srcp": runtime_server.start(self.source, "127.0.0.1:0", max_tasks=2),
            "tgt": runtime_server.start(self.target, "127.0.0.1:0", max_tasks=2),
        }
        for name, running in self.servers.items():
            self._provider(name, running.port)
        self.store.create(
            {
                "apiVersion": API,
                "kind": "VirtualMachine",
                "metadata": {"name": "src", "namespace": "default"},
                "spec": {"providerRef": {"name": "srcp"}, "vmId": self.source_vm.id},
            }
        )
        self.connections = ProviderConnections(timeout=10)
        self.reconciler = VMMigrationReconciler(self.store, self.connections, settings=FAST)
        self.vms = FakeVMController(self.store, self.connections)

    def _provider(self, name: str, port: int) -> None:
        try:
            obj = self.store.get("Provider", "default", name)
        except errors.NotFound:
            obj = self.store.create(
                {
                    "apiVersion": API,
                    "kind": "Provider",
                    "metadata": {"name": name, "namespace": "default"},
                    "spec": {"type": "libvirt", "endpoint": "memory://"},
                }
            )
        obj["status"] = {"ready": True, "endpoint": f"127.0.0.1:{port}"}
        self.store.update_status(obj)

    def restart(self, name: str, before_start: Callable[[], None] | None = None) -> None:
        """Stop a provider server (its tasks are forgotten) and start a new one."""
        old = self.servers[name]
        old.stop(grace=0.0)
        if before_start is not None:
            before_start()
        running = runtime_server.start(old.driver, "127.0.0.1:0", max_tasks=2)
        self.servers[name] = running
        self._provider(name, running.port)

    def migrate(self, name: str = "mig", **spec: Any) -> ObjectKey:
        body: dict[str, Any] = {
            "sourceName": "src",
            "sourceNamespace": "default",
            "targetProviderRef": {"name": "tgt"},
            "targetName": f"{name}-vm",
            "storage": {"type": "nfs", "path": str(self.nfs)},
            "targetNetworkHints": [{"name": "eth0", "network": "default"}],
            "retryPolicy": {"maxAttempts": 3, "backoffDuration": "0s", "maxBackoffDuration": "0s"},
        }
        body.update(spec)
        self.store.create(
            {
                "apiVersion": API,
                "kind": "VMMigration",
                "metadata": {"name": name, "namespace": "default"},
                "spec": body,
            }
        )
        return ObjectKey("VMMigration", "default", name)

    def get(self, key: ObjectKey) -> Obj | None:
        try:
            return self.store.get(key.kind, key.namespace, key.name)
        except errors.NotFound:
            return None

    def drive(
        self, key: ObjectKey, until: Callable[[Obj | None], bool], passes: int = 4000
    ) -> Obj | None:
        """Reconcile (and play the VM controller) until ``until(object)``."""
        obj = self.get(key)
        for _ in range(passes):
            result = self.reconciler.reconcile(key)
            self.vms.sync()
            obj = self.get(key)
            if until(obj):
                return obj
            if result.requeue_after:
                time.sleep(min(result.requeue_after, 0.01))
        raise AssertionError(f"not reached after {passes} passes: {obj and obj.get('status')}")

    def phase(self, key: ObjectKey) -> str | None:
        obj = self.get(key)
        return ((obj or {}).get("status") or {}).get("phase")

    def reasons(self, key: ObjectKey) -> list[str]:
        return [e.reason for e in self.store.events_for(key.kind, key.namespace, key.name)]

    def nfs_files(self) -> list[Path]:
        return sorted(p for p in self.nfs.rglob("*") if p.is_file())

    def close(self) -> None:
        for running in self.servers.values():
            running.stop(grace=1.0)
        self.connections.close()
        self.store.close()


def phase_is(*phases: str) -> Callable[[Obj | None], bool]:
    return lambda obj: ((obj or {}).get("status") or {}).get("phase") in phases


def cleaned(obj: Obj | None) -> bool:
    conditions = ((obj or {}).get("status") or {}).get("conditions") or []
    return any(c["type"] == "CleanedUp" and c["status"] == "True" for c in conditions)
