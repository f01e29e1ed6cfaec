"""ImportDisk / DeleteDisk: a verified VMDK on a datastore from an object in storage.

The disk is stored as a vmfs *flat* VMDK: ``<folder>/<name>-flat.vmdk`` holding the
raw data and the descriptor ``<folder>/<name>.vmdk`` naming it (``vmdk`` module). That
pair is accepted by every datastore kind and ESXi version, needs no conversion on the
host, and is what the simulator the tests run on can attach. ``<folder>`` is the
provider option ``importFolder`` (default ``virtrigaud-imports``) on the datastore of
the request's ``storage_hint`` (else option ``datastore``).

Steps (nothing is written to the datastore before the checks pass):

1. Checks: datacenter and datastore exist (NotFound), the name is a plain file name,
   the target format is VMDK (the only one a datastore holds; UNSPECIFIED means it),
   the descriptor name is free (AlreadyExists -- except a re-submitted import whose
   disk already holds exactly ``expected_content_sha256``, which returns that disk),
   the source object exists and may be reached.
2. ``providers.common.transfer.import_from_storage`` downloads the object into
   scratch, verifying its SHA256 (the request's, else the one stored with it) and the
   expected content digest, refusing corrupt or file-referencing images, converting
   to raw -- the flat extent's bytes.
3. The folder is created (``MakeDirectory``) and the raw file uploaded over HTTPS as
   ``<name>-flat.vmdk``.
4. The flat file is read back from the datastore and its content digest compared
   with the verified image's (ChecksumMismatch otherwise).
5. Only then the descriptor is written: a disk with the final name only ever appears
   complete. Its datastore path ``[ds] folder/name.vmdk`` is the ``disk_id``.

Any failure or cancellation after step 3 started deletes what was written (flat file
and descriptor); scratch is removed on every exit path. A provider that dies in step
3 or 4 leaves a flat file without descriptor; the next import of the name replaces it.

DeleteDisk removes an imported disk (descriptor and extents, through the
VirtualDiskManager) unless a VM uses it (FailedPrecondition) or it is being imported
(FailedPrecondition); a disk that is gone already is success.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable, Iterator

from providers.common import transfer
from providers.common.digest import ContentHasher
from providers.common.progress import StagedContext
from providers.common.scratch import MIB, Scratch
from providers.runtime.tasks import Progress, TaskContext
from providers.vsphere import dspath, files, inventory, placement, tasks, vmdk
from providers.vsphere.client import VSphereClient
from providers.vsphere.dshttp import DatastoreFiles
from providers.vsphere.settings import Settings
from virtrigaud import errors
from virtrigaud.logging import get_logger
from virtrigaud.provider.v1 import provider_pb2 as pb

log = get_logger("virtrigaud.vsphere")

DEFAULT_FOLDER = "virtrigaud-imports"
STAGE_WRITING = "writing datastore"
STAGE_VERIFYING = "verifying datastore"


class InFlight:
    """Disks being imported by this provider (one import per disk path at a time)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._paths: set[str] = set()

    @contextlib.contextmanager
    def claim(self, path: str) -> Iterator[None]:
        with self._lock:
            if path in self._paths:
                raise errors.AlreadyExists(
                    f"target_volume_name: {path} is being imported by another operation"
                )
            self._paths.add(path)
        try:
            yield
        finally:
            with self._lock:
                self._paths.discard(path)

    def busy(self, path: str) -> bool:
        with self._lock:
            return path in self._paths


def disk_paths(datastore: str, folder: str, name: str) -> tuple[dspath.DsPath, dspath.DsPath]:
    """(descriptor, flat extent) of an imported disk called ``name``."""
    stem = name[:-5] if name.lower().endswith(".vmdk") else name
    dspath.check_name(stem, "target_volume_name")
    base = f"{folder.strip('/')}/{stem}" if folder.strip("/") else stem
    return dspath.DsPath(datastore, f"{base}.vmdk"), dspath.DsPath(datastore, f"{base}-flat.vmdk")


def content_digest(store: DatastoreFiles, path: dspath.DsPath, size: int, ctx: Progress) -> str:
    """Content digest of a flat extent of ``size`` bytes, read from the datastore."""
    hasher = ContentHasher(size)
    done = 0
    for chunk in store.iter_file(path, ctx):
        hasher.update(chunk)
        done += len(chunk)
        ctx.progress(done, size)
    if done != size:
        raise errors.ChecksumMismatch(f"{path} holds {done} bytes, {size} were written")
    return hasher.hexdigest()


