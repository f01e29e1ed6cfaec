"""ListVMs / DescribeVM: every VM with its hardware in one PropertyCollector retrieval.

One ``RetrievePropertiesEx`` (plus continuation pages of 500 objects) fetches all VMs
of the inventory through a ContainerView, the networks and datastores they use
(traversal specs from each VM), and every property the contract reports: hardware,
devices, firmware, power state, snapshot tree and ``layoutEx`` (the disk chains and
file sizes). There is no per-VM round trip, so listing 1000 VMs costs a handful of
requests. DescribeVM is the same retrieval rooted at the one VM (an unknown id is
NotFound).

VM ids are managed object ids (``vm-42``): stable for the life of the VM in its vCenter,
and what every vSphere API call takes.
"""

from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Iterable
from typing import Any

from providers.vsphere import dspath
from providers.vsphere.client import (
    ObjectProps,
    ObjectSpec,
    PropertyFilterSpec,
    PropertySpec,
    TraversalSpec,
    VSphereClient,
    fault_error,
    vim,
)
from providers.vsphere.model import DiskInfo, NicInfo, SnapshotInfo, VmInfo
from providers.vsphere.placement import display_name
from virtrigaud import errors

VM_PROPERTIES = [
    "name",
    "config.hardware.numCPU",
    "config.hardware.numCoresPerSocket",
    "config.hardware.memoryMB",
    "config.hardware.device",
    "config.firmware",
    "config.guestFullName",
    "config.guestId",
    "config.template",
    "config.bootOptions",
    "runtime.powerState",
    "guest.toolsRunningStatus",
    "snapshot",
    "layoutEx",
]
POWER = {"poweredOn": "on", "poweredOff": "off", "suspended": "suspended"}
CONTROLLERS: tuple[tuple[Any, str, str], ...] = (
    (vim.vm.device.ParaVirtualSCSIController, "scsi", "pvscsi"),
    (vim.vm.device.VirtualLsiLogicSASController, "scsi", "lsilogic-sas"),
    (vim.vm.device.VirtualLsiLogicController, "scsi", "lsilogic"),
    (vim.vm.device.VirtualBusLogicController, "scsi", "buslogic"),
    (vim.vm.device.VirtualAHCIController, "sata", "ahci"),
    (vim.vm.device.VirtualIDEController, "ide", "ide"),
    (vim.vm.device.VirtualNVMEController, "nvme", "nvme"),
)
NIC_MODELS: tuple[tuple[Any, str], ...] = (
    (vim.vm.device.VirtualVmxnet3, "vmxnet3"),
    (vim.vm.device.VirtualE1000e, "e1000e"),
    (vim.vm.device.VirtualE1000, "e1000"),
    (vim.vm.device.VirtualVmxnet2, "vmxnet2"),
    (vim.vm.device.VirtualPCNet32, "pcnet32"),
    (vim.vm.device.VirtualSriovEthernetCard, "sriov"),
    (vim.vm.device.VirtualVmxnet, "vmxnet"),
)


def _vm_traversal(root_is_view: bool) -> list[Any]:
    """From the root (a ContainerView or one VM) to VMs, their networks and datastores."""
    to_networks = TraversalSpec(name="vmNetworks", type=vim.VirtualMachine, path="network")
    to_datastores = TraversalSpec(name="vmDatastores", type=vim.VirtualMachine, path="datastore")
    if not root_is_view:
        return [to_networks, to_datastores]
    return [
        TraversalSpec(
            name="viewVms",
            type=vim.view.ContainerView,
            path="view",
            skip=False,
            selectSet=[to_networks, to_datastores],
        )
    ]


def _filter(root: Any, root_is_view: bool) -> Any:
    return PropertyFilterSpec(
        objectSet=[ObjectSpec(obj=root, skip=root_is_view, selectSet=_vm_traversal(root_is_view))],
        propSet=[
            PropertySpec(type=vim.VirtualMachine, pathSet=VM_PROPERTIES),
            PropertySpec(type=vim.Network, pathSet=["name"]),
            PropertySpec(type=vim.Datastore, pathSet=["name"]),
        ],
    )


class _Names:
    """Network and datastore names by managed object id (from the same retrieval)."""

    def __init__(self, objects: Iterable[ObjectProps]) -> None:
        self.networks: dict[str, str] = {}
        self.datastores: dict[str, str] = {}
        for obj in objects:
            if isinstance(obj.ref, vim.Datastore):
                self.datastores[obj.moid] = display_name(obj.props.get("name"))
            elif isinstance(obj.ref, vim.Network):
                self.networks[obj.moid] = display_name(obj.props.get("name"))


