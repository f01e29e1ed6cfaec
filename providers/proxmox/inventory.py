"""ListVMs and DescribeVM from the node's qemu VMs.

``ListVMs`` reads ``GET /nodes/{node}/qemu`` (templates are images, not VMs, and are
left out), the config and the snapshot list of each VM whose name matches; disk sizes
come from the config's ``size=``. ``DescribeVM`` adds, for every disk on a storage,
what ``GET /nodes/{node}/storage/{storage}/content/{volume}`` reports: the path on the
node, the format and the allocated bytes (PVE reads them from the volume itself).
"""

from __future__ import annotations

import fnmatch
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from providers.proxmox import qemuconfig
from providers.proxmox.qemuconfig import Drive, QemuConfig
from providers.proxmox.site import Site, check_vmid
from virtrigaud import errors
from virtrigaud.formats import FORMAT_VALUES
from virtrigaud.logging import get_logger
from virtrigaud.provider.v1 import provider_pb2 as pb

log = get_logger("virtrigaud.proxmox")


def power_state(status: dict[str, Any]) -> pb.PowerState:
    qmp = str(status.get("qmpstatus") or status.get("status") or "")
    if status.get("lock") == "suspended" or qmp in ("paused", "suspended", "prelaunch"):
        return pb.POWER_STATE_SUSPENDED
    if str(status.get("status")) == "running":
        return pb.POWER_STATE_ON
    return pb.POWER_STATE_OFF


def vm_config(site: Site, vmid: str) -> dict[str, Any]:
    """The VM's current config (NotFound for a vmid that is not on this node)."""
    try:
        data = site.api.get(site.qemu(vmid, "config"))
    except (errors.NotFound, errors.FailedPrecondition) as exc:
        raise errors.NotFound(f"VM {vmid} not found on node {site.node}: {exc.message}") from None
    return dict(data)


def snapshots(site: Site, vmid: str) -> list[pb.Snapshot]:
    items = [s for s in site.api.get(site.qemu(vmid, "snapshot")) if s.get("name") != "current"]
    items.sort(key=lambda s: (int(s.get("snaptime") or 0), str(s.get("name"))))
    out = []
    for item in items:
        created = Timestamp()
        created.FromSeconds(int(item.get("snaptime") or 0))
        out.append(
            pb.Snapshot(
                id=str(item["name"]),
                name=str(item["name"]),
                create_time=created,
                description=str(item.get("description") or ""),
            )
        )
    return out


def volume_info(site: Site, drive: Drive) -> dict[str, Any] | None:
    """What the storage reports about a drive's volume (None when it cannot tell)."""
    if not drive.storage or drive.cdrom:
        return None
    try:
        data = site.api.get(f"nodes/{site.node}/storage/{drive.storage}/content/{drive.volume}")
    except errors.VirtrigaudError as exc:
        log.info("volume_info_unavailable", volume=drive.volume, error=exc.message)
        return None
    return dict(data) if isinstance(data, dict) else None


def disk_message(drive: Drive, boot: bool, info: dict[str, Any] | None) -> pb.Disk:
    fmt = str((info or {}).get("format") or drive.format or "raw")
    return pb.Disk(
        id=drive.key,
        path=str((info or {}).get("path") or drive.volume),
        format=FORMAT_VALUES.get(fmt, pb.DISK_FORMAT_UNSPECIFIED),
        virtual_size_bytes=int((info or {}).get("size") or drive.size),
        allocated_size_bytes=int((info or {}).get("used") or 0),
        bus=drive.bus,
        device=pb.DISK_DEVICE_CDROM if drive.cdrom else pb.DISK_DEVICE_DISK,
        storage=drive.storage,
        boot=boot,
    )


def vm_message(
    vmid: str,
    parsed: QemuConfig,
    status: dict[str, Any],
    snaps: list[pb.Snapshot],
    volumes: dict[str, dict[str, Any] | None] | None = None,
) -> pb.VM:
    boot = parsed.boot_disk
    return pb.VM(
        id=vmid,
        name=parsed.name or str(status.get("name") or f"VM {vmid}"),
        power_state=power_state(status),
        cpu=parsed.cores * parsed.sockets,
        cpu_sockets=parsed.sockets,
        memory_mib=parsed.memory_mib,
        firmware=pb.FIRMWARE_UEFI if parsed.firmware == "efi" else pb.FIRMWARE_BIOS,
        disks=[disk_message(d, d.key == boot, (volumes or {}).get(d.key)) for d in parsed.drives],
        nics=[
            pb.Nic(id=n.key, network=n.bridge, mac=n.mac, model=n.model, vlan_id=n.tag)
            for n in parsed.nets
        ],
        snapshots=snaps,
        guest_os=parsed.ostype,
    )


def list_vms(site: Site, name_filter: str) -> list[pb.VM]:
    out = []
    for item in site.api.get(f"nodes/{site.node}/qemu"):
        if item.get("template"):
            continue
        vmid = str(item.get("vmid"))
        name = str(item.get("name") or "")
        if name_filter and not fnmatch.fnmatchcase(name, name_filter):
            continue
        try:
            parsed = qemuconfig.parse_config(vm_config(site, vmid))
            snaps = snapshots(site, vmid)
        except errors.NotFound:
            continue  # deleted while we listed
        if name_filter and not fnmatch.fnmatchcase(parsed.name or name, name_filter):
            continue
        out.append(vm_message(vmid, parsed, dict(item), snaps))
    return out


def describe_vm(site: Site, vm_id: str) -> pb.VM:
    vmid = check_vmid(vm_id)
    parsed = qemuconfig.parse_config(vm_config(site, vmid))
    status = dict(site.api.get(site.qemu(vmid, "status/current")))
    volumes = {d.key: volume_info(site, d) for d in parsed.drives}
    return vm_message(vmid, parsed, status, snapshots(site, vmid), volumes)