def import_disk(
    client: VSphereClient,
    settings: Settings,
    request: pb.ImportDiskRequest,
    ctx: TaskContext,
    *,
    folder: str,
    in_flight: InFlight,
    allowed_hosts: Iterable[str] = (),
) -> pb.ImportResult:
    allowed = tuple(allowed_hosts)
    ctx.set_stage("checking")
    if request.target_format not in (pb.DISK_FORMAT_UNSPECIFIED, pb.DISK_FORMAT_VMDK):
        raise errors.Unsupported(
            f"target_format: a datastore holds VMDK disks, not "
            f"{transfer.format_name(request.target_format)} (the import converts)"
        )
    target = placement.target(client, settings, request.storage_hint)
    desc_path, flat_path = disk_paths(target.datastore.name, folder, request.target_volume_name)
    with (
        in_flight.claim(str(desc_path)),
        DatastoreFiles(client, target.datacenter_path) as store,
    ):
        if store.size(desc_path) is not None:
            return _already_imported(store, request, desc_path, flat_path, ctx)
        backend, key = transfer.open_location(request.source, allowed)
        with backend:
            object_size = backend.stat(key).size
        staged = StagedContext(ctx)
        with Scratch(settings.scratch_dir, limit=settings.scratch_limit) as room:
            room.reserve(object_size + 16 * MIB, "the imported image")
            image = room.file("disk.raw")
            outcome = transfer.import_from_storage(
                request, image, "raw", staged, allowed_hosts=allowed, scratch_dir=room.path
            )
            size = -(-outcome.virtual_size // vmdk.SECTOR) * vmdk.SECTOR
            if os.path.getsize(image) != size:
                os.truncate(image, size)  # whole sectors; the tail reads as zeros anyway
            staged.check_cancelled()
            dc = target.datacenter.ref
            try:
                staged.set_stage(STAGE_WRITING)
                staged.progress(0, size)
                files.make_directory(
                    client, dc, dspath.DsPath(desc_path.datastore, desc_path.folder)
                )
                store.upload(flat_path, image, staged, lambda n: staged.progress(n, size))
                os.unlink(image)
                staged.set_stage(STAGE_VERIFYING)
                content = content_digest(store, flat_path, size, staged)
                if content != outcome.content_sha256:
                    raise errors.ChecksumMismatch(
                        f"{flat_path} reads back with content digest {content}, the verified "
                        f"image had {outcome.content_sha256}"
                    )
                staged.check_cancelled()
                store.put_bytes(desc_path, vmdk.flat_descriptor(flat_path.name, size))
            except BaseException:
                files.delete_quietly(client, dc, desc_path, "import failed or cancelled")
                files.delete_quietly(client, dc, flat_path, "import failed or cancelled")
                raise
    log.info("disk_imported", path=str(desc_path), size=size)
    return pb.ImportResult(
        disk_id=str(desc_path),
        path=str(desc_path),
        format=pb.DISK_FORMAT_VMDK,
        size_bytes=size,
        sha256=outcome.sha256,
        content_sha256=content,
    )


def _already_imported(
    store: DatastoreFiles,
    request: pb.ImportDiskRequest,
    desc_path: dspath.DsPath,
    flat_path: dspath.DsPath,
    ctx: TaskContext,
) -> pb.ImportResult:
    """The result of an import a previous run finished (see the module docstring)."""
    taken = errors.AlreadyExists(f"target_volume_name: {desc_path} already exists")
    if not request.expected_content_sha256:
        raise taken
    try:
        desc = vmdk.parse(store.read_small(desc_path, vmdk.MAX_DESCRIPTOR), str(desc_path))
    except errors.InvalidArgument as exc:
        raise taken from exc
    if [e.file for e in desc.extents] != [flat_path.name]:
        raise taken
    ctx.set_stage(STAGE_VERIFYING)
    content = content_digest(store, flat_path, desc.capacity, ctx)
    if content != request.expected_content_sha256:
        raise taken
    log.info("import_already_done", path=str(desc_path))
    return pb.ImportResult(
        disk_id=str(desc_path),
        path=str(desc_path),
        format=pb.DISK_FORMAT_VMDK,
        size_bytes=desc.capacity,
        sha256=request.expected_sha256,
        content_sha256=content,
    )


def delete_disk(
    client: VSphereClient,
    settings: Settings,
    disk_id: str,
    ctx: TaskContext,
    *,
    folder: str,
    in_flight: InFlight,
) -> None:
    path = dspath.parse(disk_id, "disk_id")
    # Only disks ImportDisk made: a descriptor directly in the import folder. Any other
    # datastore file (a VM's own disk, ...) is refused, whatever the caller sends.
    if not path.path.endswith(".vmdk") or path.folder != folder.strip("/"):
        raise errors.InvalidArgument(
            f"disk_id: {disk_id!r} is not a disk ImportDisk made (a .vmdk in the import "
            f"folder {folder!r})"
        )
    if in_flight.busy(str(path)):
        raise errors.FailedPrecondition(f"disk {path} is being imported; cancel that first")
    ctx.set_stage("checking")
    for vm in inventory.list_vms(client):
        for disk in vm.disks:
            used = {disk.path, *(name for element in disk.chain for name in element)}
            if str(path) in used:
                raise errors.FailedPrecondition(
                    f"disk {path} is attached to VM {vm.name!r} ({vm.id}); delete the VM or "
                    "detach the disk first"
                )
    tree = placement.read(client)
    dc = tree.datacenter(settings.datacenter)
    with DatastoreFiles(client, tree.datacenter_path(dc)) as store:
        exists = store.size(path) is not None
        extents: list[dspath.DsPath] = []
        if exists:
            try:
                desc = vmdk.parse(store.read_small(path, vmdk.MAX_DESCRIPTOR), str(path))
            except errors.InvalidArgument as exc:
                raise errors.InvalidArgument(
                    f"disk_id: {path} is not a VMDK descriptor; not deleting it"
                ) from exc
            extents = [path.sibling(e.file) for e in desc.extents if e.file and "/" not in e.file]
    ctx.set_stage("deleting")
    if exists:
        what = f"deleting disk {path}"
        try:
            task = client.call(
                lambda c: c.virtualDiskManager.DeleteVirtualDisk_Task(str(path), dc.ref), what
            )
            tasks.wait(client, task, what, ctx=ctx)
        except errors.NotFound:
            pass
    # Extents the disk manager left, and the flat file of an import that never finished.
    stem = path.path[:-5]
    for leftover in {*extents, dspath.DsPath(path.datastore, f"{stem}-flat.vmdk")}:
        files.delete_file(client, dc.ref, leftover)
    log.info("disk_deleted", disk_id=str(path), existed=exists)
