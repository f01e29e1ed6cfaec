"""ExportDisk: one virtual disk, at a point in time, as one object in storage.

Which files are read: the VM's ``layoutEx`` names, for every disk, its chain of
descriptor + extent files (base disk first, then each snapshot delta). With a
``snapshot_id`` the chain *as of that snapshot* (``layoutEx.snapshot[].disk[]``) is
read -- the files the snapshot froze, which the running VM no longer writes. Without
one the disk's current chain is read, which is only consistent while the VM is off:
a running (or suspended) VM is refused with FailedPrecondition ("snapshot first").

How they are read (the path the tests prove, on vcsim): every file of the chain is
fetched over HTTPS from the datastore file endpoint (``dshttp``: session cookie,
streamed, sparse, resumed with ``Range`` after a dropped connection) into the
provider's scratch directory. Descriptors are rewritten to name the local copies
(extents, and ``parentFileNameHint`` -> the previous element), so qemu-img reads the
whole chain there; ``providers.common.transfer`` then converts it to the requested
format (default vmdk, a single-file monolithicSparse object), computes the transport
and content digests and uploads it. ``ExportResult.source_format`` is VMDK.

What only real vSphere can decide: ESXi locks the files of a running VM's current
delta; the files under a snapshot are opened read-only by the VM and are normally
readable through ``/folder`` as well, but a host may refuse them (HTTP 500 / file
locked), and vSAN / vVols datastores have no plain files to serve. For those the
provider option ``exportMethod=nfc`` reads the disk through an NFC export lease
instead (``nfc``: a temporary linked clone at the snapshot, ``ExportVm``); the
simulator the tests run on does not implement ExportVm, so that path is not proven
by them (see docs/providers/vsphere.md).

Nothing is written to the datastore, and scratch is removed on every exit path
(cancellation included).
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from providers.common import transfer
from providers.common.progress import StagedContext
from providers.common.scratch import Scratch
from providers.runtime.tasks import TaskContext
from providers.vsphere import dspath, inventory, nfc, placement, vmdk
from providers.vsphere.client import VSphereClient, vim
from providers.vsphere.dshttp import DatastoreFiles
from providers.vsphere.settings import Settings
from virtrigaud import errors
from virtrigaud.logging import get_logger
from virtrigaud.provider.v1 import provider_pb2 as pb

log = get_logger("virtrigaud.vsphere")

STAGE_READING = "reading datastore"


@dataclass(frozen=True)
class Source:
    """The chain of one disk: descriptor datastore paths, base first."""

    disk_id: str
    capacity: int
    descriptors: tuple[dspath.DsPath, ...]
    bus_number: int = 0  # of the disk's controller
    unit: int = 0


def _layout(client: VSphereClient, vm_id: str) -> dict[str, Any]:
    ref = client.ref(vim.VirtualMachine, vm_id)
    try:
        return client.properties(
            ref,
            ["config.hardware.device", "layoutEx", "runtime.powerState", "snapshot"],
            f"VM {vm_id}",
        )
    except errors.NotFound as exc:
        raise errors.NotFound(f"VM {vm_id!r} not found") from exc


def resolve_source(client: VSphereClient, vm_id: str, disk_id: str, snapshot_id: str) -> Source:
    """The chain ExportDisk reads (NotFound / InvalidArgument / FailedPrecondition)."""
    props = _layout(client, vm_id)
    devices = list(props.get("config.hardware.device") or ())
    device = next((d for d in devices if str(d.key) == disk_id), None)
    if device is None:
        raise errors.NotFound(f"VM {vm_id} has no disk {disk_id!r}")
    if not isinstance(device, vim.vm.device.VirtualDisk):
        raise errors.InvalidArgument(f"disk_id: device {disk_id} of VM {vm_id} is not a disk")
    layout = props.get("layoutEx")
    files, chains = inventory._layout_files(layout)
    if snapshot_id:
        snaps = [s for s in (getattr(layout, "snapshot", None) or ()) if s.key._moId == snapshot_id]
        if not snaps:
            raise errors.NotFound(f"VM {vm_id} has no snapshot {snapshot_id!r}")
        chain = next((d.chain for d in snaps[0].disk or () if int(d.key) == int(device.key)), None)
        if chain is None:
            raise errors.NotFound(f"snapshot {snapshot_id} does not hold disk {disk_id}")
    else:
        state = str(props.get("runtime.powerState", ""))
        if state != "poweredOff":
            raise errors.FailedPrecondition(
                f"VM {vm_id} is {state}: its disk changes while it is read; take a snapshot "
                "and export from it (snapshot_id), or power the VM off"
            )
        chain = chains.get(int(device.key))
    typed = {name: kind for name, kind, _size in files.values()}
    descriptors = []
    for element in inventory.chain_files(chain, files):
        found = [name for name in element if typed.get(name) == "diskDescriptor"]
        if not found:
            raise errors.FailedPrecondition(f"disk {disk_id}: a chain element has no descriptor")
        descriptors.append(dspath.parse(found[0], "layoutEx"))
    if not descriptors:
        raise errors.FailedPrecondition(f"disk {disk_id}: vSphere reports no files for it")
    capacity = int(getattr(device, "capacityInBytes", 0) or 0) or int(device.capacityInKB) * 1024
    controller = next((d for d in devices if d.key == device.controllerKey), None)
    return Source(
        disk_id,
        capacity,
        tuple(descriptors),
        bus_number=int(getattr(controller, "busNumber", 0) or 0),
        unit=int(device.unitNumber or 0),
    )


def _extent_path(descriptor: dspath.DsPath, name: str) -> dspath.DsPath:
    """An extent named in a descriptor: a file in (or below) the descriptor's folder."""
    if not name or name.startswith("/"):
        raise errors.FailedPrecondition(
            f"{descriptor}: extent {name!r} is not beside its descriptor (raw device or "
            "absolute path); such disks cannot be read over the datastore endpoint"
        )
    joined = posixpath.normpath(posixpath.join(descriptor.folder, name))
    return dspath.DsPath(descriptor.datastore, dspath.check_relative(joined, "extent"))


