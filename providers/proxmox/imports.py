"""ImportDisk: one object in storage -> a verified image in the node's import location.

PVE creates VM disks from images with ``import-from=`` (CreateVM), which copies an
image into a new volume of any target storage (directory, LVM, ZFS, Ceph). So
ImportDisk puts the verified image where PVE imports from: the ``import`` directory
of a file storage whose content types include ``import`` (PVE 8.2+), as the volume
``<storage>:import/<name>.<format>``, and reports that volume id as ``disk_id``.

Steps (nothing is created on the node before the checks pass):

1. Checks: the target storage (``storage_hint``, else the ``storage`` option) exists
   (NotFound); its format decides the image format (``target_format`` if given; file
   storages: qcow2 -- the default -- or raw; block storages: raw); the import storage
   (``importStorage`` option, else the target storage) is a file storage with content
   ``import`` enabled on this node (FailedPrecondition saying what to enable); the
   volume name is safe and free (AlreadyExists, before any download); the source
   object exists and may be reached.
2. ``providers.common.transfer.import_from_storage`` downloads the object into the
   provider's scratch directory, verifies its SHA256 (ChecksumMismatch), refuses
   objects that refer to other files or that qemu-img finds corrupt, converts it to
   qcow2 (the wire format: only allocated data crosses to the node) and checks the
   expected content digest.
3. The qcow2 image is streamed over SSH into a hidden temporary file beside the final
   name (``dd conv=sparse``), its SHA256 is computed on the node and compared with the
   local image's (ChecksumMismatch). For a raw volume (block storage targets, or
   ``target_format`` RAW) it is converted on the node with qemu-img (zeros stay holes)
   and ``qemu-img compare`` must find the same data in both. The result is published
   under the final name with a hard link (atomic, never overwrites) and the temporary
   files removed. A record ``.<name>.virtrigaud.json`` beside it keeps the verified
   digests.

So a volume with the final name only ever appears complete; any failure or
cancellation removes the temporary file on the node and the provider's scratch.
A re-submitted import (after a provider restart) whose volume exists with the
expected content digest (per its record, and the file unchanged since) returns it
again; any other existing volume of that name is AlreadyExists.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
import uuid
from collections.abc import Iterable, Iterator

from providers.common import transfer
from providers.common.progress import StagedContext
from providers.common.scratch import MIB, Scratch
from providers.common.sparsefile import iter_file
from providers.proxmox import nodeops
from providers.proxmox.lifecycle import imported_volumes, sidecar
from providers.proxmox.site import FILE_STORAGE_TYPES, Site, content_dir
from providers.runtime.tasks import TaskContext
from virtrigaud import errors
from virtrigaud.formats import FORMAT_VALUES
from virtrigaud.logging import get_logger
from virtrigaud.provider.v1 import provider_pb2 as pb

log = get_logger("virtrigaud.proxmox")

STAGE_UPLOADING_NODE = "writing to the node"
STAGE_VERIFYING_NODE = "verifying on the node"
STAGE_CONVERTING_NODE = "converting on the node"
# What crosses the wire to the node: qcow2 carries only allocated data (a raw image
# would send every zero of its holes); a raw volume is converted on the node.
WIRE_FORMAT = "qcow2"
FILE_FORMATS = ("qcow2", "raw")
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class InFlight:
    """Import volumes being written by this provider (one import per name at a time)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._names: set[str] = set()

    @contextlib.contextmanager
    def claim(self, volid: str) -> Iterator[None]:
        with self._lock:
            if volid in self._names:
                raise errors.AlreadyExists(
                    f"target_volume_name: {volid} is being imported by another operation"
                )
            self._names.add(volid)
        try:
            yield
        finally:
            with self._lock:
                self._names.discard(volid)


def target_format(value: pb.DiskFormat, storage_type: str) -> str:
    file_storage = storage_type in FILE_STORAGE_TYPES
    if not value:
        return "qcow2" if file_storage else "raw"
    fmt = transfer.format_name(value)
    allowed = FILE_FORMATS if file_storage else ("raw",)
    if fmt not in allowed:
        raise errors.Unsupported(
            f"target_format: {storage_type} storage volumes are {' or '.join(allowed)}, not {fmt} "
            "(the import converts)"
        )
    return fmt


