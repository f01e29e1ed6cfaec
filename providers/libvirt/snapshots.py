"""Migration snapshots: external, disk-only, for running and stopped domains alike.

Strategy: CreateSnapshot takes an external disk-only snapshot of every disk
(``device='disk'``; CD-ROMs are left out). libvirt puts a new qcow2 overlay on top
of each disk -- ``<dir of the disk>/<disk stem>.<snapshot id>.qcow2``, in the same
pool -- and from then on the VM writes only to the overlays. The files that were
the disks become read-only backing files: a consistent point-in-time image that
ExportDisk can stream (``virStorageVolDownload``) while the VM keeps running. The
same strategy serves a stopped domain (its configuration points at the overlays),
so an export stays consistent even if someone starts the VM meanwhile; internal
qcow2 snapshots were not chosen because they cannot be read through a storage
volume stream (remote hosts) and do not work for raw disks.

``snapshot_disk_source`` tells the export which file to read: the source the disk
had in the domain definition stored in the snapshot (the backing file now).

DeleteSnapshot merges the overlays back (libvirt >= 9.0 does the block commit with
pivot for a running domain, and a commit for a stopped one), removes the overlay
files and the snapshot metadata: the domain is left exactly as before the snapshot
(same disk paths in its XML, same data, writes made meanwhile merged in; for a
stopped domain libvirt adds an empty ``<backingStore/>`` -- "no backing file" -- to
the merged disks, which changes nothing). Older daemons cannot delete external
snapshots: DeleteSnapshot then fails with FailedPrecondition naming the version.
Pools holding overlays are refreshed after create and delete, so overlays appear
in and vanish from pool listings (ExportDisk and DeleteVM find them by path).

The snapshot id is ``<slug of the requested name>-<8 hex of sha256(operation_id)>``:
a re-submitted CreateSnapshot (after a provider restart) finds its snapshot instead
of taking a second one.
"""

from __future__ import annotations

import hashlib

from providers.libvirt import domxml, inventory, names, snapxml
from providers.libvirt.client import LibvirtClient
from providers.runtime.tasks import TaskContext
from virtrigaud import errors
from virtrigaud.logging import get_logger

log = get_logger("virtrigaud.libvirt")

EXTERNAL_DELETE_MIN_VERSION = 9_000_000  # libvirt 9.0.0 deletes external snapshots


def snapshot_id(name: str, operation_id: str) -> str:
    digest = hashlib.sha256(operation_id.encode()).hexdigest()[:8]
    return f"{names.slug(name, 'snapshot')[:48]}-{digest}"


def plan_overlays(parsed: domxml.DomainXml, snap: str) -> tuple[dict[str, str], list[str]]:
    """(overlay path per snapshotted disk target, targets left out of the snapshot)."""
    overlays: dict[str, str] = {}
    excluded: list[str] = []
    for disk in parsed.disks:
        if disk.device != "disk" or not disk.path:
            excluded.append(disk.target)
            continue
        if disk.source_type != "file":
            raise errors.Unsupported(
                f"disk {disk.target}: snapshots need file-backed disks, this one is "
                f"{disk.source_type}"
            )
        overlays[disk.target] = snapxml.overlay_path(disk.path, snap)
    if not overlays:
        raise errors.FailedPrecondition("the VM has no disk to snapshot")
    return overlays, excluded


def _refresh_pools_of(client: LibvirtClient, disks: list[domxml.DiskXml]) -> None:
    index = inventory.build_index(client, disks)
    pools = {found[0] for d in disks if (found := index.lookup(d)) is not None}
    for pool in sorted(pools):
        client.refresh_pool(pool)


