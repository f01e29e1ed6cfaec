"""ImportDisk: one object in storage -> a new, verified volume in a storage pool.

Steps (each checked before the next; nothing is created before the checks pass):

1. Checks: the pool (``storage_hint``, else the provider's ``storagePool``) exists and
   is active (NotFound / FailedPrecondition), the volume name is safe
   (``names.check_safe``) and free (AlreadyExists, before any download), the target
   format is one a pool volume can have (qcow2 -- the native one, the default for
   file pools -- or raw), the source object exists and may be reached (NotFound,
   PermissionDenied from the SSRF allow-list). The pool is refreshed first (best
   effort: skipped while libvirt builds a volume in it), so a file put into its
   directory behind libvirt's back also counts as a taken name.
2. ``providers.common.transfer.import_from_storage`` downloads the object into the
   provider's scratch directory, verifying its SHA256 (the request's, else the one
   stored with the object; ChecksumMismatch), refusing objects that refer to other
   files or that qemu-img finds corrupt, converting to the target format and checking
   the expected content digest when one is given.
3. The verified image is streamed (``virStorageVolUpload``, sparse) into a temporary
   volume ``vr-import-<hash of pool/name>.part`` of the pool.
4. The final volume is created from it with ``virStorageVolCreateXMLFrom`` (libvirt
   cannot rename volumes); libvirt marks it as being built until the copy is whole,
   and removes it itself when the copy fails. The temporary volume is deleted.
5. The final volume is read back through a stream and its content digest computed;
   it must equal the digest of the verified image (else ChecksumMismatch). That digest
   is the ``content_sha256`` reported.

So a volume with the final name only ever appears complete, and any failure or
cancellation at any step deletes what the import created (the temporary volume, the
final one when verifying it failed, the scratch files). A provider that dies in step 3
leaves the temporary volume behind; the next import of the same name removes it.
An import whose volume already exists with exactly the expected content (a re-submit
after a provider restart) returns that volume again; any other existing volume of the
name is a collision (AlreadyExists). Two imports of the same volume in one provider
are refused (AlreadyExists) while the
first runs.

A raw image whose first bytes look like another image format (a guest can write a
qcow2 header into its raw disk) is refused as raw: libvirt's directory pools probe
file formats, so the volume would be listed -- and later attached -- as that format.
Import it as qcow2 instead, which wraps the data.

Progress: ``downloading`` / ``converting`` / ``verifying`` (the pipeline), then
``writing volume``, ``finalizing`` and ``verifying volume``; bytes add up across them
(``progress.StagedContext``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Iterable, Iterator

from providers.common import qemu_img, transfer
from providers.common.progress import StagedContext
from providers.common.scratch import MIB, Scratch
from providers.libvirt import domxml, names, placement, volfiles, volxml
from providers.libvirt.client import LibvirtClient, PoolRecord
from providers.libvirt.exports import ScratchSettings
from providers.runtime.tasks import TaskContext
from virtrigaud import errors
from virtrigaud.formats import FORMAT_VALUES
from virtrigaud.logging import get_logger
from virtrigaud.provider.v1 import provider_pb2 as pb

log = get_logger("virtrigaud.libvirt")

POOL_FORMATS = ("qcow2", "raw")
STAGE_WRITING = "writing volume"
STAGE_FINALIZING = "finalizing"
STAGE_VERIFYING_VOLUME = "verifying volume"


class InFlight:
    """Volumes being imported by this provider (one import per volume at a time)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._names: set[tuple[str, str]] = set()

    def busy(self, pool: str, name: str) -> bool:
        with self._lock:
            return (pool, name) in self._names

    @contextlib.contextmanager
    def claim(self, pool: str, name: str) -> Iterator[None]:
        with self._lock:
            if (pool, name) in self._names:
                raise errors.AlreadyExists(
                    f"target_volume_name: volume {name!r} of pool {pool!r} is being imported "
                    "by another operation"
                )
            self._names.add((pool, name))
        try:
            yield
        finally:
            with self._lock:
                self._names.discard((pool, name))


