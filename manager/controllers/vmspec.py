"""VirtualMachine spec -> contract requests, and contract VM -> VirtualMachine status.

Pure functions (no I/O), so the mapping rules are testable on their own:

* boot disk: ``spec.importedDisk`` (an existing disk, attached in place) or
  ``spec.imageRef`` (cloned by the provider); further disks: ``spec.disks[i]`` with an
  ``importedDisk`` (``sizeGiB`` there grows the disk). Empty disks (``sizeGiB``
  alone) have no contract call yet and are refused naming the field.
* CPU / memory: ``spec.resources``, defaulting to 1 vCPU and 1024 MiB. ``classRef``
  cannot be resolved yet (there is no VM class kind), so it is accepted only when
  ``spec.resources`` gives both CPU and memory.
* NICs: ``network`` as is; ``bridge`` as ``bridge:<name>`` on libvirt (the provider's
  notation for a host bridge) and as the bare name elsewhere; neither: the
  Provider's ``spec.defaults.network``. MAC, model and VLAN are passed through.
"""

from __future__ import annotations

from manager.api import (
    DiskFormat,
    ImportedDiskRef,
    ObservedPowerState,
    PowerState,
    Provider,
    ProviderType,
    VirtualMachine,
    VMDiskStatus,
    VMNetwork,
)
from virtrigaud import errors
from virtrigaud.provider.v1 import provider_pb2 as pb

GiB = 1 << 30
DEFAULT_CPU = 1
DEFAULT_MEMORY_MIB = 1024

TO_PB_FORMAT = {
    DiskFormat.QCOW2: pb.DISK_FORMAT_QCOW2,
    DiskFormat.VMDK: pb.DISK_FORMAT_VMDK,
    DiskFormat.RAW: pb.DISK_FORMAT_RAW,
    DiskFormat.VDI: pb.DISK_FORMAT_VDI,
    DiskFormat.VHDX: pb.DISK_FORMAT_VHDX,
}
FROM_PB_FORMAT = {value: key for key, value in TO_PB_FORMAT.items()}
POWER = {
    pb.POWER_STATE_ON: ObservedPowerState.ON,
    pb.POWER_STATE_OFF: ObservedPowerState.OFF,
    pb.POWER_STATE_SUSPENDED: ObservedPowerState.SUSPENDED,
}


def imported_disk(ref: ImportedDiskRef) -> pb.ImportedDisk:
    # The disk's own size is the provider's to read (the volume / descriptor knows it);
    # sizeGiB is a size to grow to, sent as DiskSpec.size_bytes.
    return pb.ImportedDisk(
        disk_id=ref.disk_id, path=ref.path or "", format=TO_PB_FORMAT[ref.format]
    )


def disk_specs(vm: VirtualMachine) -> list[pb.DiskSpec]:
    spec = vm.spec
    if spec.imported_disk is not None:
        boot = spec.imported_disk
        disks = [pb.DiskSpec(imported=imported_disk(boot), size_bytes=(boot.size_gib or 0) * GiB)]
    elif spec.image_ref is not None:
        disks = [pb.DiskSpec(image=pb.ImageRef(name=spec.image_ref.name))]
    else:
        raise errors.ValidationError("spec", "one of imageRef or importedDisk is required")
    for index, disk in enumerate(spec.disks):
        if disk.imported_disk is None:
            raise errors.ValidationError(
                f"spec.disks[{index}].importedDisk",
                "empty disks (sizeGiB alone) cannot be created through the provider "
                "contract yet; attach an existing disk with importedDisk",
            )
        grow = disk.size_gib or disk.imported_disk.size_gib or 0
        disks.append(
            pb.DiskSpec(
                imported=imported_disk(disk.imported_disk),
                bus=disk.bus.value if disk.bus else "",
                size_bytes=grow * GiB,
            )
        )
    return disks


def nic_network(index: int, net: VMNetwork, provider: Provider) -> str:
    if net.network:
        return net.network
    if net.bridge:
        return f"bridge:{net.bridge}" if provider.spec.type is ProviderType.LIBVIRT else net.bridge
    defaults = provider.spec.defaults
    if defaults is not None and defaults.network:
        return defaults.network
    raise errors.ValidationError(
        f"spec.networks[{index}]", "set network or bridge (the provider has no default network)"
    )


def nic_specs(vm: VirtualMachine, provider: Provider) -> list[pb.NicSpec]:
    return [
        pb.NicSpec(
            network=nic_network(index, net, provider),
            mac=net.mac.lower() if net.mac else "",
            model=net.model.value if net.model else "",
            vlan_id=net.vlan or 0,
        )
        for index, net in enumerate(vm.spec.networks)
    ]


def create_request(vm: VirtualMachine, provider: Provider, operation_id: str) -> pb.CreateVMRequest:
    """The CreateVM request for a VirtualMachine (ValidationError names a bad field)."""
    spec = vm.spec
    cpu = spec.resources.cpu if spec.resources else None
    memory = spec.resources.memory_mib if spec.resources else None
    if spec.class_ref is not None and (cpu is None or memory is None):
        raise errors.ValidationError(
            "spec.classRef",
            f"VM class {spec.class_ref.name!r} cannot be resolved (VM classes are not "
            "available yet); set spec.resources.cpu and spec.resources.memoryMiB",
        )
    firmware = pb.FIRMWARE_UNSPECIFIED
    if spec.firmware is not None:
        firmware = pb.FIRMWARE_UEFI if spec.firmware.value == "UEFI" else pb.FIRMWARE_BIOS
    namespace = vm.metadata.namespace or "default"
    return pb.CreateVMRequest(
        operation_id=operation_id,
        name=vm.metadata.name,
        cpu=cpu or DEFAULT_CPU,
        memory_mib=memory or DEFAULT_MEMORY_MIB,
        firmware=firmware,
        disks=disk_specs(vm),
        nics=nic_specs(vm, provider),
        power_on=spec.power_state is not PowerState.OFF,
        labels={
            "virtrigaud.io/object": f"VirtualMachine/{namespace}/{vm.metadata.name}",
            "virtrigaud.io/uid": vm.metadata.uid or "",
        },
    )


def desired_power(vm: VirtualMachine) -> PowerState | None:
    """On/Off to enforce; None for an adopted VM without powerState (keeps its state)."""
    if vm.spec.power_state is not None:
        return vm.spec.power_state
    return None if vm.spec.adopted else PowerState.ON


def observed_power(found: pb.VM) -> ObservedPowerState:
    return POWER.get(found.power_state, ObservedPowerState.UNKNOWN)


def disk_statuses(found: pb.VM) -> list[VMDiskStatus]:
    return [
        VMDiskStatus(
            name=disk.id,
            id=disk.id,
            path=disk.path or None,
            format=FROM_PB_FORMAT.get(disk.format),
            size_bytes=disk.virtual_size_bytes,
        )
        for disk in found.disks
        if disk.device != pb.DISK_DEVICE_CDROM
    ]
