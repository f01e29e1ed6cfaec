"""Volumes <-> local scratch files, always through libvirt storage streams.

ExportDisk and ImportDisk never open a hypervisor file by path: bytes travel through
``virStorageVolDownload`` / ``virStorageVolUpload`` with sparse streams
(``LibvirtClient.download_volume`` / ``upload_volume``), so the same code serves
``qemu:///system`` and remote ``qemu+ssh://`` / ``qemu+tls://`` hosts, and holes are
never sent as bytes.

* ``fetch_image`` copies a volume into a scratch file, keeping holes as holes (the
  copy costs only the allocated data), with its backing chain when it has one (every
  layer is fetched the same way, and the copies are relinked to each other with
  ``qemu-img rebase -u``: the pipeline then flattens the chain while converting).
  The chain is followed only through formats the image headers state, never through
  a format libvirt or qemu-img probed: a raw disk whose guest wrote a qcow2 header
  must not make us read a backing file of the guest's choosing.
* ``file_chunks`` feeds a local image to ``upload_volume`` (holes as ``Hole``).
* ``volume_content_digest`` reads a volume back and computes its content digest.

Scratch: every file goes into one ``Scratch`` (removed with everything in it on every
exit path). Before a volume is fetched its allocation is checked against the scratch
limit and the free space, and the file grows through ``Scratch.allocate``, so a copy
that outgrows either stops with ``OutOfSpace`` as soon as it does.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator

from providers.common import digest, qemu_img
from providers.common.scratch import Scratch
from providers.common.sparsefile import SparseWriter, iter_file
from providers.libvirt import volxml
from providers.libvirt.client import Hole, LibvirtClient
from virtrigaud import errors
from virtrigaud.logging import get_logger

log = get_logger("virtrigaud.libvirt")

MAX_CHAIN = 16  # backing layers followed at most
Progress = Callable[[int, int], None]  # (done, total) of the current stage


def check_room(scratch: Scratch, nbytes: int, purpose: str) -> None:
    """OutOfSpace now if ``nbytes`` would not fit the scratch limit or free space."""
    scratch.reserve(nbytes, purpose)
    scratch.release(nbytes)


def stream_length(vol: volxml.VolumeXml) -> int:
    """Bytes a download stream of ``vol`` carries (holes included), best known."""
    return vol.physical or vol.capacity


class _StageCounter:
    """Counts streamed bytes (data and holes) into a stage's progress."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress = progress
        self.done = 0
        self.total = total

    def add(self, count: int) -> None:
        self.done += count
        if self.progress is not None:
            self.progress(self.done, max(self.total, self.done))


def download_to_file(
    client: LibvirtClient,
    vol: volxml.VolumeXml,
    path: str,
    scratch: Scratch,
    *,
    counter: _StageCounter | None = None,
    cancel: threading.Event | None = None,
) -> None:
    """Write volume ``vol`` into the new sparse file ``path`` (inside ``scratch``)."""
    check_room(scratch, vol.allocation, f"a copy of volume {vol.name!r}")
    writer = SparseWriter(path, on_allocate=scratch.allocate)

    def data(chunk: bytes) -> None:
        writer.write(chunk)
        if counter is not None:
            counter.add(len(chunk))

    def hole(length: int) -> None:
        writer.size += length  # nothing written: the file keeps a hole there
        if counter is not None:
            counter.add(length)

    try:
        client.download_volume(vol.key or vol.path, data, 0, 0, cancel, hole)
        writer.close()
    except BaseException:
        writer.abort()
        raise