def temporary_name(pool: str, name: str) -> str:
    """The deterministic name of the temporary volume of an import of ``pool/name``."""
    tag = hashlib.sha256(f"{pool}/{name}".encode()).hexdigest()[:16]
    return f"vr-import-{tag}.part"


def target_format(value: pb.DiskFormat, pool: PoolRecord) -> str:
    if not value:
        return "qcow2" if pool.type in volxml.FILE_POOL_TYPES else "raw"
    fmt = transfer.format_name(value)
    if fmt not in POOL_FORMATS:
        raise errors.Unsupported(
            f"target_format: pool volumes are qcow2 or raw, not {fmt} (the import converts)"
        )
    return fmt


def _source_size(request: pb.ImportDiskRequest, allowed_hosts: Iterable[str]) -> int:
    """Size of the source object (NotFound / PermissionDenied before anything starts)."""
    backend, key = transfer.open_location(request.source, allowed_hosts)
    with backend:
        return backend.stat(key).size


def _refuse_ambiguous_raw(path: str) -> None:
    probed = qemu_img.info(path, None, backing_chain=False).format
    if probed != "raw":
        raise errors.FailedPrecondition(
            f"the disk's data starts with a {probed} image header; as a raw volume libvirt "
            f"would probe it as {probed}. Import it with target_format QCOW2"
        )


def _delete_quietly(client: LibvirtClient, vol: volxml.VolumeXml, why: str) -> None:
    try:
        client.delete_volume(vol.key or vol.path)
    except errors.NotFound:
        pass
    except errors.VirtrigaudError as exc:
        log.warning("import_cleanup_failed", volume=vol.name, reason=why, error=exc.message)


def import_disk(
    client: LibvirtClient,
    request: pb.ImportDiskRequest,
    ctx: TaskContext,
    *,
    default_pool: str,
    scratch: ScratchSettings,
    in_flight: InFlight,
    allowed_hosts: Iterable[str] = (),
) -> pb.ImportResult:
    allowed = tuple(allowed_hosts)
    ctx.set_stage("checking")
    pool = placement.active_pool(client, request.storage_hint or default_pool, "storage_hint")
    name = names.check_safe(request.target_volume_name, "target_volume_name")
    fmt = target_format(request.target_format, pool)
    with in_flight.claim(pool.name, name):
        try:  # files created behind libvirt's back must count as taken names too
            client.refresh_pool(pool.name)
        except errors.FailedPrecondition as exc:  # busy: another job builds a volume
            log.info("pool_refresh_skipped", pool=pool.name, error=exc.message)
        existing = client.find_volume(pool.name, name)
        if existing is not None:
            return _already_imported(
                client, request, existing, (pool.name, fmt), scratch=scratch, ctx=ctx
            )
        object_size = _source_size(request, allowed)
        temp = temporary_name(pool.name, name)
        stale = client.find_volume(pool.name, temp)
        if stale is not None:
            log.warning("import_removing_stale_temporary", pool=pool.name, volume=temp)
            _delete_quietly(client, stale, "stale temporary volume")
        return _import(
            client,
            request,
            StagedContext(ctx),
            (pool.name, name, temp, fmt),
            object_size,
            scratch=scratch,
            allowed=allowed,
        )


def _already_imported(
    client: LibvirtClient,
    request: pb.ImportDiskRequest,
    vol: volxml.VolumeXml,
    where: tuple[str, str],  # pool, format
    *,
    scratch: ScratchSettings,
    ctx: TaskContext,
) -> pb.ImportResult:
    """The result for a volume a previous run of this import already finished.

    A provider restart loses its tasks; the manager then re-submits the same import.
    If the volume with the requested name holds exactly the expected content (its
    content digest, read back now, equals ``expected_content_sha256``), that import
    finished and its result is returned again. Anything else is a name collision.
    """
    pool, fmt = where
    taken = errors.AlreadyExists(
        f"target_volume_name: volume {vol.name!r} already exists in pool {pool!r}"
    )
    if not request.expected_content_sha256 or vol.format != fmt:
        raise taken
    ctx.set_stage(STAGE_VERIFYING_VOLUME)
    with Scratch(scratch.directory, limit=scratch.limit) as room:
        content = volfiles.volume_content_digest(
            client, vol, fmt, room, progress=ctx.progress, cancel=ctx.cancel_event
        )
    if content != request.expected_content_sha256:
        raise taken
    log.info("import_already_done", pool=pool, volume=vol.name)
    return pb.ImportResult(
        disk_id=f"{pool}/{vol.name}",
        path=vol.path,
        format=FORMAT_VALUES[fmt],
        size_bytes=vol.capacity,
        sha256=request.expected_sha256,
        content_sha256=content,
    )


