"""ExportDisk: one disk of a VM, at a point in time, as one object in storage.

Which image is read (the volume path comes from
``GET /nodes/{node}/storage/{storage}/content/{volume}``):

* with ``snapshot_id``: the disk as the snapshot froze it. The drive list is the
  snapshot's config (a disk added later is NotFound). On a file storage a qcow2 disk
  holds PVE's snapshot as an internal qcow2 snapshot of that name, read with
  ``qemu-img convert -U -l snapshot.name=<snapshot>`` -- consistent while the VM keeps
  running, since clusters a snapshot refers to are never rewritten. On RBD the
  snapshot is ``<path>@<snapshot>``. Other storages (LVM-thin, ZFS, raw files cannot
  be snapshotted by PVE anyway) are Unsupported with a message saying to power off.
* without: the current image, only while the VM is stopped (FailedPrecondition
  otherwise: a running guest changes it under the reader).

How the bytes move, and why this way: the node has the image, the pipeline
(``providers.common.transfer``: convert, content digest, transport digest, upload)
needs a seekable local file, and the PVE API cannot download disks. So on the node
``qemu-img convert`` writes the point-in-time image as a compact qcow2 into a private
temporary directory under ``nodeScratchDir`` (only allocated clusters: holes and
zeros are neither stored nor sent; a backing chain is flattened), that file is
streamed over the SSH channel (``cat``; flow control bounds memory) into the
provider's scratch directory, and the pipeline exports it as the requested format
(default: the disk's own format). The node copy is deleted on every exit path,
cancellation included (the node command is killed first), and so is the provider's
scratch. The node needs free space for the allocated data of the disk in
``nodeScratchDir``; the provider needs it in ``scratchDir``.

``ExportResult.source_format`` is the format of the volume on PVE, not of the
intermediate qcow2.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from providers.common import transfer
from providers.common.progress import StagedContext
from providers.common.scratch import Scratch
from providers.proxmox import inventory, nodeops, qemuconfig, snapshots
from providers.proxmox.site import FILE_STORAGE_TYPES, Site, check_vmid
from providers.runtime.tasks import TaskContext
from virtrigaud import errors
from virtrigaud.formats import FORMAT_VALUES
from virtrigaud.logging import get_logger
from virtrigaud.provider.v1 import provider_pb2 as pb

log = get_logger("virtrigaud.proxmox")

STAGE_SNAPSHOT_COPY = "copying image on the node"
STAGE_READING = "reading from the node"
INTERMEDIATE = "qcow2"


def _source(site: Site, request: pb.ExportDiskRequest) -> tuple[str, str, str]:
    """(node path, format, snapshot name for qemu-img -l) of the disk to read."""
    vmid = check_vmid(request.vm_id)
    current = inventory.vm_config(site, vmid)
    config = (
        snapshots.snapshot_config(site, vmid, request.snapshot_id)
        if request.snapshot_id
        else current
    )
    parsed = qemuconfig.parse_config(config)
    drive = next((d for d in parsed.drives if d.key == request.disk_id), None)
    if drive is None:
        raise errors.NotFound(f"disk {request.disk_id!r} not found on VM {vmid}")
    if drive.cdrom:
        raise errors.InvalidArgument(
            f"disk_id: {request.disk_id!r} is a CD-ROM, not a disk; only disks are exported"
        )
    if not request.snapshot_id:
        status = site.api.get(site.qemu(vmid, "status/current"))
        if status.get("status") != "stopped":
            raise errors.FailedPrecondition(
                f"VM {vmid} is {status.get('status')}: its disk {request.disk_id} is changing; "
                "export from a snapshot (snapshot_id) or power the VM off"
            )
    if drive.volume.startswith("/"):
        path, fmt, kind = drive.volume, drive.format or "raw", "dir"
    else:
        info = inventory.volume_info(site, drive)
        if info is None or not info.get("path"):
            raise errors.NotFound(
                f"disk {request.disk_id!r}: PVE reports no path for volume {drive.volume}"
            )
        path, fmt = str(info["path"]), str(info.get("format") or drive.format or "raw")
        kind = str(site.storage_config(drive.storage, "disk storage").get("type", ""))
    if fmt not in FORMAT_VALUES:
        raise errors.Unsupported(f"disk {request.disk_id!r}: cannot export {fmt} images")
    if not request.snapshot_id:
        return path, fmt, ""
    if kind in FILE_STORAGE_TYPES and fmt == "qcow2":
        return path, fmt, request.snapshot_id
    if kind == "rbd":
        return f"{path}@{request.snapshot_id}", fmt, ""
    raise errors.Unsupported(
        f"disk {request.disk_id!r}: reading a snapshot of a {fmt} volume on {kind or 'this'} "
        "storage is not implemented; power the VM off and export without a snapshot"
    )


def export_disk(
    site: Site,
    request: pb.ExportDiskRequest,
    ctx: TaskContext,
    *,
    allowed_hosts: Iterable[str] = (),
) -> pb.ExportResult:
    allowed = tuple(allowed_hosts)
    ctx.set_stage("checking")
    path, fmt, snap = _source(site, request)
    target = transfer.format_name(request.target_format) if request.target_format else fmt
    if request.compress and target != "qcow2":
        raise errors.InvalidArgument("compress: applies to qcow2 objects only")
    backend, _key = transfer.open_location(request.destination, allowed)
    backend.close()
    effective = pb.ExportDiskRequest()
    effective.CopyFrom(request)
    effective.target_format = FORMAT_VALUES[target]
    staged = StagedContext(ctx)
    scratch = site.settings.scratch
    with Scratch(scratch.directory, limit=scratch.limit) as room:
        local = room.file(f"disk.{INTERMEDIATE}")
        _fetch(site, (path, fmt, snap), local, room, staged)
        result = transfer.export_to_storage(
            local, INTERMEDIATE, effective, staged, allowed_hosts=allowed, scratch_dir=room.path
        )
    result.source_format = FORMAT_VALUES[fmt]
    log.info(
        "disk_exported",
        vm_id=request.vm_id,
        disk=request.disk_id,
        snapshot=request.snapshot_id,
        size=result.size_bytes,
    )
    return result


def _fetch(
    site: Site, source: tuple[str, str, str], local: str, room: Scratch, ctx: StagedContext
) -> None:
    """The point-in-time image as a compact qcow2 at ``local`` (module docstring)."""
    path, fmt, snap = source
    node = site.access
    cancel = ctx.cancel_event
    ctx.check_cancelled()
    ctx.set_stage(STAGE_SNAPSHOT_COPY)
    workdir = nodeops.make_temp_dir(node, site.settings.node_scratch, "virtrigaud-export-")
    try:
        copy = f"{workdir}/disk.{INTERMEDIATE}"
        virtual = int(nodeops.image_info(node, path, fmt).get("virtual-size") or 0)
        nodeops.convert(
            node,
            path,
            copy,
            src_format=fmt,
            dst_format=INTERMEDIATE,
            snapshot=snap,
            cancel=cancel,
            progress=lambda fraction: ctx.progress(int(fraction * virtual), virtual),
        )
        size = nodeops.file_size(node, copy)
        room.reserve(size, "the image copied from the node")
        ctx.check_cancelled()
        ctx.set_stage(STAGE_READING)
        received = 0
        with open(local, "xb") as out, nodeops.stream_file(node, copy, cancel) as chunks:
            for chunk in chunks:
                out.write(chunk)
                received += len(chunk)
                ctx.progress(received, size)
                ctx.check_cancelled()
        if received != size:
            raise errors.ChecksumMismatch(
                f"read {received} of {size} bytes of the node's copy of {path}"
            )
        log.info("export_node_copy_read", path=path, bytes=received, local=os.path.basename(local))
    finally:
        try:
            nodeops.remove(node, workdir, recursive=True)
        except errors.VirtrigaudError as exc:
            log.warning("node_cleanup_failed", path=workdir, error=exc.message)
