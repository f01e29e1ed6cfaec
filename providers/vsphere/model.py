"""What the vSphere provider knows about a VM, independent of proto and of pyvmomi.

``inventory`` builds these from one PropertyCollector retrieval; the driver turns them
into contract messages. Fields the contract has no place for yet (disk provisioning,
controller model, backing chain) are kept here for the provider's own use and logs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DiskInfo:
    id: str  # device key ("2000"): the Disk.id ExportDisk takes
    path: str  # datastore path of the current descriptor ("" for an empty CD-ROM)
    device: str  # disk | cdrom
    capacity: int  # guest-visible bytes
    allocated: int  # bytes of the disk's files on the datastore (layoutEx)
    bus: str  # scsi | sata | ide | nvme
    controller: str  # pvscsi | lsilogic | lsilogic-sas | buslogic | ahci | ide | nvme
    controller_key: int
    unit: int
    provisioning: str  # thin | thick | eagerZeroedThick | "" (not a flat disk)
    datastore: str
    boot: bool
    chain: tuple[tuple[str, ...], ...] = ()  # layoutEx files per chain element, base first


@dataclass(frozen=True)
class NicInfo:
    id: str  # device key ("4000")
    network: str  # portgroup / network name
    mac: str
    model: str  # vmxnet3 | e1000 | e1000e | vmxnet2 | vmxnet | pcnet32 | sriov
    vlan: int


@dataclass(frozen=True)
class SnapshotInfo:
    id: str  # the snapshot's managed object id ("snapshot-12")
    name: str
    created: float  # seconds since the epoch
    description: str


@dataclass(frozen=True)
class VmInfo:
    id: str  # the VM's managed object id ("vm-42")
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
    template: bool
    tools_running: bool
    datacenter_path: str = ""  # filled by placement when a transfer needs it