def _import(
    client: LibvirtClient,
    request: pb.ImportDiskRequest,
    ctx: StagedContext,
    volume: tuple[str, str, str, str],  # pool, name, temporary name, format
    object_size: int,
    *,
    scratch: ScratchSettings,
    allowed: tuple[str, ...],
) -> pb.ImportResult:
    pool, name, temp, fmt = volume
    cancel = ctx.cancel_event
    with Scratch(scratch.directory, limit=scratch.limit) as room:
        # The image lands beside the pipeline's own scratch; budget: about the object.
        estimate = object_size + object_size // 4096 + 16 * MIB
        room.reserve(estimate, "the imported image")
        image = room.file(f"image.{fmt}")
        outcome = transfer.import_from_storage(
            request, image, fmt, ctx, allowed_hosts=allowed, scratch_dir=room.path
        )
        if fmt == "raw":
            _refuse_ambiguous_raw(image)
        ctx.check_cancelled()
        ctx.set_stage(STAGE_WRITING)
        staged = client.upload_volume(
            pool,
            temp,
            fmt,
            outcome.virtual_size,
            volfiles.file_chunks(image, progress=ctx.progress, cancel=cancel),
            cancel,
        )
        try:
            os.unlink(image)
            room.release(estimate)
            ctx.check_cancelled()
            ctx.set_stage(STAGE_FINALIZING)
            final = client.create_volume(
                pool,
                volxml.build_volume(name, outcome.virtual_size, fmt, allocation=0),
                clone_of=staged.key or staged.path,
            )
        finally:
            _delete_quietly(client, staged, "temporary volume")
        try:
            ctx.set_stage(STAGE_VERIFYING_VOLUME)
            content = volfiles.volume_content_digest(
                client, final, fmt, room, progress=ctx.progress, cancel=cancel
            )
            if content != outcome.content_sha256:
                raise errors.ChecksumMismatch(
                    f"volume {pool}/{name} reads back with content digest {content}, the "
                    f"verified image had {outcome.content_sha256}"
                )
        except BaseException:
            _delete_quietly(client, final, "verification failed or cancelled")
            raise
    log.info("disk_imported", pool=pool, volume=name, format=fmt, size=final.capacity)
    return pb.ImportResult(
        disk_id=f"{pool}/{name}",
        path=final.path,
        format=FORMAT_VALUES[fmt],
        size_bytes=final.capacity,
        sha256=outcome.sha256,
        content_sha256=content,
    )


def delete_disk(client: LibvirtClient, disk_id: str, in_flight: InFlight) -> None:
    """DeleteDisk: remove an imported volume (``pool/volume``) that no domain uses.

    A volume that is gone already is success. A volume that is still being imported in
    this provider, or that is a disk (or a backing file) of any defined domain, is
    refused with FailedPrecondition: deleting it would destroy a VM's data.
    """
    ref = names.parse_volume_ref(disk_id, "disk_id")
    if in_flight.busy(ref.pool, ref.name):
        raise errors.FailedPrecondition(f"volume {ref} is being imported; cancel that first")
    vol = client.find_volume(ref.pool, ref.name)
    if vol is None:
        log.info("disk_already_gone", disk_id=str(ref))
        return
    for record in client.list_domains():
        for disk in domxml.parse_domain(record.xml).disks:
            if vol.path in (disk.path, *disk.backing):
                raise errors.FailedPrecondition(
                    f"volume {ref} is attached to VM {record.name!r} ({record.uuid}); "
                    "delete the VM or detach the disk first"
                )
    client.delete_volume(vol.key or vol.path)
    log.info("disk_deleted", disk_id=str(ref))