def _retrieve(client: VSphereClient, root: Any, root_is_view: bool) -> list[VmInfo]:
    found = client.retrieve([_filter(root, root_is_view)], "reading the VM inventory")
    if not root_is_view:
        for obj in found:  # the one VM asked for, but nothing of it may be read
            if isinstance(obj.ref, vim.VirtualMachine) and not obj.props and obj.missing:
                fault = next(iter(obj.missing.values()))
                raise fault_error(fault, f"reading VM {obj.moid}")
    names = _Names(found)
    return [
        vm_info(obj.moid, obj.props, names)
        for obj in found
        if isinstance(obj.ref, vim.VirtualMachine) and "config.hardware.device" in obj.props
    ]


def list_vms(client: VSphereClient, name_filter: str = "") -> list[VmInfo]:
    """Every VM (templates included) whose name matches the shell pattern."""
    view = client.call(
        lambda c: c.viewManager.CreateContainerView(c.rootFolder, [vim.VirtualMachine], True),
        "reading the VM inventory",
    )
    try:
        vms = _retrieve(client, view, True)
    finally:
        with contextlib.suppress(errors.VirtrigaudError):  # views die with the session
            client.call(lambda _c: view.DestroyView(), "releasing a container view")
    if name_filter:
        vms = [vm for vm in vms if fnmatch.fnmatchcase(vm.name, name_filter)]
    return vms


def describe_vm(client: VSphereClient, vm_id: str) -> VmInfo:
    """One VM by managed object id (NotFound if there is none)."""
    if not vm_id:
        raise errors.NotFound("VM id is empty")
    try:
        vms = _retrieve(client, client.ref(vim.VirtualMachine, vm_id), False)
    except errors.NotFound as exc:
        raise errors.NotFound(f"VM {vm_id!r} not found") from exc
    if not vms:
        raise errors.NotFound(f"VM {vm_id!r} not found (or not accessible)")
    return vms[0]


# -- conversion ------------------------------------------------------------------