def fetch_chain(files: DatastoreFiles, source: Source, room: Scratch, ctx: StagedContext) -> str:
    """Copy every file of the chain into ``room``; the local top descriptor's path."""
    plans: list[tuple[dspath.DsPath, vmdk.Descriptor, list[tuple[dspath.DsPath, str]]]] = []
    for index, path in enumerate(source.descriptors):
        raw = files.read_small(path, vmdk.MAX_DESCRIPTOR)
        try:
            desc = vmdk.parse(raw, str(path))
        except errors.InvalidArgument as exc:
            raise errors.FailedPrecondition(
                f"disk {source.disk_id}: {path} is not a VMDK text descriptor (a disk "
                "without data, or a format the datastore endpoint cannot serve)"
            ) from exc
        extents = [
            (_extent_path(path, e.file), f"c{index}-{posixpath.basename(e.file)}")
            for e in desc.extents
            if e.type != "ZERO"
        ]
        plans.append((path, desc, extents))
    sizes = {ext: files.size(ext) for _p, _d, exts in plans for ext, _local in exts}
    missing = [str(p) for p, size in sizes.items() if size is None]
    if missing:
        raise errors.NotFound(f"disk {source.disk_id}: extent files missing: {', '.join(missing)}")
    total = sum(size or 0 for size in sizes.values())
    ctx.set_stage(STAGE_READING)
    ctx.progress(0, total)
    done = 0
    local_top = ""
    parent_local: str | None = None
    for index, (path, desc, extents) in enumerate(plans):
        names: dict[str, str] = {}
        for (remote, local), extent in zip(
            extents, [e for e in desc.extents if e.type != "ZERO"], strict=True
        ):
            base = done
            files.download(
                remote,
                room.file(local),
                ctx,
                on_bytes=_offset(ctx, base, total),
                on_allocate=room.allocate,
            )
            done += sizes[remote] or 0
            names[extent.file] = local
        local_desc = f"c{index}-{posixpath.basename(path.path)}"
        text = vmdk.rewrite(desc, names, parent_local if desc.parent_hint else None)
        with open(room.file(local_desc), "w", encoding="utf-8") as handle:
            handle.write(text)
        parent_local = local_desc
        local_top = room.file(local_desc)
    return local_top


def _offset(ctx: StagedContext, base: int, total: int) -> Callable[[int], None]:
    return lambda n: ctx.progress(base + n, total)


def check_destination(request: pb.ExportDiskRequest, allowed: Iterable[str]) -> None:
    backend, _key = transfer.open_location(request.destination, allowed)
    backend.close()


def export_disk(
    client: VSphereClient,
    settings: Settings,
    request: pb.ExportDiskRequest,
    ctx: TaskContext,
    *,
    allowed_hosts: Iterable[str] = (),
) -> pb.ExportResult:
    allowed = tuple(allowed_hosts)
    ctx.set_stage("checking")
    source = resolve_source(client, request.vm_id, request.disk_id, request.snapshot_id)
    target = transfer.format_name(request.target_format) if request.target_format else "vmdk"
    if request.compress and target != "qcow2":
        raise errors.InvalidArgument("compress: applies to qcow2 objects only")
    check_destination(request, allowed)
    tree = placement.read(client)
    dc = tree.datacenter(settings.datacenter)
    staged = StagedContext(ctx)
    with (
        Scratch(settings.scratch_dir, limit=settings.scratch_limit) as room,
        DatastoreFiles(client, tree.datacenter_path(dc)) as files,
    ):
        if settings.export_method == "nfc":
            local = nfc.fetch(
                client,
                request.vm_id,
                request.snapshot_id,
                disk=(source.bus_number, source.unit, source.capacity),
                files=files,
                room=room,
                ctx=staged,
            )
        else:
            local = fetch_chain(files, source, room, staged)
        staged.check_cancelled()
        if not request.target_format:
            request = _with_target(request, pb.DISK_FORMAT_VMDK)
        result = transfer.export_to_storage(
            local, "vmdk", request, staged, allowed_hosts=allowed, scratch_dir=room.path
        )
    result.source_format = pb.DISK_FORMAT_VMDK
    log.info(
        "disk_exported",
        vm_id=request.vm_id,
        disk=request.disk_id,
        snapshot=request.snapshot_id,
        chain=len(source.descriptors),
        size=result.size_bytes,
    )
    return result


def _with_target(request: pb.ExportDiskRequest, fmt: int) -> pb.ExportDiskRequest:
    copy = pb.ExportDiskRequest()
    copy.CopyFrom(request)
    copy.target_format = fmt  # type: ignore[assignment]
    return copy
