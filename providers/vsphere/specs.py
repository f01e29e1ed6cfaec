"""Device and config specs for CreateVM (plain data in, pyvmomi specs out).

Disks hang off one controller per bus kind, created with the VM: ``scsi`` (the
default; a VMware Paravirtual controller, as vSphere recommends for current guests),
``sata`` (AHCI), ``nvme``, or ``ide`` (the two IDE controllers every VM has, keys 200
and 201). Bus names of other hypervisors map onto these (``virtio`` -> scsi). NIC
models: ``vmxnet3`` (default; ``virtio`` maps to it), ``e1000``, ``e1000e``,
``vmxnet2``, ``pcnet32``. Temporary device keys are negative, as the API requires.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from providers.vsphere.client import vim
from virtrigaud import errors

KIB = 1024
BUSES = {
    "": "scsi",
    "scsi": "scsi",
    "virtio": "scsi",
    "sata": "sata",
    "ide": "ide",
    "nvme": "nvme",
}
NIC_CLASSES: dict[str, Any] = {
    "": vim.vm.device.VirtualVmxnet3,
    "virtio": vim.vm.device.VirtualVmxnet3,
    "vmxnet3": vim.vm.device.VirtualVmxnet3,
    "e1000": vim.vm.device.VirtualE1000,
    "e1000e": vim.vm.device.VirtualE1000e,
    "vmxnet2": vim.vm.device.VirtualVmxnet2,
    "pcnet32": vim.vm.device.VirtualPCNet32,
}
CONTROLLER_CLASSES: dict[str, Any] = {
    "scsi": vim.vm.device.VirtualSCSIController,
    "sata": vim.vm.device.VirtualSATAController,
    "nvme": vim.vm.device.VirtualNVMEController,
}
UNITS = {"scsi": 15, "sata": 30, "nvme": 15, "ide": 2}  # units per controller
SCSI_RESERVED_UNIT = 7
IDE_KEYS = (200, 201)

Add = vim.vm.device.VirtualDeviceSpec.Operation.add
Edit = vim.vm.device.VirtualDeviceSpec.Operation.edit
Remove = vim.vm.device.VirtualDeviceSpec.Operation.remove


@dataclass(frozen=True)
class DiskPlan:
    path: str  # datastore path of the existing descriptor
    capacity: int  # bytes, explicit
    bus: str  # requested bus ("" = default)


@dataclass(frozen=True)
class NicPlan:
    network: Any  # the Network managed object
    network_name: str
    dvs_uuid: str  # "" for a standard network
    portgroup_key: str
    mac: str
    model: str


def bus_of(value: str, field: str) -> str:
    bus = BUSES.get(value.lower())
    if bus is None:
        raise errors.InvalidArgument(f"{field}: bus {value!r} is not scsi, sata, nvme or ide")
    return bus


def nic_class(value: str, field: str) -> Any:
    cls = NIC_CLASSES.get(value.lower())
    if cls is None:
        known = ", ".join(k for k in NIC_CLASSES if k)
        raise errors.InvalidArgument(f"{field}: NIC model {value!r} is not one of {known}")
    return cls


class DeviceBuilder:
    """Collects device specs; hands out controller keys and unit numbers."""

    def __init__(self, taken_buses: dict[str, set[int]] | None = None) -> None:
        self.changes: list[Any] = []
        self._next_key = -100
        self._controllers: dict[str, list[tuple[int, list[int]]]] = {}
        # bus numbers of controllers the VM already has (a clone), per bus kind
        self._taken = {bus: set(numbers) for bus, numbers in (taken_buses or {}).items()}

    def _key(self) -> int:
        self._next_key -= 1
        return self._next_key

    def _slot(self, bus: str) -> tuple[int, int]:
        """(controller key, unit number) for the next disk on ``bus``."""
        ctrls = self._controllers.setdefault(bus, [])
        for key, used in ctrls:
            free = [
                u
                for u in range(UNITS[bus] + (1 if bus == "scsi" else 0))
                if u not in used and not (bus == "scsi" and u == SCSI_RESERVED_UNIT)
            ]
            if free:
                used.append(free[0])
                return key, free[0]
        if bus == "ide":
            if len(ctrls) >= len(IDE_KEYS):
                raise errors.InvalidArgument("disks: at most 4 IDE disks")
            key = IDE_KEYS[len(ctrls)]
        else:
            taken = self._taken.setdefault(bus, set())
            number = next((n for n in range(4) if n not in taken), None)
            if number is None:
                raise errors.InvalidArgument(f"disks: too many {bus} disks")
            taken.add(number)
            key = self._key()
            self.changes.append(
                vim.vm.device.VirtualDeviceSpec(
                    operation=Add, device=self._controller(bus, key, number)
                )
            )
        ctrls.append((key, [0]))
        return key, 0

    @staticmethod
    def _controller(bus: str, key: int, number: int) -> Any:
        if bus == "scsi":
            return vim.vm.device.ParaVirtualSCSIController(
                key=key,
                busNumber=number,
                sharedBus=vim.vm.device.VirtualSCSIController.Sharing.noSharing,
            )
        if bus == "sata":
            return vim.vm.device.VirtualAHCIController(key=key, busNumber=number)
        return vim.vm.device.VirtualNVMEController(key=key, busNumber=number)

    def add_existing_disk(self, plan: DiskPlan) -> None:
        """Attach an existing VMDK (no file operation: the file stays as it is)."""
        controller, unit = self._slot(plan.bus)
        backing = vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
            fileName=plan.path,
            diskMode="persistent",
        )
        disk = vim.vm.device.VirtualDisk(
            key=self._key(),
            controllerKey=controller,
            unitNumber=unit,
            backing=backing,
            capacityInKB=-(-plan.capacity // KIB),
            capacityInBytes=plan.capacity,
        )
        self.changes.append(vim.vm.device.VirtualDeviceSpec(operation=Add, device=disk))

    def add_nic(self, plan: NicPlan, field: str) -> None:
        cls = nic_class(plan.model, field)
        if plan.dvs_uuid:
            backing: Any = vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo(
                port=vim.dvs.PortConnection(
                    switchUuid=plan.dvs_uuid, portgroupKey=plan.portgroup_key
                )
            )
        else:
            backing = vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(
                deviceName=plan.network_name, network=plan.network
            )
        nic = cls(
            key=self._key(),
            backing=backing,
            connectable=vim.vm.device.VirtualDevice.ConnectInfo(
                startConnected=True, allowGuestControl=True, connected=False
            ),
        )
        if plan.mac:
            nic.addressType = "manual"
            nic.macAddress = plan.mac.lower()
        else:
            nic.addressType = "generated"
        self.changes.append(vim.vm.device.VirtualDeviceSpec(operation=Add, device=nic))


def annotation(labels: dict[str, str]) -> str:
    """Labels as the VM's notes, one ``key=value`` per line (sorted)."""
    return "\n".join(f"{k}={v}" for k, v in sorted(labels.items()))


def config_spec(
    name: str,
    *,
    cpu: int,
    memory_mib: int,
    firmware: str,
    datastore: str,
    devices: DeviceBuilder,
    labels: dict[str, str],
) -> Any:
    return vim.vm.ConfigSpec(
        name=name,
        numCPUs=cpu,
        memoryMB=memory_mib,
        firmware=firmware,
        guestId="otherGuest64",
        annotation=annotation(labels) or None,
        files=vim.vm.FileInfo(vmPathName=f"[{datastore}]"),
        deviceChange=devices.changes,
    )