def vm_info(moid: str, props: dict[str, Any], names: _Names) -> VmInfo:
    devices = list(props.get("config.hardware.device") or ())
    cpu = int(props.get("config.hardware.numCPU") or 0)
    cores = int(props.get("config.hardware.numCoresPerSocket") or 0) or 1
    layout = props.get("layoutEx")
    boot = _boot_disk_key(devices, props.get("config.bootOptions"))
    return VmInfo(
        id=moid,
        name=display_name(props.get("name")),
        power=POWER.get(str(props.get("runtime.powerState", "")), "off"),
        cpu=cpu,
        sockets=max(1, cpu // cores) if cpu else 0,
        memory_mib=int(props.get("config.hardware.memoryMB") or 0),
        firmware="efi" if props.get("config.firmware") == "efi" else "bios",
        disks=tuple(_disks(devices, layout, names, boot)),
        nics=tuple(_nics(devices, names)),
        snapshots=tuple(_snapshots(props.get("snapshot"))),
        guest_os=str(props.get("config.guestFullName") or props.get("config.guestId") or ""),
        template=bool(props.get("config.template")),
        tools_running=props.get("guest.toolsRunningStatus") == "guestToolsRunning",
    )


def _controllers(devices: list[Any]) -> dict[int, tuple[str, str, int]]:
    """Controller key -> (bus, model, bus number)."""
    found: dict[int, tuple[str, str, int]] = {}
    for dev in devices:
        for cls, bus, model in CONTROLLERS:
            if isinstance(dev, cls):
                found[dev.key] = (bus, model, int(getattr(dev, "busNumber", 0) or 0))
                break
    return found


def _boot_disk_key(devices: list[Any], boot_options: Any) -> int | None:
    """The disk the firmware boots: bootOrder's first disk, else the first disk."""
    for entry in getattr(boot_options, "bootOrder", None) or ():
        if isinstance(entry, vim.vm.BootOptions.BootableDiskDevice):
            return int(entry.deviceKey)
    controllers = _controllers(devices)
    disks = [d for d in devices if isinstance(d, vim.vm.device.VirtualDisk)]
    order = {"scsi": 0, "nvme": 1, "sata": 2, "ide": 3}

    def rank(d: Any) -> tuple[int, int, int]:
        bus, _, number = controllers.get(d.controllerKey, ("", "", 0))
        return (order.get(bus, 9), number, int(d.unitNumber or 0))

    return int(min(disks, key=rank).key) if disks else None


def _layout_files(layout: Any) -> tuple[dict[int, tuple[str, str, int]], dict[int, Any]]:
    """layoutEx file key -> (name, type, size) and disk key -> chain."""
    files = {
        int(f.key): (str(f.name), str(f.type), int(f.size or 0))
        for f in (getattr(layout, "file", None) or ())
    }
    chains = {int(d.key): d.chain for d in (getattr(layout, "disk", None) or ())}
    return files, chains


def chain_files(chain: Any, files: dict[int, tuple[str, str, int]]) -> tuple[tuple[str, ...], ...]:
    """Each chain element's file names (descriptor first), base element first."""
    out = []
    for element in chain or ():
        keyed = [files[int(k)] for k in element.fileKey if int(k) in files]
        keyed.sort(key=lambda f: f[1] != "diskDescriptor")
        out.append(tuple(name for name, _type, _size in keyed))
    return tuple(out)


def _provisioning(backing: Any) -> str:
    if not isinstance(backing, vim.vm.device.VirtualDisk.FlatVer2BackingInfo):
        return ""
    if backing.thinProvisioned:
        return "thin"
    return "eagerZeroedThick" if backing.eagerlyScrub else "thick"


def _datastore_name(backing: Any, path: str, names: _Names) -> str:
    ds = getattr(backing, "datastore", None)
    if ds is not None and ds._moId in names.datastores:
        return names.datastores[ds._moId]
    try:
        return dspath.parse(path).datastore if path else ""
    except errors.InvalidArgument:
        return ""


def _disks(devices: list[Any], layout: Any, names: _Names, boot: int | None) -> list[DiskInfo]:
    controllers = _controllers(devices)
    files, chains = _layout_files(layout)
    out: list[DiskInfo] = []
    for dev in devices:
        is_disk = isinstance(dev, vim.vm.device.VirtualDisk)
        if not (is_disk or isinstance(dev, vim.vm.device.VirtualCdrom)):
            continue
        bus, model, _ = controllers.get(dev.controllerKey, ("", "", 0))
        backing = dev.backing
        path = str(getattr(backing, "fileName", "") or "")
        capacity = 0
        chain: tuple[tuple[str, ...], ...] = ()
        allocated = 0
        if is_disk:
            capacity = (
                int(getattr(dev, "capacityInBytes", 0) or 0) or int(dev.capacityInKB or 0) * 1024
            )
            chain = chain_files(chains.get(int(dev.key)), files)
            by_name = {name: size for name, _type, size in files.values()}
            allocated = sum(by_name.get(name, 0) for element in chain for name in element)
        out.append(
            DiskInfo(
                id=str(dev.key),
                path=path,
                device="disk" if is_disk else "cdrom",
                capacity=capacity,
                allocated=allocated,
                bus=bus,
                controller=model,
                controller_key=int(dev.controllerKey or 0),
                unit=int(dev.unitNumber or 0),
                provisioning=_provisioning(backing) if is_disk else "",
                datastore=_datastore_name(backing, path, names),
                boot=is_disk and int(dev.key) == boot,
                chain=chain,
            )
        )
    return out


def _nics(devices: list[Any], names: _Names) -> list[NicInfo]:
    out: list[NicInfo] = []
    for dev in devices:
        if not isinstance(dev, vim.vm.device.VirtualEthernetCard):
            continue
        model = next((name for cls, name in NIC_MODELS if isinstance(dev, cls)), "")
        out.append(
            NicInfo(
                id=str(dev.key),
                network=_network_name(dev.backing, names),
                mac=str(dev.macAddress or "").lower(),
                model=model,
                vlan=0,
            )
        )
    return out


def _network_name(backing: Any, names: _Names) -> str:
    if isinstance(backing, vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo):
        key = str(backing.port.portgroupKey or "")
        return names.networks.get(key, key)
    if isinstance(backing, vim.vm.device.VirtualEthernetCard.NetworkBackingInfo):
        if backing.network is not None and backing.network._moId in names.networks:
            return names.networks[backing.network._moId]
        return str(backing.deviceName or "")
    if isinstance(backing, vim.vm.device.VirtualEthernetCard.OpaqueNetworkBackingInfo):
        return str(backing.opaqueNetworkId or "")
    return ""


def _snapshots(info: Any) -> list[SnapshotInfo]:
    found: list[SnapshotInfo] = []
    pending = list(getattr(info, "rootSnapshotList", None) or ())
    while pending:
        node = pending.pop()
        created = node.createTime.timestamp() if node.createTime is not None else 0.0
        found.append(
            SnapshotInfo(
                id=str(node.snapshot._moId),
                name=str(node.name or ""),
                created=created,
                description=str(node.description or ""),
            )
        )
        pending.extend(node.childSnapshotList or ())
    found.sort(key=lambda s: (s.created, s.id))
    return found
