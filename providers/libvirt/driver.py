"""The libvirt provider driver: contract messages <-> the libvirt package.

It only adapts: proto requests become the plain requests of ``lifecycle`` /
``snapshots`` / ``checks``, and ``model`` objects become proto messages. All
libvirt access goes through ``client.LibvirtClient``.

Provider options (``--option KEY=VALUE``):

* ``storagePool`` -- pool for new disks when a request has no storage hint
  (default ``default``);
* ``imagePool`` -- pool where bare ``ImageRef.name`` values are looked up (default:
  the target pool);
* ``domainType`` -- ``auto`` (default: ``kvm`` when the host offers it, else
  ``qemu``), ``kvm`` or ``qemu`` (TCG, no hardware virtualization needed);
* ``connectTimeout`` -- seconds to wait for the libvirt connection (default 15);
* ``scratchDir`` -- local directory for the copies ExportDisk / ImportDisk make
  (default: the system temp directory; it must exist);
* ``scratchLimit`` -- bytes those copies may take (``K``/``M``/``G``/``T`` suffixes,
  powers of 1024; default: bounded by the free space only).

Credentials: ``username``/``password`` (SASL), ``sshPrivateKey`` (qemu+ssh).

ExportDisk / ImportDisk: see ``exports`` and ``imports``; bytes always travel through
libvirt storage streams (``volfiles``), so remote hosts work the same as local ones.
Storage hosts are checked against ``ProviderConfig.allowed_storage_hosts``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from google.protobuf.timestamp_pb2 import Timestamp

from providers.common import checks as common_checks
from providers.common import transfer
from providers.common.scratch import scratch_options
from providers.libvirt import checks, exports, imports, inventory, lifecycle, snapshots, volxml
from providers.libvirt.client import LibvirtClient
from providers.libvirt.model import DiskInfo, NicInfo, SnapshotInfo, VmInfo
from providers.runtime.driver import ProviderConfig, ProviderDriver
from providers.runtime.tasks import TaskContext
from virtrigaud import __version__, errors
from virtrigaud.formats import FORMAT_NAMES, FORMAT_VALUES
from virtrigaud.logging import get_logger
from virtrigaud.provider.v1 import provider_pb2 as pb

log = get_logger("virtrigaud.libvirt")

POWER = {"on": pb.POWER_STATE_ON, "off": pb.POWER_STATE_OFF, "suspended": pb.POWER_STATE_SUSPENDED}
ACTIONS = {
    pb.POWER_ACTION_ON: "on",
    pb.POWER_ACTION_OFF: "off",
    pb.POWER_ACTION_SHUTDOWN: "shutdown",
    pb.POWER_ACTION_REBOOT: "reboot",
}
DEVICES = {"disk": pb.DISK_DEVICE_DISK, "cdrom": pb.DISK_DEVICE_CDROM}
BASE_FEATURES = (
    pb.FEATURE_SNAPSHOTS,
    pb.FEATURE_LIVE_EXPORT,
    pb.FEATURE_IMAGE_CLONE,
    pb.FEATURE_IMPORTED_DISKS,
    pb.FEATURE_GRACEFUL_SHUTDOWN,
    pb.FEATURE_SPARSE_EXPORT,  # sparse volume streams; holes are never read or sent
    pb.FEATURE_CONTENT_DIGEST,
    pb.FEATURE_RESUMABLE_TRANSFER,  # S3 uploads continue from the parts already stored
)
# What the shared pipeline writes as objects, and what a pool volume can be.
EXPORT_FORMATS = transfer.EXPORT_FORMATS
IMPORT_FORMATS = (pb.DISK_FORMAT_QCOW2, pb.DISK_FORMAT_RAW)


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
    return pb.Disk(
        id=disk.id,
        path=disk.path,
        format=FORMAT_VALUES.get(disk.format, pb.DISK_FORMAT_UNSPECIFIED),
        virtual_size_bytes=disk.virtual_size,
        allocated_size_bytes=disk.allocated_size,
        bus=disk.bus,
        device=DEVICES.get(disk.device, pb.DISK_DEVICE_UNSPECIFIED),
        storage=disk.pool,
        boot=disk.boot,
    )


def nic_message(nic: NicInfo) -> pb.Nic:
    return pb.Nic(id=nic.id, network=nic.network, mac=nic.mac, model=nic.model, vlan_id=nic.vlan)


def snapshot_message(snap: SnapshotInfo) -> pb.Snapshot:
    created = Timestamp()
    created.FromSeconds(snap.created)
    return pb.Snapshot(id=snap.id, name=snap.id, create_time=created, description=snap.description)


def create_request(request: pb.CreateVMRequest) -> lifecycle.CreateRequest:
    disks = []
    for disk in request.disks:
        if disk.WhichOneof("source") == "imported":
            disks.append(
                lifecycle.DiskRequest(
                    imported=disk.imported.disk_id,
                    format=FORMAT_NAMES.get(disk.imported.format, ""),
                    bus=disk.bus,
                    size=disk.size_bytes,
                )
            )
        else:
            disks.append(
                lifecycle.DiskRequest(
                    image=disk.image.name,
                    image_path=disk.image.path,
                    bus=disk.bus,
                    size=disk.size_bytes,
                )
            )
    return lifecycle.CreateRequest(
        name=request.name,
        cpu=request.cpu,
        memory_mib=request.memory_mib,
        firmware="efi" if request.firmware == pb.FIRMWARE_UEFI else "bios",
        disks=disks,
        nics=[
            lifecycle.NicRequest(network=n.network, mac=n.mac, model=n.model, vlan=n.vlan_id)
            for n in request.nics
        ],
        storage_hint=request.storage_hint,
        power_on=request.power_on,
        labels=dict(request.labels),
    )


class LibvirtDriver(ProviderDriver):
    provider_type = "libvirt"

    def __init__(
        self,
        client: LibvirtClient,
        *,
        default_pool: str = "default",
        image_pool: str = "",
        domain_type: str = "auto",
        scratch: exports.ScratchSettings | None = None,
        allowed_storage_hosts: Iterable[str] = (),
    ) -> None:
        if domain_type not in ("auto", "kvm", "qemu"):
            raise errors.InvalidArgument(f"domainType: {domain_type!r} is not auto, kvm or qemu")
        self.client = client
        self._default_pool = default_pool
        self._image_pool = image_pool
        self._domain_type = domain_type
        self._scratch = scratch or exports.ScratchSettings()
        self.storage_allowed_hosts = tuple(allowed_storage_hosts)
        self._importing = imports.InFlight()
        self._facts: lifecycle.HostFacts | None = None
        self._versions: tuple[int, int] | None = None
        self._facts_lock = threading.Lock()

    # -- host facts ----------------------------------------------------------------

    def host_facts(self) -> lifecycle.HostFacts:
        """Virtualization type and UEFI support, read once from the host."""
        with self._facts_lock:
            if self._facts is None:
                caps = self.client.capabilities_xml()
                arch = volxml.host_arch(caps)
                offered = volxml.host_virt_types(caps, arch)
                virt = self._domain_type
                if virt == "auto":
                    virt = "kvm" if "kvm" in offered else "qemu"
                elif virt not in offered:
                    raise errors.FailedPrecondition(
                        f"domainType: the host does not offer {virt!r} domains for {arch}"
                    )
                domcaps = self.client.domain_capabilities_xml(virt, arch)
                self._facts = lifecycle.HostFacts(
                    virt_type=virt,
                    uefi="efi" in volxml.firmware_values(domcaps),
                    default_pool=self._default_pool,
                    image_pool=self._image_pool,
                )
            return self._facts

    # -- quick calls ---------------------------------------------------------------

    def capabilities(self) -> pb.Capabilities:
        features = list(BASE_FEATURES)
        hypervisor = ""
        try:  # read once; later calls need no round trip
            if self.host_facts().uefi:
                features.append(pb.FEATURE_UEFI)
            if self._versions is None:
                self._versions = self.client.versions()
            lib, hyp = self._versions
            hypervisor = f"QEMU {checks.version_text(hyp)} (libvirt {checks.version_text(lib)})"
        except errors.VirtrigaudError as exc:  # capabilities never fail for the host
            log.info("capabilities_without_host", error=exc.message)
        return pb.Capabilities(
            provider_type=self.provider_type,
            provider_version=__version__,
            hypervisor_version=hypervisor,
            export_formats=EXPORT_FORMATS,
            import_formats=IMPORT_FORMATS,
            native_format=pb.DISK_FORMAT_QCOW2,
            storage_backends=transfer.STORAGE_BACKENDS,
            features=features,
        )

    def validate(self, request: pb.ValidateRequest) -> pb.ValidateResponse:
        results = checks.validate(self.client, request.storage_hint, list(request.networks))
        return common_checks.response(results)

    def list_vms(self, name_filter: str) -> list[pb.VM]:
        return [vm_message(vm) for vm in inventory.list_vms(self.client, name_filter)]

    def describe_vm(self, vm_id: str) -> pb.VM:
        return vm_message(inventory.describe_vm(self.client, vm_id))

    # -- tasks ---------------------------------------------------------------------

    def create_vm(self, request: pb.CreateVMRequest, ctx: TaskContext) -> pb.CreateVMResult:
        vm_id = lifecycle.create_vm(self.client, create_request(request), self.host_facts(), ctx)
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
            request.operation_id,
            quiesce=request.quiesce,
            include_memory=request.include_memory,
            ctx=ctx,
        )
        return pb.SnapshotResult(snapshot_id=snap)

    def delete_snapshot(self, request: pb.DeleteSnapshotRequest, ctx: TaskContext) -> None:
        snapshots.delete_snapshot(self.client, request.vm_id, request.snapshot_id, ctx)

    def snapshot_disk_source(self, vm_id: str, snapshot_id: str, disk_id: str) -> str:
        """The volume path ExportDisk reads for ``disk_id`` at ``snapshot_id``."""
        return snapshots.snapshot_disk_source(self.client, vm_id, snapshot_id, disk_id)

    def export_disk(self, request: pb.ExportDiskRequest, ctx: TaskContext) -> pb.ExportResult:
        return exports.export_disk(
            self.client,
            request,
            ctx,
            scratch=self._scratch,
            allowed_hosts=self.storage_allowed_hosts,
        )

    def import_disk(self, request: pb.ImportDiskRequest, ctx: TaskContext) -> pb.ImportResult:
        return imports.import_disk(
            self.client,
            request,
            ctx,
            default_pool=self._default_pool,
            scratch=self._scratch,
            in_flight=self._importing,
            allowed_hosts=self.storage_allowed_hosts,
        )

    def delete_disk(self, request: pb.DeleteDiskRequest, ctx: TaskContext) -> None:
        imports.delete_disk(self.client, request.disk_id, self._importing)

    def close(self) -> None:
        self.client.close()


def scratch_settings(options: dict[str, str]) -> exports.ScratchSettings:
    return exports.ScratchSettings(*scratch_options(options))


def create(config: ProviderConfig) -> LibvirtDriver:
    """Factory registered as provider type ``libvirt``."""
    options = dict(config.options)
    try:
        timeout = float(options.get("connectTimeout", "15"))
    except ValueError as exc:
        raise errors.InvalidArgument("connectTimeout: must be a number of seconds") from exc
    scratch = scratch_settings(options)
    client = LibvirtClient(
        config.endpoint or "qemu:///system", config.credentials, connect_timeout=timeout
    )
    return LibvirtDriver(
        client,
        default_pool=options.get("storagePool", "default"),
        image_pool=options.get("imagePool", ""),
        domain_type=options.get("domainType", "auto"),
        scratch=scratch,
        allowed_storage_hosts=config.allowed_storage_hosts,
    )
