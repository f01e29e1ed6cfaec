"""An in-memory provider driver behind the real runtime (a test double at our own seam).

It exists to test the runtime and the manager without a hypervisor; it is never
shipped. VMs live in dicts, disks are real files in a temporary directory, and
ExportDisk / ImportDisk move real bytes to and from an NFS-style directory, so the
conformance suite can check hashes of what actually moved.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from providers.runtime.driver import ProviderDriver
from providers.runtime.tasks import TaskContext
from virtrigaud import errors
from virtrigaud.provider.v1 import provider_pb2 as pb

CHUNK = 1 << 20


def nfs_path(url: str) -> Path:
    """``nfs:///abs/path`` or a plain absolute path -> Path."""
    path = url.removeprefix("nfs://") if url.startswith("nfs://") else url
    if not path.startswith("/"):
        raise errors.InvalidArgument(f"url: {url!r} is not an absolute nfs path")
    resolved = Path(path)
    if ".." in resolved.parts:
        raise errors.InvalidArgument(f"url: {url!r} must not contain '..'")
    return resolved


@dataclass
class MemoryProvider(ProviderDriver):
    """A provider whose hypervisor is a few dicts and a directory."""

    root: Path
    pools: tuple[str, ...] = ("default",)
    networks: tuple[str, ...] = ("default", "br0")
    images: tuple[str, ...] = ("base-image",)
    chunk_delay: float = 0.0  # seconds per MiB moved, to make cancel/watch observable
    slow_vms: dict[str, float] = field(default_factory=dict)  # vm id -> delay per MiB
    # called after each MiB moved with (bytes done); tests use it to pause a transfer
    chunk_hook: Callable[[int], None] | None = None
    provider_type: str = "memory"
    vms: dict[str, pb.VM] = field(default_factory=dict)
    volumes: dict[str, Path] = field(default_factory=dict)  # disk_id -> file
    inject: dict[str, errors.VirtrigaudError] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- helpers ------------------------------------------------------------------

    def _maybe_fail(self, method: str) -> None:
        error = self.inject.get(method)
        if error is not None:
            raise error

    def _vm(self, vm_id: str) -> pb.VM:
        vm = self.vms.get(vm_id)
        if vm is None:
            raise errors.NotFound(f"VM {vm_id!r} not found")
        return vm

    def add_vm(
        self,
        name: str,
        disks: dict[str, bytes],
        *,
        cpu: int = 2,
        memory_mib: int = 1024,
        network: str = "default",
    ) -> pb.VM:
        """Seed a source VM whose disks hold the given raw bytes."""
        vm_id = f"vm-{next(self._ids)}"
        vm = pb.VM(
            id=vm_id,
            name=name,
            power_state=pb.POWER_STATE_OFF,
            cpu=cpu,
            cpu_sockets=1,
            memory_mib=memory_mib,
            firmware=pb.FIRMWARE_BIOS,
        )
        for index, (disk_name, data) in enumerate(disks.items()):
            path = self.root / "pool-default" / f"{vm_id}-{disk_name}.raw"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            self.volumes[f"default/{path.name}"] = path
            vm.disks.add(
                id=disk_name,
                path=str(path),
                format=pb.DISK_FORMAT_RAW,
                virtual_size_bytes=len(data),
                allocated_size_bytes=len(data),
                bus="virtio",
                device=pb.DISK_DEVICE_DISK,
                storage="default",
                boot=index == 0,
            )
        vm.nics.add(id="net0", network=network, mac="52:54:00:00:00:01", model="virtio")
        self.vms[vm_id] = vm
        return vm

    def _copy(self, src: Path, dst: Path, ctx: TaskContext, delay: float | None = None) -> str:
        """Copy with progress and cancellation; returns the SHA256. No partial leftovers."""
        total = src.stat().st_size
        digest = hashlib.sha256()
        part = dst.with_name(dst.name + ".part")
        part.parent.mkdir(parents=True, exist_ok=True)
        done = 0
        ctx.progress(0, total)
        try:
            with src.open("rb") as fin, part.open("wb") as fout:
                while chunk := fin.read(CHUNK):
                    ctx.check_cancelled()
                    fout.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    ctx.progress(done, total)
                    pause = self.chunk_delay if delay is None else delay
                    if pause:
                        time.sleep(pause)
                    if self.chunk_hook is not None:
                        self.chunk_hook(done)
            part.replace(dst)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        return digest.hexdigest()

    # -- the contract -------------------------------------------------------------

    def capabilities(self) -> pb.Capabilities:
        return pb.Capabilities(
            provider_type=self.provider_type,
            provider_version="test",
            export_formats=[pb.DISK_FORMAT_RAW],
            import_formats=[pb.DISK_FORMAT_RAW],
            native_format=pb.DISK_FORMAT_RAW,
            storage_backends=[pb.STORAGE_BACKEND_NFS],
            features=[pb.FEATURE_SNAPSHOTS, pb.FEATURE_IMPORTED_DISKS, pb.FEATURE_IMAGE_CLONE],
        )

    def validate(self, request: pb.ValidateRequest) -> pb.ValidateResponse:
        self._maybe_fail("validate")
        response = pb.ValidateResponse()
        response.checks.add(name="connection", ok=True, message="in-memory")
        if request.storage_hint:
            ok = request.storage_hint in self.pools
            response.checks.add(
                name=f"storage:{request.storage_hint}",
                ok=ok,
                message="pool exists" if ok else f"pool {request.storage_hint!r} does not exist",
            )
        for net in request.networks:
            ok = net in self.networks
            response.checks.add(
                name=f"network:{net}",
                ok=ok,
                message="exists" if ok else f"network {net!r} does not exist",
            )
        return response

    def list_vms(self, name_filter: str) -> list[pb.VM]:
        self._maybe_fail("list_vms")
        return list(self.vms.values())

    def describe_vm(self, vm_id: str) -> pb.VM:
        self._maybe_fail("describe_vm")
        return self._vm(vm_id)

    def create_vm(self, request: pb.CreateVMRequest, ctx: TaskContext) -> pb.CreateVMResult:
        self._maybe_fail("create_vm")
        if any(vm.name == request.name for vm in self.vms.values()):
            raise errors.AlreadyExists(f"a VM named {request.name!r} already exists")
        vm = pb.VM(
            id=f"vm-{next(self._ids)}",
            name=request.name,
            cpu=request.cpu,
            memory_mib=request.memory_mib,
            firmware=request.firmware or pb.FIRMWARE_BIOS,
            power_state=pb.POWER_STATE_OFF,
        )
        for index, spec in enumerate(request.disks):
            if spec.WhichOneof("source") == "imported":
                path = self.volumes.get(spec.imported.disk_id)
                if path is None:
                    raise errors.NotFound(
                        f"disks[{index}].imported.disk_id: {spec.imported.disk_id!r} not found"
                    )
                size = path.stat().st_size
            else:
                if spec.image.name not in self.images:
                    raise errors.NotFound(f"disks[{index}].image: {spec.image.name!r} not found")
                path, size = Path(spec.image.name), spec.size_bytes
            vm.disks.add(
                id=f"disk{index}",
                path=str(path),
                format=pb.DISK_FORMAT_RAW,
                virtual_size_bytes=size,
                allocated_size_bytes=size,
                bus=spec.bus or "virtio",
                device=pb.DISK_DEVICE_DISK,
                boot=index == 0,
            )
        for index, nic in enumerate(request.nics):
            if nic.network not in self.networks:
                raise errors.NotFound(f"nics[{index}].network: {nic.network!r} does not exist")
            vm.nics.add(
                id=f"net{index}",
                network=nic.network,
                mac=nic.mac,
                model=nic.model or "virtio",
                vlan_id=nic.vlan_id,
            )
        if request.power_on:
            vm.power_state = pb.POWER_STATE_ON
        with self._lock:
            self.vms[vm.id] = vm
        return pb.CreateVMResult(vm_id=vm.id)

    def delete_vm(self, request: pb.DeleteVMRequest, ctx: TaskContext) -> None:
        vm = self._vm(request.vm_id)
        if request.delete_disks:
            for disk in vm.disks:
                Path(disk.path).unlink(missing_ok=True)
        del self.vms[request.vm_id]

    def power(self, request: pb.PowerRequest, ctx: TaskContext) -> None:
        vm = self._vm(request.vm_id)
        on = request.action in (pb.POWER_ACTION_ON, pb.POWER_ACTION_REBOOT)
        vm.power_state = pb.POWER_STATE_ON if on else pb.POWER_STATE_OFF

    def create_snapshot(
        self, request: pb.CreateSnapshotRequest, ctx: TaskContext
    ) -> pb.SnapshotResult:
        self._maybe_fail("create_snapshot")
        vm = self._vm(request.vm_id)
        snap = vm.snapshots.add(
            id=f"snap-{next(self._ids)}", name=request.name, description=request.description
        )
        snap.create_time.GetCurrentTime()
        return pb.SnapshotResult(snapshot_id=snap.id)

    def delete_snapshot(self, request: pb.DeleteSnapshotRequest, ctx: TaskContext) -> None:
        vm = self._vm(request.vm_id)
        for index, snap in enumerate(vm.snapshots):
            if snap.id == request.snapshot_id:
                del vm.snapshots[index]
                return
        raise errors.NotFound(f"snapshot {request.snapshot_id!r} not found")

    def export_disk(self, request: pb.ExportDiskRequest, ctx: TaskContext) -> pb.ExportResult:
        self._maybe_fail("export_disk")
        vm = self._vm(request.vm_id)
        disk = next((d for d in vm.disks if d.id == request.disk_id), None)
        if disk is None:
            raise errors.NotFound(f"disk {request.disk_id!r} not found on VM {vm.name!r}")
        if request.destination.backend != pb.STORAGE_BACKEND_NFS:
            raise errors.Unsupported("the memory provider only writes to nfs storage")
        if request.target_format not in (pb.DISK_FORMAT_UNSPECIFIED, pb.DISK_FORMAT_RAW):
            raise errors.Unsupported("the memory provider only exports raw")
        dst = nfs_path(request.destination.url)
        ctx.set_stage("uploading")
        sha = self._copy(Path(disk.path), dst, ctx, self.slow_vms.get(vm.id))
        size = dst.stat().st_size
        return pb.ExportResult(
            url=request.destination.url,
            format=pb.DISK_FORMAT_RAW,
            size_bytes=size,
            sha256=sha,
            virtual_size_bytes=size,
            source_format=disk.format,
        )

    def import_disk(self, request: pb.ImportDiskRequest, ctx: TaskContext) -> pb.ImportResult:
        self._maybe_fail("import_disk")
        pool = request.storage_hint or "default"
        if pool not in self.pools:
            raise errors.NotFound(f"storage_hint: pool {pool!r} does not exist")
        src = nfs_path(request.source.url)
        if not src.is_file():
            raise errors.NotFound(f"source.url: {request.source.url!r} does not exist")
        disk_id = f"{pool}/{request.target_volume_name}"
        if disk_id in self.volumes:
            raise errors.AlreadyExists(f"volume {disk_id!r} already exists")
        dst = self.root / f"pool-{pool}" / request.target_volume_name
        ctx.set_stage("downloading")
        sha = self._copy(src, dst, ctx)
        if request.expected_sha256 and sha != request.expected_sha256:
            dst.unlink()
            raise errors.ChecksumMismatch(
                f"sha256 of {request.source.url} is {sha}, expected {request.expected_sha256}"
            )
        self.volumes[disk_id] = dst
        return pb.ImportResult(
            disk_id=disk_id,
            path=str(dst),
            format=pb.DISK_FORMAT_RAW,
            size_bytes=dst.stat().st_size,
            sha256=sha,
        )

    def delete_disk(self, request: pb.DeleteDiskRequest, ctx: TaskContext) -> None:
        path = self.volumes.get(request.disk_id)
        if path is None:
            return  # gone already: success
        for vm in self.vms.values():
            if any(disk.path == str(path) for disk in vm.disks):
                raise errors.FailedPrecondition(
                    f"disk {request.disk_id!r} is attached to VM {vm.name!r}"
                )
        path.unlink(missing_ok=True)
        del self.volumes[request.disk_id]
