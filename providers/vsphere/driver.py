"""The vSphere provider driver: contract messages <-> the vSphere modules.

It only adapts: proto requests become the plain requests of ``lifecycle`` /
``snapshots`` / ``exports`` / ``imports`` / ``checks``, and ``model`` objects become
proto messages. All vSphere access goes through ``client.VSphereClient``.

Endpoint: a vCenter or ESXi SDK URL (``https://vcenter.example.com/sdk``).
Credentials (the Provider's Secret): ``username``, ``password``, optional ``ca.crt``.
Options (``--option KEY=VALUE``): ``datacenter``, ``datastore``, ``resourcePool``,
``cluster``, ``folder``, ``importFolder``, ``caFile``, ``insecureSkipTLSVerify``,
``connectTimeout``, ``taskTimeout``, ``scratchDir``, ``scratchLimit`` -- see
``docs/providers/vsphere.md``.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf.timestamp_pb2 import Timestamp

from providers.common import checks as common_checks
from providers.common import transfer
from providers.runtime.driver import ProviderConfig, ProviderDriver
from providers.runtime.tasks import TaskContext
from providers.vsphere import (
    checks,
    dspath,
    exports,
    imports,
    inventory,
    lifecycle,
    settings,
    snapshots,
)
from providers.vsphere.client import VSphereClient
from providers.vsphere.model import DiskInfo, NicInfo, SnapshotInfo, VmInfo
from virtrigaud import __version__, errors
from virtrigaud.logging import get_logger
from virtrigaud.provider.v1 import provider_pb2 as pb

log = get_logger("virtrigaud.vsphere")

POWER = {"on": pb.POWER_STATE_ON, "off": pb.POWER_STATE_OFF, "suspended": pb.POWER_STATE_SUSPENDED}
ACTIONS = {
    pb.POWER_ACTION_ON: "on",
    pb.POWER_ACTION_OFF: "off",
    pb.POWER_ACTION_SHUTDOWN: "shutdown",
    pb.POWER_ACTION_REBOOT: "reboot",
}
FEATURES = (
    pb.FEATURE_SNAPSHOTS,
    pb.FEATURE_LIVE_EXPORT,  # export from a snapshot's chain while the VM runs
    pb.FEATURE_IMAGE_CLONE,
    pb.FEATURE_IMPORTED_DISKS,
    pb.FEATURE_GRACEFUL_SHUTDOWN,
    pb.FEATURE_CONTENT_DIGEST,
    pb.FEATURE_UEFI,
    pb.FEATURE_RESUMABLE_TRANSFER,  # datastore reads resume (Range); S3 uploads resume
)
EXPORT_FORMATS = transfer.EXPORT_FORMATS
IMPORT_FORMATS = (pb.DISK_FORMAT_VMDK,)


def vm_message(vm: VmInfo) -> pb.VM:
    return pb.VM(
        id=vm.id,
        name=vm.name,
        power_state=POWER[vm.power],
        cpu=vm.cpu,
        cpu_sockets=vm.sockets,
        memory_mib=vm.memory_mib,
        firmware=pb.FIRMWARE_UEFI if vm.firmware == "efi" else pb.FIRMWARE_BIOS,
        disks=[disk_message(d) for d in vm.disks],
        nics=[nic_message(n) for n in vm.nics],
        snapshots=[snapshot_message(s) for s in vm.snapshots],
        guest_os=vm.guest_os,
    )


def disk_message(disk: DiskInfo) -> pb.Disk:
    is_disk = disk.device == "disk"
    return pb.Disk(
        id=disk.id,
        path=disk.path,
        format=pb.DISK_FORMAT_VMDK if is_disk else pb.DISK_FORMAT_UNSPECIFIED,
        virtual_size_bytes=disk.capacity,
        allocated_size_bytes=disk.allocated,
        bus=disk.bus,
        device=pb.DISK_DEVICE_DISK if is_disk else pb.DISK_DEVICE_CDROM,
        storage=disk.datastore,
        boot=disk.boot,
    )


def nic_message(nic: NicInfo) -> pb.Nic:
    return pb.Nic(id=nic.id, network=nic.network, mac=nic.mac, model=nic.model, vlan_id=nic.vlan)


def snapshot_message(snap: SnapshotInfo) -> pb.Snapshot:
    created = Timestamp()
    created.FromNanoseconds(int(snap.created * 1e9))
    return pb.Snapshot(
        id=snap.id, name=snap.name, create_time=created, description=snap.description
    )


def create_request(request: pb.CreateVMRequest) -> lifecycle.CreateRequest:
    disks = []
    for index, disk in enumerate(request.disks):
        if disk.WhichOneof("source") == "imported":
            if disk.imported.format not in (pb.DISK_FORMAT_UNSPECIFIED, pb.DISK_FORMAT_VMDK):
                raise errors.InvalidArgument(
                    f"disks[{index}].imported.format: a datastore disk is VMDK"
                )
            disks.append(
                lifecycle.DiskRequest(
                    imported=disk.imported.disk_id,
                    size=max(disk.size_bytes, disk.imported.size_bytes),
                    bus=disk.bus,
                )
            )
        else:
            disks.append(
                lifecycle.DiskRequest(
                    image=disk.image.name,
                    image_path=disk.image.path,
                    size=disk.size_bytes,
                    bus=disk.bus,
                )
            )
    return lifecycle.CreateRequest(
        name=request.name,
        cpu=request.cpu,
        memory_mib=request.memory_mib,
        firmware="efi" if request.firmware == pb.FIRMWARE_UEFI else "bios",
        disks=tuple(disks),
        nics=tuple(
            lifecycle.NicRequest(network=n.network, mac=n.mac, model=n.model, vlan=n.vlan_id)
            for n in request.nics
        ),
        storage_hint=request.storage_hint,
        power_on=request.power_on,
        labels=dict(request.labels),
    )


class VSphereDriver(ProviderDriver):
    provider_type = "vsphere"

    def __init__(
        self,
        client: VSphereClient,
        *,
        import_folder: str = imports.DEFAULT_FOLDER,
        allowed_storage_hosts: Iterable[str] = (),
    ) -> None:
        self.client = client
        self.settings = client.settings
        self._import_folder = import_folder
        self.storage_allowed_hosts = tuple(allowed_storage_hosts)
        self._importing = imports.InFlight()
        self._hypervisor = ""

    # -- quick calls ---------------------------------------------------------------

    def capabilities(self) -> pb.Capabilities:
        if not self._hypervisor:
            try:
                self._hypervisor = str(self.client.about().fullName)
            except errors.VirtrigaudError as exc:  # capabilities never fail for the host
                log.info("capabilities_without_host", error=exc.message)
        return pb.Capabilities(
            provider_type=self.provider_type,
            provider_version=__version__,
            hypervisor_version=self._hypervisor,
            export_formats=EXPORT_FORMATS,
            import_formats=IMPORT_FORMATS,
            native_format=pb.DISK_FORMAT_VMDK,
            storage_backends=transfer.STORAGE_BACKENDS,
            features=FEATURES,
        )

    def validate(self, request: pb.ValidateRequest) -> pb.ValidateResponse:
        results = checks.validate(
            self.client, self.settings, request.storage_hint, list(request.networks)
        )
        return common_checks.response(results)

    def list_vms(self, name_filter: str) -> list[pb.VM]:
        return [vm_message(vm) for vm in inventory.list_vms(self.client, name_filter)]

    def describe_vm(self, vm_id: str) -> pb.VM:
        return vm_message(inventory.describe_vm(self.client, vm_id))

    # -- tasks ---------------------------------------------------------------------

    def create_vm(self, request: pb.CreateVMRequest, ctx: TaskContext) -> pb.CreateVMResult:
        vm_id = lifecycle.create_vm(self.client, self.settings, create_request(request), ctx)
        return pb.CreateVMResult(vm_id=vm_id)

    def delete_vm(self, request: pb.DeleteVMRequest, ctx: TaskContext) -> None:
        lifecycle.delete_vm(self.client, request.vm_id, request.delete_disks, ctx)

    def power(self, request: pb.PowerRequest, ctx: TaskContext) -> None:
        lifecycle.power(
            self.client,
            request.vm_id,
            ACTIONS[request.action],
            float(request.graceful_timeout_seconds),
            ctx,
        )

    def create_snapshot(
        self, request: pb.CreateSnapshotRequest, ctx: TaskContext
    ) -> pb.SnapshotResult:
        snap = snapshots.create_snapshot(
            self.client,
            request.vm_id,
            request.name,
            request.description,
            quiesce=request.quiesce,
            include_memory=request.include_memory,
            ctx=ctx,
        )
        return pb.SnapshotResult(snapshot_id=snap)

    def delete_snapshot(self, request: pb.DeleteSnapshotRequest, ctx: TaskContext) -> None:
        snapshots.delete_snapshot(self.client, request.vm_id, request.snapshot_id, ctx)

    def export_disk(self, request: pb.ExportDiskRequest, ctx: TaskContext) -> pb.ExportResult:
        return exports.export_disk(
            self.client, self.settings, request, ctx, allowed_hosts=self.storage_allowed_hosts
        )

    def import_disk(self, request: pb.ImportDiskRequest, ctx: TaskContext) -> pb.ImportResult:
        return imports.import_disk(
            self.client,
            self.settings,
            request,
            ctx,
            folder=self._import_folder,
            in_flight=self._importing,
            allowed_hosts=self.storage_allowed_hosts,
        )

    def delete_disk(self, request: pb.DeleteDiskRequest, ctx: TaskContext) -> None:
        imports.delete_disk(
            self.client,
            self.settings,
            request.disk_id,
            ctx,
            folder=self._import_folder,
            in_flight=self._importing,
        )

    def close(self) -> None:
        self.client.close()


def create(config: ProviderConfig) -> VSphereDriver:
    """Factory registered as provider type ``vsphere``."""
    parsed = settings.from_config(config)
    folder = config.options.get("importFolder", imports.DEFAULT_FOLDER)
    if folder.strip("/"):
        dspath.check_relative(folder.strip("/"), "importFolder")
    return VSphereDriver(
        VSphereClient(parsed),
        import_folder=folder.strip("/"),
        allowed_storage_hosts=config.allowed_storage_hosts,
    )
