"""What the libvirt provider knows about a VM, independent of proto and of libvirt.

The driver turns these into contract messages; the inventory builds them from domain
XML, pool volume information and snapshot XML.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DiskInfo:
    id: str  # target dev ("vda"): the Disk.id used by ExportDisk
    path: str  # file / block device path ("" for an empty CD-ROM drive)
    format: str  # qcow2 | raw | ... ("" if unknown)
    virtual_size: int
    allocated_size: int
    bus: str
    device: str  # disk | cdrom | floppy | lun
    pool: str  # storage pool holding the volume ("" if none)
    boot: bool


@dataclass(frozen=True)
class NicInfo:
    id: str  # "net0", "net1", ... in definition order
    network: str  # libvirt network name, or "bridge:<name>" for a host bridge
    mac: str
    model: str
    vlan: int


@dataclass(frozen=True)
class SnapshotInfo:
    id: str  # the libvirt snapshot name
    created: int  # seconds since the epoch
    description: str
    external: bool  # external disk-only snapshot (the migration kind)


@dataclass(frozen=True)
class VmInfo:
    id: str  # domain UUID
    name: str
    power: str  # on | off | suspended
    cpu: int
    sockets: int
    memory_mib: int
    firmware: str  # bios | efi
    disks: tuple[DiskInfo, ...]
    nics: tuple[NicInfo, ...]
    snapshots: tuple[SnapshotInfo, ...]
    guest_os: str
