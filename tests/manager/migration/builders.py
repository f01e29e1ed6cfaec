"""Builders for the pure planner tests: API objects, provider messages, observations,
and ``Driver``, which plays the shell's part (applies a plan, hands out task ids)
without any I/O."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from manager.api import (
    MigrationPhase,
    Provider,
    VirtualMachine,
    VMMigration,
    VMMigrationStatus,
)
from manager.migration import planner
from manager.migration.model import (
    FINALIZER,
    AddFinalizer,
    ExportDisk,
    ImportDisk,
    Observations,
    Plan,
    RemoveFinalizer,
    RpcFailure,
    Settings,
    TaskView,
)
from virtrigaud.provider.v1 import provider_pb2 as pb

NOW = datetime(2025, 10, 16, 10, 0, tzinfo=UTC)
UID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
GB = 10**9
SETTINGS = Settings()


def manifest(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "sourceName": "src",
        "sourceNamespace": "default",
        "targetProviderRef": {"name": "tgt"},
        "targetName": "migrated",
        "storage": {"type": "nfs", "path": "/mnt/migrations"},
        "targetNetworkHints": [{"name": "eth0", "network": "default"}],
        "retryPolicy": {"maxAttempts": 3, "backoffDuration": "5m", "maxBackoffDuration": "30m"},
    }
    base.update(spec)
    return {
        "apiVersion": "infra.virtrigaud.io/v1beta1",
        "kind": "VMMigration",
        "metadata": {
            "name": "mig",
            "namespace": "default",
            "uid": UID,
            "generation": 1,
            "creationTimestamp": "2025-10-16T09:59:00Z",
            "finalizers": [FINALIZER],
        },
        "spec": base,
    }


def migration(
    status: VMMigrationStatus | None = None, *, finalizers: bool = True, **spec: Any
) -> VMMigration:
    mig = VMMigration.from_dict(manifest(**spec))
    if not finalizers:
        mig.metadata.finalizers = []
    mig.status = copy.deepcopy(status)
    return mig


def source_object(vm_id: str | None = "vm-1") -> VirtualMachine:
    return VirtualMachine.from_dict(
        {
            "apiVersion": "infra.virtrigaud.io/v1beta1",
            "kind": "VirtualMachine",
            "metadata": {"name": "src", "namespace": "default"},
            "spec": {"providerRef": {"name": "srcp"}, "vmId": vm_id}
            if vm_id
            else {"providerRef": {"name": "srcp"}, "imageRef": {"name": "base"}},
        }
    )


def provider(
    name: str,
    *,
    ready: bool | None = True,
    message: str = "",
    defaults: dict[str, str] | None = None,
) -> Provider:
    spec: dict[str, Any] = {"type": "libvirt", "endpoint": "qemu:///system"}
    if defaults:
        spec["defaults"] = defaults
    obj: dict[str, Any] = {
        "apiVersion": "infra.virtrigaud.io/v1beta1",
        "kind": "Provider",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }
    if ready is not None:
        obj["status"] = {"ready": ready, "endpoint": "127.0.0.1:1"}
        if message:
            obj["status"]["message"] = message
    return Provider.from_dict(obj)


def vm(
    disks: Sequence[tuple[str, int]] = (("vda", 10 * GB),),
    *,
    nics: Sequence[tuple[str, str]] = (("net0", "default"),),
    power: int = pb.POWER_STATE_ON,
    fmt: int = pb.DISK_FORMAT_RAW,
    snapshots: Sequence[tuple[str, str]] = (),
    vm_id: str = "vm-1",
) -> pb.VM:
    out = pb.VM(id=vm_id, name="src", power_state=power, cpu=2, memory_mib=2048)  # type: ignore[arg-type]
    out.firmware = pb.FIRMWARE_BIOS
    for index, (disk_id, size) in enumerate(disks):
        out.disks.add(
            id=disk_id,
            format=fmt,
            virtual_size_bytes=size,
            device=pb.DISK_DEVICE_DISK,
            boot=index == 0,
        )
    out.disks.add(id="sda", device=pb.DISK_DEVICE_CDROM)
    for index, (nic_id, network) in enumerate(nics):
        out.nics.add(id=nic_id, network=network, mac=f"52:54:00:00:00:0{index + 1}", model="virtio")
    for snap_id, name in snapshots:
        out.snapshots.add(id=snap_id, name=name)
    return out


def caps(
    *,
    exports: Sequence[int] = (pb.DISK_FORMAT_RAW,),
    imports: Sequence[int] = (pb.DISK_FORMAT_RAW,),
    native: int = pb.DISK_FORMAT_RAW,
    backends: Sequence[int] = (pb.STORAGE_BACKEND_NFS,),
    content: bool = True,
) -> pb.Capabilities:
    features = [pb.FEATURE_SNAPSHOTS, pb.FEATURE_IMPORTED_DISKS]
    if content:
        features.append(pb.FEATURE_CONTENT_DIGEST)
    return pb.Capabilities(
        export_formats=exports,  # type: ignore[arg-type]
        import_formats=imports,  # type: ignore[arg-type]
        native_format=native,  # type: ignore[arg-type]
        storage_backends=backends,  # type: ignore[arg-type]
        features=features,
    )


def valid(*checks: tuple[str, bool, str]) -> pb.ValidateResponse:
    response = pb.ValidateResponse(ok=all(ok for _, ok, _ in checks))
    for name, ok, message in checks:
        response.checks.add(name=name, ok=ok, message=message)
    return response


def task(
    task_id: str,
    state: int = pb.TASK_STATE_RUNNING,
    *,
    stage: str = "",
    done: int = 0,
    total: int = 0,
    rate: float = 0.0,
    error: tuple[int, str, bool] | None = None,
    **result: Any,
) -> pb.Task:
    out = pb.Task(
        id=task_id,
        state=state,  # type: ignore[arg-type]
        stage=stage,
        bytes_done=done,
        bytes_total=total,
        bytes_per_second=rate,
        percent=100.0 * done / total if total else 0.0,
        **result,
    )
    if error is not None:
        out.error.CopyFrom(pb.TaskError(code=error[0], message=error[1], retryable=error[2]))  # type: ignore[arg-type]
    return out


def exported(task_id: str, size: int, sha: str = "ab" * 32, content: str = "cd" * 32) -> pb.Task:
    return task(
        task_id,
        pb.TASK_STATE_SUCCEEDED,
        stage="done",
        export_result=pb.ExportResult(
            url="x",
            format=pb.DISK_FORMAT_RAW,
            size_bytes=size,
            sha256=sha,
            content_sha256=content,
            virtual_size_bytes=size,
        ),
    )


def imported(task_id: str, disk_id: str, size: int, content: str = "cd" * 32) -> pb.Task:
    return task(
        task_id,
        pb.TASK_STATE_SUCCEEDED,
        stage="done",
        import_result=pb.ImportResult(
            disk_id=disk_id,
            path=f"/pool/{disk_id}",
            format=pb.DISK_FORMAT_RAW,
            size_bytes=size,
            sha256="ab" * 32,
            content_sha256=content,
        ),
    )


def failed(task_id: str, code: int, message: str, retryable: bool) -> pb.Task:
    return task(task_id, pb.TASK_STATE_FAILED, stage="failed", error=(code, message, retryable))


def good_obs(the_vm: pb.VM | None = None, **overrides: Any) -> Observations:
    """Everything present and healthy (the Validating pass succeeds)."""
    base: dict[str, Any] = {
        "source_object": source_object(),
        "source_provider": provider("srcp"),
        "target_provider": provider("tgt"),
        "source_vm": the_vm if the_vm is not None else vm(),
        "source_caps": caps(),
        "target_caps": caps(),
        "validation": valid(("connection", True, "ok")),
    }
    base.update(overrides)
    return Observations(**base)


def failure(code: int, message: str, retryable: bool = False) -> RpcFailure:
    return RpcFailure(code, message, retryable)


@dataclasses.dataclass
class Driver:
    """Plays the shell: keeps the migration, applies each plan, numbers the tasks."""

    mig: VMMigration
    now: datetime = NOW
    settings: Settings = SETTINGS
    submitted: list[Any] = dataclasses.field(default_factory=list)

    def step(
        self,
        obs: Observations,
        tasks: Mapping[str, TaskView] | None = None,
        probes: Mapping[str, pb.Task | RpcFailure] | None = None,
        advance: float = 0.0,
    ) -> Plan:
        self.now += timedelta(seconds=advance)
        obs = dataclasses.replace(obs, tasks=dict(tasks or {}), probes=dict(probes or {}))
        plan = planner.plan(self.mig, obs, self.now, self.settings)
        for action in plan.actions:
            if isinstance(action, ExportDisk | ImportDisk):
                self.submitted.append(action)
                planner.record_submission(plan, action, pb.Task(id=f"t:{action.op_id}"))
            elif isinstance(action, AddFinalizer):
                self.mig.metadata.finalizers.append(FINALIZER)
            elif isinstance(action, RemoveFinalizer):
                self.mig.metadata.finalizers.remove(FINALIZER)
        self.mig = dataclasses.replace(self.mig, status=copy.deepcopy(plan.status))
        return plan

    @property
    def status(self) -> VMMigrationStatus:
        assert self.mig.status is not None
        return self.mig.status

    def phase(self) -> MigrationPhase | None:
        """The current phase (a call, so that type checkers do not narrow it)."""
        return self.status.phase

    def export_refs(self) -> list[str]:
        refs = [d.export_task_ref for d in self.status.disks]
        assert all(refs), refs
        return [r for r in refs if r]

    def import_refs(self) -> list[str]:
        refs = [d.import_task_ref for d in self.status.disks]
        assert all(refs), refs
        return [r for r in refs if r]


def events(plan: Plan) -> list[tuple[str, str]]:
    return [(e.reason, e.message) for e in plan.events]


def reasons(plan: Plan) -> list[str]:
    return [e.reason for e in plan.events]


def cond(status: VMMigrationStatus, type_: str) -> tuple[str, str | None, str | None]:
    found = next(c for c in status.conditions if c.type == type_)
    return found.status.value, found.reason, found.message
