"""ExportDisk: one disk of a VM, at a point in time, as one object in storage.

Which image is read:

* with ``snapshot_id``: the file the snapshot froze (``snapshots.snapshot_disk``, the
  base under the snapshot's overlay): consistent while the VM keeps running;
* without: the disk's current image, only while the VM is off (a running guest
  changes it under the reader: FailedPrecondition says to snapshot first).

Every disk the inventory lists (``Disk.id`` = target dev) can be exported; CD-ROMs and
other non-disk devices are refused (InvalidArgument), unknown VMs and disks are
NotFound. The format of the image is the disk's ``<driver type>`` (never probed).

How the bytes move (``volfiles``): the volume -- with its backing chain, if any -- is
read through a libvirt sparse storage stream into a sparse file in the provider's
scratch directory (qemu-img, which converts and maps images, needs a seekable file;
the stream works for remote hosts too), then ``providers.common.transfer`` converts it
when needed, hashes it (transport + content digest) and uploads it. Everything is
checked before the first byte moves: VM, disk, formats, the destination (key guard,
SSRF allow-list), the scratch budget.

Progress: stage ``reading volume`` counts the streamed volume bytes, then the
pipeline's stages (``converting``, ``uploading``) follow; ``progress.StagedContext``
keeps the task's byte count monotonic across them. Cancellation stops the stream or
the pipeline at the next chunk; scratch is removed on every exit path and the
destination writer is aborted (an S3 upload interrupted by a transient error stays
resumable: that is transfer's policy).
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass

from providers.common import qemu_img, transfer
from providers.common.progress import StagedContext
from providers.common.scratch import Scratch
from providers.libvirt import domxml, snapshots, volfiles, volxml
from providers.libvirt.client import LibvirtClient
from providers.runtime.tasks import TaskContext
from virtrigaud import errors
from virtrigaud.logging import get_logger
from virtrigaud.provider.v1 import provider_pb2 as pb

log = get_logger("virtrigaud.libvirt")

STAGE_READING = "reading volume"


@dataclass(frozen=True)
class ScratchSettings:
    """Where transfers put local copies (None: the system temp dir) and how much."""

    directory: str | None = None
    limit: int | None = None  # bytes; None: only the free space bounds it


@dataclass(frozen=True)
class DiskSource:
    """The image an export reads."""

    path: str
    format: str
    volume: volxml.VolumeXml


def find_disk(parsed: domxml.DomainXml, disk_id: str, vm_id: str) -> domxml.DiskXml:
    disk = next((d for d in parsed.disks if d.target == disk_id), None)
    if disk is None:
        raise errors.NotFound(f"disk {disk_id!r} not found on VM {vm_id}")
    if disk.device != "disk":
        raise errors.InvalidArgument(
            f"disk_id: {disk_id!r} is a {disk.device}, not a disk; only disks are exported"
        )
    return disk


def resolve_source(client: LibvirtClient, vm_id: str, disk_id: str, snapshot_id: str) -> DiskSource:
    """The point-in-time image of ``disk_id`` (see the module docstring)."""
    record = client.domain(vm_id)
    disk = find_disk(domxml.parse_domain(record.xml), disk_id, vm_id)
    if snapshot_id:
        path, fmt = snapshots.snapshot_disk(client, vm_id, snapshot_id, disk_id)
    else:
        if record.state != "shutoff":
            raise errors.FailedPrecondition(
                f"VM {vm_id} is {record.state}: its disk {disk_id} is changing; export "
                "from a snapshot (snapshot_id) or power the VM off"
            )
        if disk.source_type == "volume":
            path = client.volume(disk.pool, disk.volume).path
        else:
            path = disk.path
        fmt = disk.format
    if not path.startswith("/"):
        raise errors.Unsupported(
            f"disk {disk_id!r}: {disk.source_type} disks cannot be read through a volume stream"
        )
    fmt = fmt or "raw"  # libvirt attaches a disk without <driver type> as raw
    if fmt not in qemu_img.FORMATS:
        raise errors.Unsupported(f"disk {disk_id!r}: cannot export {fmt} images")
    return DiskSource(path, fmt, volume_at(client, path, disk_id))


def volume_at(client: LibvirtClient, path: str, disk_id: str) -> volxml.VolumeXml:
    """The pool volume of a disk file; pools of its directory are refreshed once if
    the file is not known yet (created since the last refresh)."""
    try:
        return client.volume_by_key(path)[1]
    except errors.NotFound:
        pass
    directory = posixpath.dirname(posixpath.normpath(path))
    for pool in client.list_pools():
        if (
            pool.active
            and pool.type in volxml.FILE_POOL_TYPES
            and posixpath.normpath(pool.path) == directory
        ):
            try:
                client.refresh_pool(pool.name)
            except errors.FailedPrecondition as exc:  # busy with another job
                log.info("pool_refresh_skipped", pool=pool.name, error=exc.message)
    try:
        return client.volume_by_key(path)[1]
    except errors.NotFound as exc:
        raise errors.FailedPrecondition(
            f"disk {disk_id!r}: {path} is not a volume of any active storage pool; define a "
            "pool for its directory so it can be read through a volume stream"
        ) from exc


def check_destination(request: pb.ExportDiskRequest, allowed_hosts: Iterable[str]) -> None:
    """Refuse a destination transfer would refuse, before any byte is read."""
    backend, _key = transfer.open_location(request.destination, allowed_hosts)
    backend.close()


def export_disk(
    client: LibvirtClient,
    request: pb.ExportDiskRequest,
    ctx: TaskContext,
    *,
    scratch: ScratchSettings,
    allowed_hosts: Iterable[str] = (),
) -> pb.ExportResult:
    allowed = tuple(allowed_hosts)
    ctx.set_stage("checking")
    source = resolve_source(client, request.vm_id, request.disk_id, request.snapshot_id)
    target = transfer.format_name(request.target_format) if request.target_format else None
    if request.compress and (target or source.format) != "qcow2":
        raise errors.InvalidArgument("compress: applies to qcow2 objects only")
    check_destination(request, allowed)
    staged = StagedContext(ctx)
    with Scratch(scratch.directory, limit=scratch.limit) as room:
        staged.check_cancelled()
        staged.set_stage(STAGE_READING)
        local = volfiles.fetch_image(
            client,
            source.volume,
            source.format,
            room,
            progress=staged.progress,
            cancel=staged.cancel_event,
        )
        log.info(
            "export_volume_read",
            vm_id=request.vm_id,
            disk=request.disk_id,
            volume=source.volume.name,
            allocated=os.stat(local).st_blocks * 512,
        )
        result = transfer.export_to_storage(
            local,
            source.format,
            request,
            staged,
            allowed_hosts=allowed,
            scratch_dir=room.path,
        )
    log.info(
        "disk_exported",
        vm_id=request.vm_id,
        disk=request.disk_id,
        snapshot=request.snapshot_id,
        size=result.size_bytes,
    )
    return result