def create_snapshot(
    client: LibvirtClient,
    vm_id: str,
    name: str,
    description: str,
    operation_id: str,
    *,
    quiesce: bool,
    include_memory: bool,
    ctx: TaskContext,
) -> str:
    if include_memory:
        raise errors.Unsupported(
            "include_memory: migration snapshots are disk-only (memory is not exported)"
        )
    snap = snapshot_id(name, operation_id)
    try:
        client.snapshot_xml(vm_id, snap)
    except errors.NotFound:
        pass
    else:
        log.info("snapshot_exists", vm_id=vm_id, snapshot=snap)
        return snap
    record = client.domain(vm_id)
    parsed = domxml.parse_domain(record.xml)
    overlays, excluded = plan_overlays(parsed, snap)
    xml = snapxml.build_disk_only(snap, description, overlays, excluded)
    running = record.state in ("running", "paused")
    ctx.check_cancelled()
    ctx.set_stage("snapshotting")
    try:
        client.create_disk_snapshot(vm_id, xml, atomic=True, quiesce=quiesce and running)
    except (errors.FailedPrecondition, errors.Timeout, errors.Unsupported) as exc:
        if not (quiesce and running):
            raise
        log.info("quiesce_unavailable_snapshot_without", vm_id=vm_id, error=exc.message)
        client.create_disk_snapshot(vm_id, xml, atomic=True, quiesce=False)
    _refresh_pools_of(client, [d for d in parsed.disks if d.target in overlays])
    log.info("snapshot_created", vm_id=vm_id, snapshot=snap, running=running)
    return snap


def delete_snapshot(client: LibvirtClient, vm_id: str, snap: str, ctx: TaskContext) -> None:
    parsed = snapxml.parse_snapshot(client.snapshot_xml(vm_id, snap))
    lib_version, _ = client.versions()
    if parsed.external and lib_version < EXTERNAL_DELETE_MIN_VERSION:
        raise errors.FailedPrecondition(
            f"snapshot {snap!r} is external; deleting it needs libvirt >= 9.0 on the host"
        )
    overlays = [
        domxml.DiskXml(d.target, "disk", "", "qcow2", "file", d.overlay)
        for d in parsed.disks
        if d.mode == "external" and d.overlay
    ]
    index = inventory.build_index(client, overlays)
    pools = {found[0] for d in overlays if (found := index.lookup(d)) is not None}
    ctx.check_cancelled()
    ctx.set_stage("merging" if parsed.external else "deleting")
    client.delete_snapshot(vm_id, snap)
    for pool in sorted(pools):
        client.refresh_pool(pool)
    log.info("snapshot_deleted", vm_id=vm_id, snapshot=snap)


def snapshot_disk_source(client: LibvirtClient, vm_id: str, snap: str, disk_id: str) -> str:
    """The file ExportDisk reads for ``disk_id`` at snapshot ``snap`` (a volume path)."""
    return snapshot_disk(client, vm_id, snap, disk_id)[0]


def snapshot_disk(client: LibvirtClient, vm_id: str, snap: str, disk_id: str) -> tuple[str, str]:
    """(path, format) of the point-in-time image of ``disk_id`` at snapshot ``snap``.

    The format is the disk's ``<driver type>`` in the definition the snapshot
    recorded ("" when it stated none).
    """
    parsed = snapxml.parse_snapshot(client.snapshot_xml(vm_id, snap))
    mode = {d.target: d.mode for d in parsed.disks}.get(disk_id)
    if mode is None or parsed.domain is None:
        raise errors.NotFound(f"disk {disk_id!r} is not part of snapshot {snap!r}")
    if mode != "external":
        raise errors.FailedPrecondition(
            f"disk {disk_id!r} of snapshot {snap!r} is {mode or 'not'} snapshotted; only "
            "external snapshots can be read as a volume"
        )
    for disk in parsed.domain.disks:
        if disk.target == disk_id:
            if disk.source_type == "volume":
                return client.volume(disk.pool, disk.volume).path, disk.format
            return disk.path, disk.format
    raise errors.NotFound(f"disk {disk_id!r} is not part of snapshot {snap!r}")