def volume_name(requested: str, fmt: str) -> str:
    name = requested.strip()
    for ext in (".qcow2", ".raw", ".img", ".vmdk"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    if not _SAFE.match(name):
        raise errors.InvalidArgument(
            f"target_volume_name: {requested!r} must be letters, digits, '.', '_' or '-' "
            "(at most 100, not starting with '.' or '-')"
        )
    return f"{name}.{fmt}"


def import_location(site: Site, storage: str) -> tuple[str, str]:
    """(import storage id, its import directory on the node) -- module docstring."""
    sid = site.settings.import_storage or storage
    field = "importStorage" if site.settings.import_storage else "storage_hint"
    config = site.storage_config(sid, field)
    content = str(config.get("content", "")).split(",")
    if str(config.get("type")) not in FILE_STORAGE_TYPES or "import" not in content:
        raise errors.FailedPrecondition(
            f"{field}: storage {sid!r} ({config.get('type')}) cannot hold disk images to import: "
            "use a file storage with the content type 'import' enabled (PVE 8.2+), or set "
            "the provider option importStorage to one"
        )
    if site.storage_status(sid) is None:
        raise errors.FailedPrecondition(
            f"{field}: storage {sid!r} is not enabled on node {site.node}"
        )
    return sid, content_dir(config, "import")


def import_disk(
    site: Site,
    request: pb.ImportDiskRequest,
    ctx: TaskContext,
    *,
    in_flight: InFlight,
    allowed_hosts: Iterable[str] = (),
) -> pb.ImportResult:
    allowed = tuple(allowed_hosts)
    ctx.set_stage("checking")
    storage = request.storage_hint or site.settings.default_storage
    storage_type = str(site.storage_config(storage).get("type", ""))
    fmt = target_format(request.target_format, storage_type)
    name = volume_name(request.target_volume_name, fmt)
    sid, directory = import_location(site, storage)
    volid = f"{sid}:import/{name}"
    final = f"{directory}/{name}"
    with in_flight.claim(volid):
        if nodeops.exists(site.access, final):
            return _already_imported(site, request, volid, final, fmt)
        backend, key = transfer.open_location(request.source, allowed)
        with backend:
            object_size = backend.stat(key).size
        staged = StagedContext(ctx)
        scratch = site.settings.scratch
        with Scratch(scratch.directory, limit=scratch.limit) as room:
            room.reserve(object_size + object_size // 4096 + 16 * MIB, "the imported image")
            image = room.file(f"image.{WIRE_FORMAT}")
            outcome = transfer.import_from_storage(
                request, image, WIRE_FORMAT, staged, allowed_hosts=allowed, scratch_dir=room.path
            )
            staged.check_cancelled()
            file_sha = _upload(site, image, fmt, (directory, name, final), staged)
        record = {
            "volid": volid,
            "format": fmt,
            "virtual_size": outcome.virtual_size,
            "sha256": outcome.sha256,
            "content_sha256": outcome.content_sha256,
            "file_sha256": file_sha,
        }
        try:
            nodeops.write_text(site.access, sidecar(final), json.dumps(record))
        except errors.VirtrigaudError as exc:
            log.warning("import_record_not_written", volume=volid, error=exc.message)
    log.info("disk_imported", volume=volid, format=fmt, size=outcome.virtual_size)
    return pb.ImportResult(
        disk_id=volid,
        path=final,
        format=FORMAT_VALUES[fmt],
        size_bytes=outcome.virtual_size,
        sha256=outcome.sha256,
        content_sha256=outcome.content_sha256,
    )


def _upload(
    site: Site, image: str, fmt: str, target: tuple[str, str, str], ctx: StagedContext
) -> str:
    """Put the verified ``WIRE_FORMAT`` image on the node as ``final`` in ``fmt``; the
    SHA256 of the published file (module docstring)."""
    directory, name, final = target
    node = site.access
    cancel = ctx.cancel_event
    ctx.set_stage(STAGE_UPLOADING_NODE)
    nodeops.mkdirs(node, directory)
    tag = uuid.uuid4().hex[:12]
    sent_file = f"{directory}/.{name}.part-{tag}.{WIRE_FORMAT}"
    published = sent_file if fmt == WIRE_FORMAT else f"{directory}/.{name}.part-{tag}"
    digest = hashlib.sha256()
    try:
        total = _size(image)

        def chunks() -> Iterator[bytes]:
            sent = 0
            for piece in iter_file(image, cancel=cancel):
                digest.update(piece.data)
                sent += len(piece.data)
                ctx.progress(sent, total)
                yield piece.data

        nodeops.receive_file(node, sent_file, chunks(), cancel)
        ctx.check_cancelled()
        ctx.set_stage(STAGE_VERIFYING_NODE)
        local = digest.hexdigest()
        remote = nodeops.sha256(node, sent_file, cancel)
        if remote != local:
            raise errors.ChecksumMismatch(
                f"the image written to the node has SHA256 {remote}, the verified one {local}"
            )
        file_sha = local
        if published != sent_file:
            ctx.set_stage(STAGE_CONVERTING_NODE)
            virtual = int(nodeops.image_info(node, sent_file, WIRE_FORMAT)["virtual-size"])
            nodeops.convert(
                node,
                sent_file,
                published,
                src_format=WIRE_FORMAT,
                dst_format=fmt,
                force_share=False,
                cancel=cancel,
                progress=lambda fraction: ctx.progress(int(fraction * virtual), virtual),
            )
            ctx.set_stage(STAGE_VERIFYING_NODE)
            nodeops.same_content(node, (sent_file, WIRE_FORMAT), (published, fmt), cancel)
            file_sha = nodeops.sha256(node, published, cancel)
        nodeops.link_no_clobber(node, published, final)
        return file_sha
    finally:
        try:
            nodeops.remove(node, *dict.fromkeys([sent_file, published]))
        except errors.VirtrigaudError as exc:
            log.warning("node_cleanup_failed", path=sent_file, error=exc.message)


def _size(path: str) -> int:
    return os.stat(path).st_size


def _already_imported(
    site: Site, request: pb.ImportDiskRequest, volid: str, final: str, fmt: str
) -> pb.ImportResult:
    """The result of an import a previous run already finished (module docstring)."""
    taken = errors.AlreadyExists(f"target_volume_name: {volid} already exists on node {site.node}")
    if not request.expected_content_sha256:
        raise taken
    text = nodeops.read_text(site.access, sidecar(final))
    try:
        record = json.loads(text) if text else None
    except ValueError:
        record = None
    if (
        not isinstance(record, dict)
        or record.get("content_sha256") != request.expected_content_sha256
        or record.get("format") != fmt
        or nodeops.sha256(site.access, final) != record.get("file_sha256")
    ):
        raise taken
    log.info("import_already_done", volume=volid)
    return pb.ImportResult(
        disk_id=volid,
        path=final,
        format=FORMAT_VALUES[fmt],
        size_bytes=int(record.get("virtual_size") or 0),
        sha256=str(record.get("sha256") or request.expected_sha256),
        content_sha256=str(record["content_sha256"]),
    )


def delete_disk(site: Site, disk_id: str, ctx: TaskContext) -> None:
    """Remove an import volume made by ImportDisk (missing = done; in use = refused)."""
    storage, sep, volname = disk_id.partition(":")
    if not sep or not volname.startswith("import/") or "/" in volname[len("import/") :]:
        raise errors.InvalidArgument(
            f"disk_id: {disk_id!r} is not an import volume (<storage>:import/<name>) made by "
            "ImportDisk"
        )
    name = volname[len("import/") :]
    if not _SAFE.match(name):
        raise errors.InvalidArgument(f"disk_id: {disk_id!r} has an unsafe name")
    ctx.set_stage("checking")
    try:
        config = site.storage_config(storage, "disk_id")
    except errors.NotFound:
        log.info("delete_disk_storage_gone", disk_id=disk_id)
        return
    path = f"{content_dir(config, 'import')}/{name}"
    for item in site.api.get(f"nodes/{site.node}/qemu"):
        vmid = str(item.get("vmid"))
        try:
            vm = dict(site.api.get(site.qemu(vmid, "config")))
        except (errors.NotFound, errors.FailedPrecondition):
            continue  # deleted meanwhile
        drives = [str(v).split(",")[0] for k, v in vm.items() if k != "description"]
        if disk_id in imported_volumes(vm) or disk_id in drives or path in drives:
            raise errors.FailedPrecondition(
                f"disk_id: {disk_id} is in use by VM {vmid} (created from it); delete the VM first"
            )
    ctx.set_stage("deleting")
    nodeops.remove(site.access, path, sidecar(path))
    log.info("disk_deleted", disk_id=disk_id)
