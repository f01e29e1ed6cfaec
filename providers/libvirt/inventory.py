"""ListVMs / DescribeVM: domain XML joined with pool volume information.

Cost of a listing (what keeps hundreds of domains fast, also over ``qemu+ssh``):
``getAllDomainStats`` (every domain with its state) + ``listAllDomains`` filtered to
domains that have snapshots + one ``XMLDesc`` per domain; then the storage index:
``listAllStoragePools``, one ``XMLDesc`` per active pool, ``listAllVolumes`` for pools
that can hold a referenced disk, and one volume ``XMLDesc`` per referenced volume
(file pools map names to paths without a call). Snapshot XML is read only for
domains that have snapshots. Disks outside every pool keep sizes 0 in a listing;
DescribeVM asks ``blockInfo`` for those (one domain, so a bounded extra cost).
"""

from __future__ import annotations

import dataclasses
import posixpath
from collections.abc import Iterable

from providers.libvirt import domxml, snapxml, volxml
from providers.libvirt.client import DomainRecord, LibvirtClient
from providers.libvirt.model import DiskInfo, NicInfo, SnapshotInfo, VmInfo

_POWER = {"running": "on", "paused": "suspended", "pmsuspended": "suspended"}

VolumeKey = tuple[str, volxml.VolumeXml]  # (pool name, volume)


def power_of(state: str) -> str:
    """on | off | suspended for a client state name."""
    return _POWER.get(state, "off")


def nic_network(nic: domxml.NicXml) -> str:
    """How a NIC's attachment is reported (and accepted back by CreateVM)."""
    if nic.kind == "network":
        return nic.source
    return f"{nic.kind}:{nic.source}" if nic.source else nic.kind


class VolumeIndex:
    """Pool volumes by path and by (pool, name)."""

    def __init__(self, entries: Iterable[VolumeKey]) -> None:
        self.by_path: dict[str, VolumeKey] = {}
        self.by_ref: dict[tuple[str, str], VolumeKey] = {}
        for pool, vol in entries:
            if vol.path:
                self.by_path[posixpath.normpath(vol.path)] = (pool, vol)
            self.by_ref[(pool, vol.name)] = (pool, vol)

    def lookup(self, disk: domxml.DiskXml) -> VolumeKey | None:
        if disk.source_type == "volume":
            return self.by_ref.get((disk.pool, disk.volume))
        return self.by_path.get(posixpath.normpath(disk.path)) if disk.path else None


def build_index(client: LibvirtClient, disks: Iterable[domxml.DiskXml]) -> VolumeIndex:
    """Fetch the volumes the given disks refer to (see the module docstring)."""
    paths: set[str] = set()
    refs: set[tuple[str, str]] = set()
    for disk in disks:
        if disk.source_type == "volume":
            refs.add((disk.pool, disk.volume))
        elif disk.path.startswith("/"):
            paths.add(posixpath.normpath(disk.path))
    if not paths and not refs:
        return VolumeIndex(())
    dirs = {posixpath.dirname(p) for p in paths}
    ref_pools = {pool for pool, _ in refs}

    def select_pool(pool: volxml.PoolXml) -> bool:
        if pool.name in ref_pools:
            return True
        if pool.type in volxml.FILE_POOL_TYPES:
            return posixpath.normpath(pool.path) in dirs
        return bool(paths)  # block/network pools: volume paths unknown before a call

    def select_volume(pool: volxml.PoolXml, name: str) -> bool:
        if (pool.name, name) in refs:
            return True
        if pool.type in volxml.FILE_POOL_TYPES:
            return posixpath.join(posixpath.normpath(pool.path), name) in paths
        return bool(paths)

    return VolumeIndex(client.volume_index(select_pool, select_volume))


def _boot_target(disks: tuple[domxml.DiskXml, ...]) -> str:
    ordered = sorted((d.boot_order, d.target) for d in disks if d.boot_order > 0)
    if ordered:
        return ordered[0][1]
    return next((d.target for d in disks if d.device == "disk"), "")


def disk_info(disk: domxml.DiskXml, index: VolumeIndex, boot: bool) -> DiskInfo:
    found = index.lookup(disk)
    pool, vol = found if found else ("", None)
    return DiskInfo(
        id=disk.target,
        path=vol.path if vol is not None and disk.source_type == "volume" else disk.path,
        format=disk.format or (vol.format if vol is not None else ""),
        virtual_size=vol.capacity if vol is not None else 0,
        allocated_size=vol.allocation if vol is not None else 0,
        bus=disk.bus,
        device=disk.device,
        pool=pool,
        boot=boot,
    )


def snapshot_info(xml: str) -> SnapshotInfo:
    parsed = snapxml.parse_snapshot(xml)
    return SnapshotInfo(
        id=parsed.name,
        created=parsed.creation_time,
        description=parsed.description,
        external=parsed.external,
    )


def snapshots_of(client: LibvirtClient, vm_id: str) -> tuple[SnapshotInfo, ...]:
    infos = [snapshot_info(xml) for xml in client.snapshot_xmls(vm_id)]
    return tuple(sorted(infos, key=lambda s: (s.created, s.id)))


def vm_info(
    record: DomainRecord,
    parsed: domxml.DomainXml,
    index: VolumeIndex,
    snapshots: tuple[SnapshotInfo, ...],
) -> VmInfo:
    boot = _boot_target(parsed.disks)
    return VmInfo(
        id=record.uuid,
        name=record.name,
        power=power_of(record.state),
        cpu=parsed.vcpus,
        sockets=parsed.sockets,
        memory_mib=parsed.memory_kib // 1024,
        firmware=parsed.firmware,
        disks=tuple(disk_info(d, index, d.target == boot) for d in parsed.disks),
        nics=tuple(
            NicInfo(f"net{i}", nic_network(n), n.mac, n.model, n.vlan)
            for i, n in enumerate(parsed.nics)
        ),
        snapshots=snapshots,
        guest_os=parsed.guest_os,
    )


def list_vms(client: LibvirtClient, name_filter: str = "") -> list[VmInfo]:
    records = client.list_domains(name_filter)
    parsed = {r.uuid: domxml.parse_domain(r.xml) for r in records}
    index = build_index(client, (d for p in parsed.values() for d in p.disks))
    result = []
    for record in records:
        snaps = snapshots_of(client, record.uuid) if record.has_snapshots else ()
        result.append(vm_info(record, parsed[record.uuid], index, snaps))
    return result


def describe_vm(client: LibvirtClient, vm_id: str) -> VmInfo:
    record = client.domain(vm_id)
    parsed = domxml.parse_domain(record.xml)
    index = build_index(client, parsed.disks)
    info = vm_info(record, parsed, index, snapshots_of(client, record.uuid))
    disks = []
    for disk in info.disks:
        if disk.device == "disk" and disk.path and not disk.pool:
            capacity, allocation = client.block_info(record.uuid, disk.id)
            disks.append(
                dataclasses.replace(disk, virtual_size=capacity, allocated_size=allocation)
            )
        else:
            disks.append(disk)
    return dataclasses.replace(info, disks=tuple(disks))
