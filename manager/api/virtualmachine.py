"""VirtualMachine: a VM on one provider, created from an image or an imported disk,
or adopted by ``vmId``. See docs ``imported-disk-design.md`` and the CRD
``config/crd/bases/infra.virtrigaud.io_virtualmachines.yaml``.
"""

from __future__ import annotations

import dataclasses
from enum import StrEnum
from typing import Annotated, ClassVar

from manager.api._codec import JsonField, join
from manager.api.meta import (
    API_VERSION,
    DNS_LABEL_PATTERN,
    Condition,
    DiskFormat,
    NonNegative,
    ObjectMeta,
    ObjectReference,
    Resource,
)
from virtrigaud.errors import ValidationError

MAC_PATTERN = r"^([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}$"
Positive = Annotated[int, JsonField(minimum=1)]
DeviceName = Annotated[str, JsonField(pattern=DNS_LABEL_PATTERN, max_length=63)]


class Firmware(StrEnum):
    BIOS = "BIOS"
    UEFI = "UEFI"


class PowerState(StrEnum):
    ON = "On"
    OFF = "Off"


class ObservedPowerState(StrEnum):
    ON = "On"
    OFF = "Off"
    SUSPENDED = "Suspended"
    UNKNOWN = "Unknown"


class DeletionPolicy(StrEnum):
    DELETE = "Delete"
    RETAIN = "Retain"


class DiskBus(StrEnum):
    VIRTIO = "virtio"
    SCSI = "scsi"
    SATA = "sata"
    IDE = "ide"
    NVME = "nvme"


class NicModel(StrEnum):
    VIRTIO = "virtio"
    E1000 = "e1000"
    E1000E = "e1000e"
    VMXNET3 = "vmxnet3"
    RTL8139 = "rtl8139"


class ImportedDiskSource(StrEnum):
    MIGRATION = "migration"
    CLONE = "clone"
    IMPORT = "import"
    SNAPSHOT = "snapshot"
    MANUAL = "manual"


class VMPhase(StrEnum):
    PENDING = "Pending"
    PROVISIONING = "Provisioning"
    READY = "Ready"
    DELETING = "Deleting"
    FAILED = "Failed"


@dataclasses.dataclass(kw_only=True, slots=True)
class ImportedDiskRef:
    """A disk that already exists on the provider (e.g. imported by a VMMigration)."""

    disk_id: Annotated[str, JsonField(key="diskID", min_length=1)]
    path: str | None = None
    format: DiskFormat = DiskFormat.QCOW2
    source: ImportedDiskSource | None = None
    migration_ref: ObjectReference | None = None
    size_gib: Annotated[int | None, JsonField(key="sizeGiB", minimum=1)] = None


@dataclasses.dataclass(kw_only=True, slots=True)
class VMResources:
    cpu: Positive | None = None
    memory_mib: Annotated[int | None, JsonField(key="memoryMiB", minimum=1)] = None
    cores_per_socket: Positive | None = None


@dataclasses.dataclass(kw_only=True, slots=True)
class VMDisk:
    """An additional disk: empty (``sizeGiB``) or an existing one (``importedDisk``)."""

    name: DeviceName
    size_gib: Annotated[int | None, JsonField(key="sizeGiB", minimum=1)] = None
    format: DiskFormat | None = None
    bus: DiskBus | None = None
    imported_disk: ImportedDiskRef | None = None


@dataclasses.dataclass(kw_only=True, slots=True)
class VMNetwork:
    name: DeviceName
    network: str | None = None
    bridge: str | None = None
    mac: Annotated[str | None, JsonField(pattern=MAC_PATTERN)] = None
    model: NicModel | None = None
    vlan: Annotated[int | None, JsonField(minimum=0, maximum=4094)] = None


@dataclasses.dataclass(kw_only=True, slots=True)
class VirtualMachineSpec:
    provider_ref: ObjectReference
    class_ref: ObjectReference | None = None
    resources: VMResources | None = None
    firmware: Firmware | None = None
    disks: Annotated[list[VMDisk], JsonField(map_key="name")] = dataclasses.field(
        default_factory=list
    )
    networks: Annotated[list[VMNetwork], JsonField(map_key="name")] = dataclasses.field(
        default_factory=list
    )
    power_state: PowerState | None = None
    image_ref: ObjectReference | None = None
    imported_disk: ImportedDiskRef | None = None
    vm_id: Annotated[str | None, JsonField(min_length=1)] = None
    deletion_policy: DeletionPolicy | None = None

    def check_rules(self, path: str) -> None:
        if self.image_ref is not None and self.imported_disk is not None:
            raise ValidationError(
                join(path, "importedDisk"), "imageRef and importedDisk are mutually exclusive"
            )
        if self.vm_id is None and self.image_ref is None and self.imported_disk is None:
            raise ValidationError(path, "one of imageRef, importedDisk or vmId is required")

    @property
    def adopted(self) -> bool:
        """True when the spec binds an existing hypervisor VM (``vmId``)."""
        return self.vm_id is not None

    @property
    def effective_deletion_policy(self) -> DeletionPolicy:
        """deletionPolicy, defaulting to Retain for adopted VMs and Delete otherwise."""
        if self.deletion_policy is not None:
            return self.deletion_policy
        return DeletionPolicy.RETAIN if self.adopted else DeletionPolicy.DELETE


@dataclasses.dataclass(kw_only=True, slots=True)
class VMDiskStatus:
    name: str
    id: str | None = None
    path: str | None = None
    format: DiskFormat | None = None
    size_bytes: NonNegative | None = None


@dataclasses.dataclass(kw_only=True, slots=True)
class VirtualMachineStatus:
    id: str | None = None
    power_state: ObservedPowerState | None = None
    phase: VMPhase | None = None
    message: str | None = None
    ip_addresses: list[str] = dataclasses.field(default_factory=list)
    disks: Annotated[list[VMDiskStatus], JsonField(map_key="name")] = dataclasses.field(
        default_factory=list
    )
    conditions: Annotated[list[Condition], JsonField(map_key="type")] = dataclasses.field(
        default_factory=list
    )
    observed_generation: NonNegative | None = None
    provider: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(kw_only=True, slots=True)
class VirtualMachine(Resource):
    API_VERSION: ClassVar[str] = API_VERSION
    KIND: ClassVar[str] = "VirtualMachine"

    metadata: ObjectMeta
    spec: VirtualMachineSpec
    status: VirtualMachineStatus | None = None