def fetch_image(
    client: LibvirtClient,
    vol: volxml.VolumeXml,
    fmt: str,
    scratch: Scratch,
    *,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> str:
    """A local copy of image ``vol`` of format ``fmt`` (and of its backing chain).

    ``fmt`` must be trusted (the disk's ``<driver type>``); the formats of the layers
    below come from the image headers. Returns the path of the top copy.
    """
    qemu_img.validate_format(fmt)
    counter = _StageCounter(progress, stream_length(vol))
    top = local = scratch.file(f"layer0.{fmt}")
    seen = {vol.path}
    for depth in range(MAX_CHAIN + 1):
        download_to_file(client, vol, local, scratch, counter=counter, cancel=cancel)
        if fmt == "raw":
            return top
        header = qemu_img.info(local, fmt, backing_chain=False)
        _check_single_file(header, local, vol)
        if not header.backing_filename:
            return top
        if depth == MAX_CHAIN:
            raise errors.FailedPrecondition(
                f"volume {vol.name!r}: backing chain longer than {MAX_CHAIN} layers"
            )
        vol, fmt = _backing_volume(client, vol, header.backing_format)
        if vol.path in seen:
            raise errors.FailedPrecondition(f"volume {vol.name!r}: the backing chain loops")
        seen.add(vol.path)
        counter.total += stream_length(vol)
        lower = scratch.file(f"layer{depth + 1}.{fmt}")
        qemu_img.rebase_unsafe(local, header.format, lower, fmt)
        local = lower
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def _check_single_file(header: qemu_img.ImageInfo, local: str, vol: volxml.VolumeXml) -> None:
    """Refuse images whose data lives in other host files than the volume (and its
    backing chain): a qcow2 external data file, vmdk extents in other files."""
    if header.data_file or any(
        os.path.abspath(extent.filename) != local for extent in header.extents
    ):
        raise errors.Unsupported(
            f"volume {vol.name!r} keeps data in other files (external data file or "
            "extents); only single-file images can be read through a volume stream"
        )


def _backing_volume(
    client: LibvirtClient, vol: volxml.VolumeXml, backing_format: str | None
) -> tuple[volxml.VolumeXml, str]:
    """The volume below ``vol`` and its format as ``vol``'s header states it."""
    if not backing_format or backing_format not in qemu_img.FORMATS:
        raise errors.FailedPrecondition(
            f"volume {vol.name!r} has a backing file without a stated format "
            f"({backing_format or 'none'}); refusing to probe it"
        )
    if not vol.backing_path or not vol.backing_path.startswith("/"):
        raise errors.FailedPrecondition(
            f"volume {vol.name!r} has a backing file libvirt cannot resolve to a volume"
        )
    try:
        _pool, below = client.volume_by_key(vol.backing_path)
    except errors.NotFound as exc:
        raise errors.FailedPrecondition(
            f"the backing file {vol.backing_path} of volume {vol.name!r} is in no storage "
            "pool; it cannot be read through a volume stream"
        ) from exc
    return below, backing_format


def file_chunks(
    path: str, *, progress: Progress | None = None, cancel: threading.Event | None = None
) -> Iterator[bytes | Hole]:
    """The bytes of a local image for ``upload_volume``; holes become ``Hole``."""
    total = os.path.getsize(path)
    done = 0
    for piece in iter_file(path, cancel=cancel):
        yield Hole(len(piece.data)) if piece.hole else piece.data
        done += len(piece.data)
        if progress is not None:
            progress(done, total)


def volume_content_digest(
    client: LibvirtClient,
    vol: volxml.VolumeXml,
    fmt: str,
    scratch: Scratch,
    *,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> str:
    """Content digest of the guest-visible data of ``vol`` (read through a stream).

    A raw volume is hashed as it streams (holes are zeros never read); any other
    format is fetched into scratch and digested there.
    """
    if fmt == "raw":
        hasher = digest.ContentHasher(vol.capacity)
        counter = _StageCounter(progress, stream_length(vol))

        def data(chunk: bytes) -> None:
            hasher.update(chunk)
            counter.add(len(chunk))

        def hole(length: int) -> None:
            hasher.update_zeros(length)
            counter.add(length)

        client.download_volume(vol.key or vol.path, data, 0, 0, cancel, hole)
        if hasher.size > vol.capacity:
            raise errors.ChecksumMismatch(
                f"volume {vol.name!r} streamed {hasher.size} bytes, more than its "
                f"capacity {vol.capacity}"
            )
        hasher.update_zeros(vol.capacity - hasher.size)
        return hasher.hexdigest()
    qemu_img.validate_format(fmt)
    local = scratch.file(f"verify.{fmt}")
    counter = _StageCounter(progress, stream_length(vol))
    download_to_file(client, vol, local, scratch, counter=counter, cancel=cancel)
    try:
        if qemu_img.info(local, fmt, backing_chain=False).backing_filename:
            raise errors.InternalError(f"volume {vol.name!r} unexpectedly has a backing file")
        return digest.content_digest(local, fmt, cancel=cancel, scratch_dir=scratch.path)
    finally:
        os.unlink(local)
