"""The disk side of a transfer: image -> (convert) -> hash -> storage writer, and back.

``export_image`` turns a local image into the bytes of one storage object and pushes
them into a ``Sink`` (``write``/``commit``/``abort``: the storage writers' shape);
``import_image`` consumes an iterable of byte chunks (the storage readers' shape) into
a local image. Both compute the transport digest (SHA256 of the object bytes) and the
content digest (``digest`` module) on the way, report progress as ``(bytes_done,
bytes_total)`` per stage (``on_stage`` names the stage) and check a cancellation event
between chunks.

Why conversion happens where it does
------------------------------------
qemu-img 7.2 reads and writes only seekable regular files: ``convert`` to
``/dev/stdout`` fails ("Could not resize file"), a FIFO or ``/dev/stdin`` as input is
refused ("'file' driver requires ... to be a regular file"), ``qemu-img dd`` to a pipe
fails the same way. So a format other than raw can never be produced or consumed as a
stream; the only question is where its seekable file lives.

Export (source image ``S`` on the provider host -> object of format ``T``):

==================  ==========================================  ====================================
S \\ T              T = raw                                     T = qcow2, vmdk, vdi, vpc, vhdx
==================  ==========================================  ====================================
raw                 streamed: the file is read sparse-aware     T = vmdk (monolithicSparse) or
                    (holes become zeros without a read) and     qcow2: written by us in the stream
                    sent; content digest in the same pass;      (``streamed``): metadata first, then
                    no scratch.                                 the data clusters; no scratch.
                                                                Other T: converted before upload
                                                                into scratch, then the file is
                                                                streamed (T is written with random
                                                                access).
qcow2, vmdk, vdi,   converted before upload into a sparse raw   T == S and the image is
vpc, vhdx           scratch file (scratch <= allocated data),   self-contained (no backing chain,
                    then streamed as for a raw source.          no internal snapshot, not dirty,
                                                                one-file vmdk, no change of
                                                                subformat/compression asked):
                                                                streamed as is, no scratch.
                                                                T = vmdk (monolithicSparse) or
                                                                qcow2 (uncompressed) and S readable
                                                                directly (not compressed, not vhdx;
                                                                a backing chain is flattened):
                                                                streamed as for a raw source.
                                                                Otherwise converted before upload
                                                                into scratch (flattens a chain).
==================  ==========================================  ====================================

Objects are single files: a vmdk object is monolithicSparse (default) or
streamOptimized, never monolithicFlat. The content digest of an export is computed from
the source, in a thread running alongside the conversion/upload (raw objects and streamed
vmdk/qcow2 objects: in the same pass as the upload); sources that cannot be read
directly (compressed qcow2, streamOptimized vmdk, vhdx) are digested from the converted
scratch file when that one can, else through the digest module's raw-copy fallback.
vmdk and qcow2 are the object formats the streamed path serves: the native formats of
vSphere and of libvirt/Proxmox, which the manager picks for the object.

Import (object of format ``S`` -> destination image of format ``T``):

=========================  =================================================================
S -> T                     where and why
=========================  =================================================================
S == T (no subformat or    streamed straight into the destination (a staging name in its
compression asked)         directory, renamed at the end); zero blocks become holes; no
                           scratch. The manager should pick T = the target's native format
                           so imports take this row.
vmdk (monolithicSparse)    decoded while it arrives and written straight into the
-> qcow2 or raw;           destination (``streamed``: our qcow2 writer / raw in place), no
raw -> qcow2 (size known)  scratch, no qemu-img convert; the content digest is computed from
                           the decoded data. A vmdk that cannot be decoded in the stream
                           (streamOptimized, metadata after the grains, ...) is found out
                           from its first bytes and falls back to the rows below.
raw -> any other T         streamed into a sparse raw scratch file (zero blocks are never
                           written, content digest in the same pass), converted after the
                           download (qemu-img cannot read a stream).
other S -> T != S          the object is downloaded whole into scratch (qemu-img needs
                           random access to its metadata), verified, checked, then converted
                           after the download.
=========================  =================================================================

Every received object is verified against the expected SHA256 before anything else is
done with it, then refused if it refers to any other file (backing file, external data
file, a vmdk extent elsewhere: a crafted object could otherwise pull host files into the
disk) or if ``qemu-img check`` finds corruption. The content digest of the result is
established from the written image and compared with the expected one: streamed into
place, the image is hashed (a raw stream: while it arrives); converted, the written
image is read back and compared byte for byte with the received object, whose digest
was computed meanwhile (while qemu-img converted, or a raw object's while it arrived)
-- equal bytes, equal digest, and a memory compare costs a fraction of a SHA256 pass.
When either image cannot be read directly (compressed clusters, vhdx), the written
image is hashed and its digest compared with the object's. A streamed import hashes the
decoded data as it writes it, then ``qemu-img check`` must find the written image clean
and ``qemu-img map`` must place every range exactly where it was written (``streamed``).
A streamed object is never opened by qemu-img: our decoder only takes grains from it,
so it cannot refer to other files. A failure at any point
leaves no output file behind, and scratch is removed on every exit path.

Scratch budget: before qemu-img writes a file into scratch, the worst case is reserved
(export: the source's non-zero ranges rounded up to the target's allocation unit plus
metadata; import: the object size when known, else growing as it arrives); reservations
beyond ``scratch_limit`` or the free space are refused with ``OutOfSpace``.

Cost: every digest is one pass, none is skipped
-----------------------------------------------
SHA256 is the largest CPU cost of a transfer, so no byte is hashed twice for the same
digest. A storage ``Writer`` hashes everything written to it and reports the digest
from ``commit()``; a storage ``Reader`` opened at offset 0 hashes everything it yields;
the pipeline takes those digests and only hashes a stream itself when the sink or
source is anything else. On import the chunks are written by a second thread (at most
``_WRITE_BEHIND_CHUNKS`` waiting), so the receiving thread's SHA256 and the writes
overlap; the scratch copy of an object is not fsynced (it is deleted after the
conversion, a crash discards it anyway; a destination streamed into place is). The
written image is hashed or compared by up to ``_VERIFY_THREADS`` threads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import queue
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from storage.base import ObjectInfo, Reader, Writer
from virtrigaud.errors import (
    AlreadyExists,
    Cancelled,
    ChecksumMismatch,
    InternalError,
    InvalidArgument,
    NotFound,
    TransientError,
)

from . import digest, qemu_img, streamed
from .digest import ContentHasher, DataLayout, TransportHasher
from .qemu_img import CancelToken, ImageInfo
from .scratch import MIB, Scratch
from .sparsefile import SparseWriter, iter_file, iter_file_into, os_error

ByteProgress = Callable[[int, int], None]
StageFn = Callable[[str], None]

STAGE_CONVERTING = "converting"
STAGE_UPLOADING = "uploading"
STAGE_DOWNLOADING = "downloading"
STAGE_VERIFYING = "verifying"

SINGLE_FILE_VMDK = frozenset({"monolithicSparse", "streamOptimized"})
# Allocation unit of each output format (vhdx: the largest default block size).
_GRANULE = {
    "raw": 4096,
    "qcow2": 64 * 1024,
    "vmdk": 64 * 1024,
    "vdi": MIB,
    "vpc": 2 * MIB,
    "vhdx": 32 * MIB,
}
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# Threads hashing or comparing the written image at the end of an import (the
# only work left at that point, so every core may take part).
_VERIFY_THREADS = max(1, min(4, _usable_cpus()))
_UPLOAD_READ = 4 * MIB  # bytes read from the file per piece of an upload
_WRITE_BEHIND_CHUNKS = 8  # received chunks (1 MiB each by default) waiting to be written


class Sink(Protocol):
    """Where an exported object goes (a storage writer has this shape)."""

    def write(self, data: bytes) -> object: ...

    def commit(self) -> object: ...

    def abort(self) -> object: ...


@dataclass(frozen=True)
class ExportOutcome:
    format: str  # the object's format
    subformat: str | None  # vmdk create type of the object
    size: int  # object bytes written to the sink
    sha256: str  # transport digest
    content_sha256: str  # content digest of the source
    virtual_size: int
    conversion: str  # "none" (source streamed as is), "raw-stream", "scratch"
    scratch_reserved: int  # peak scratch reservation in bytes


@dataclass(frozen=True)
class ImportOutcome:
    path: str
    format: str
    size: int  # object bytes received
    sha256: str
    content_sha256: str  # content digest of the written image
    virtual_size: int
    conversion: str  # "none" (streamed into place) or "scratch"
    scratch_reserved: int


@dataclass
class _Context:
    progress: ByteProgress | None
    on_stage: StageFn | None
    cancel: CancelToken

    def stage(self, name: str) -> None:
        if self.on_stage is not None:
            self.on_stage(name)

    def report(self, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(done, total)

    def check(self) -> None:
        if self.cancel.is_set():
            raise Cancelled("transfer cancelled")

    def convert_progress(self, size: int) -> Callable[[float], None]:
        return lambda fraction: self.report(int(fraction * size), size)


class _Transport(Protocol):
    """Size and SHA256 of the object bytes (TransportHasher, or _CountOnly)."""

    size: int

    def update(self, data: bytes | memoryview) -> None: ...

    def hexdigest(self) -> str: ...


class _CountOnly:
    """Counts object bytes whose SHA256 the storage reader or writer computes itself.

    A storage Writer, and a storage Reader opened at offset 0, hash every byte that
    passes through them (``storage.base``); the pipeline takes that digest instead of
    computing the same one a second time. ``digest`` returns it once the stream ended;
    without it (export) ``hexdigest`` is empty until ``export_image`` fills in the
    digest the writer's ``commit`` reports.
    """

    def __init__(self, digest: Callable[[], str] | None = None) -> None:
        self.size = 0
        self._digest = digest

    def update(self, data: bytes | memoryview) -> None:
        self.size += len(data)

    def hexdigest(self) -> str:
        return self._digest() if self._digest is not None else ""


def _source_transport(source: Iterable[bytes]) -> _Transport:
    """Who computes the transport digest of an import's source stream."""
    if not (isinstance(source, Reader) and source.position == 0 and source.sha256 is not None):
        return TransportHasher()
    reader = source

    def digest() -> str:
        # The reader hashed exactly the bytes it yielded, i.e. what was received.
        sha = reader.sha256
        if sha is None or reader.position != counter.size:
            raise InternalError("the storage reader's digest does not cover the received bytes")
        return sha

    counter = _CountOnly(digest)
    return counter


def _committed_sha256(committed: object, outcome: ExportOutcome) -> str:
    if (
        not isinstance(committed, ObjectInfo)
        or committed.sha256 is None
        or committed.size != outcome.size
    ):
        raise InternalError(f"the storage writer did not report the digest of {outcome.size} bytes")
    return committed.sha256


# ---------------------------------------------------------------- export


def export_image(
    src_path: str | os.PathLike[str],
    src_format: str,
    target_format: str,
    sink: Sink,
    *,
    subformat: str | None = None,
    compress: bool = False,
    scratch_dir: str | os.PathLike[str] | None = None,
    scratch_limit: int | None = None,
    progress: ByteProgress | None = None,
    on_stage: StageFn | None = None,
    cancel: CancelToken | None = None,
    force_share: bool = False,
) -> ExportOutcome:
    """Write ``src_path`` as one object of ``target_format`` into ``sink``.

    The sink is committed on success and aborted on any failure (cancellation included),
    except that a sink declaring ``resumable = True`` is left open on a TransientError,
    so that its owner can detach it and keep the uploaded parts for a resumed export.
    """
    _check_object_format(target_format, subformat, compress)
    qemu_img.validate_format(src_format)
    ctx = _Context(progress, on_stage, cancel or threading.Event())
    # A storage Writer hashes every byte written to it and returns that digest from
    # commit(): hashing the object here too would be a second SHA256 pass for nothing.
    sink_hashes = isinstance(sink, Writer)
    try:
        with Scratch(scratch_dir, limit=scratch_limit) as scratch:
            outcome = _export(
                qemu_img.safe_path(src_path),
                src_format,
                target_format,
                sink,
                subformat=subformat,
                compress=compress,
                scratch=scratch,
                ctx=ctx,
                force_share=force_share,
                transport=_CountOnly() if sink_hashes else TransportHasher(),
            )
        committed = sink.commit()
        if sink_hashes:
            outcome = dataclasses.replace(outcome, sha256=_committed_sha256(committed, outcome))
    except BaseException as exc:
        if not (isinstance(exc, TransientError) and getattr(sink, "resumable", False)):
            with contextlib.suppress(Exception):
                sink.abort()
        if isinstance(exc, OSError):
            raise os_error(exc) from exc
        raise
    return outcome


def _export(
    src: str,
    src_format: str,
    target: str,
    sink: Sink,
    *,
    subformat: str | None,
    compress: bool,
    scratch: Scratch,
    ctx: _Context,
    force_share: bool,
    transport: _Transport,
) -> ExportOutcome:
    layout = digest.data_layout(src, src_format, force_share=force_share)
    if target == "raw":
        return _export_raw(layout, sink, scratch, ctx, force_share, transport=transport)
    passthrough = _can_pass_through(layout.info, target, subformat, compress)
    if (
        not passthrough
        and subformat in streamed.STREAMED_EXPORTS.get(target, ())
        and not compress
        and layout.direct
    ):
        return _export_streamed(layout, target, sink, ctx, transport)
    with _Background(ctx.cancel) as background:
        if passthrough:
            obj, conversion = src, "none"
            background.start(_digest_job(layout, scratch, force_share))
        else:
            obj, conversion = scratch.file(f"export.{target}"), "scratch"
            scratch.reserve(_output_bound(layout, target, subformat), f"the {target} copy")
            if layout.direct:
                background.start(_digest_job(layout, scratch, force_share))
            ctx.stage(STAGE_CONVERTING)
            qemu_img.convert(
                src,
                obj,
                src_format=src_format,
                dst_format=target,
                subformat=subformat,
                compress=compress,
                progress=ctx.convert_progress(layout.virtual_size),
                cancel=ctx.cancel,
                force_share=force_share,
            )
            if not layout.direct:
                converted = digest.data_layout(obj, target)
                background.start(_digest_job(converted, scratch, False))
        _upload_file(obj, sink, None, ctx, transport)
        content = background.result()
    obj_info = layout.info if passthrough else qemu_img.info(obj, target, backing_chain=False)
    return ExportOutcome(
        format=target,
        subformat=obj_info.create_type,
        size=transport.size,
        sha256=transport.hexdigest(),
        content_sha256=content,
        virtual_size=layout.virtual_size,
        conversion=conversion,
        scratch_reserved=scratch.peak_reserved,
    )


def _export_streamed(
    layout: DataLayout, target: str, sink: Sink, ctx: _Context, transport: _Transport
) -> ExportOutcome:
    """The object is produced while it is sent (``streamed``): no conversion, no scratch."""
    ctx.stage(STAGE_UPLOADING)
    writer = sink if isinstance(sink, Writer) else None

    def write(piece: memoryview) -> None:
        if writer is not None:
            writer.write(piece)  # storage writers copy what they keep
        else:
            sink.write(bytes(piece))
        transport.update(piece)

    size, content = streamed.export_layout(
        layout, target, write, cancel=ctx.cancel, report=ctx.report
    )
    ctx.check()
    return ExportOutcome(
        format=target,
        subformat="monolithicSparse" if target == "vmdk" else None,
        size=size,
        sha256=transport.hexdigest(),
        content_sha256=content,
        virtual_size=layout.virtual_size,
        conversion="stream",
        scratch_reserved=0,
    )


def _export_raw(
    layout: DataLayout,
    sink: Sink,
    scratch: Scratch,
    ctx: _Context,
    force_share: bool,
    *,
    transport: _Transport,
) -> ExportOutcome:
    raw = layout.path
    conversion = "raw-stream"
    if layout.info.format != "raw":
        raw, conversion = scratch.file("export.raw"), "scratch"
        scratch.reserve(_output_bound(layout, "raw", None), "the raw copy")
        ctx.stage(STAGE_CONVERTING)
        qemu_img.convert(
            layout.path,
            raw,
            src_format=layout.info.format,
            dst_format="raw",
            progress=ctx.convert_progress(layout.virtual_size),
            cancel=ctx.cancel,
            force_share=force_share,
        )
    content = ContentHasher(layout.virtual_size)
    _upload_file(raw, sink, content, ctx, transport)
    content.update_zeros(layout.virtual_size - transport.size)  # sector padding, if any
    return ExportOutcome(
        format="raw",
        subformat=None,
        size=transport.size,
        sha256=transport.hexdigest(),
        content_sha256=content.hexdigest(),
        virtual_size=layout.virtual_size,
        conversion=conversion,
        scratch_reserved=scratch.peak_reserved,
    )


def _upload_file(
    path: str, sink: Sink, content: ContentHasher | None, ctx: _Context, transport: _Transport
) -> None:
    ctx.stage(STAGE_UPLOADING)
    total = os.path.getsize(path)
    ctx.report(0, total)
    pieces: Iterable[tuple[bytes | memoryview, bool]]
    writer = sink if isinstance(sink, Writer) else None
    if writer is not None:
        # Storage writers copy what they keep, so one buffer serves every read.
        pieces = iter_file_into(path, bytearray(_UPLOAD_READ), cancel=ctx.cancel)
    else:
        pieces = ((p.data, p.hole) for p in iter_file(path, cancel=ctx.cancel))
    for data, hole in pieces:
        if writer is not None:
            writer.write(data)
        else:
            sink.write(bytes(data))  # already bytes: no copy
        transport.update(data)
        if content is not None:
            if hole:
                content.update_zeros(len(data))
            else:
                content.update(data)
        ctx.report(transport.size, total)
    ctx.check()


def _can_pass_through(info: ImageInfo, target: str, subformat: str | None, compress: bool) -> bool:
    if info.format != target or compress or info.snapshots or info.dirty:
        return False
    if not _self_contained(info, info.filename):
        return False
    if target == "vmdk":
        return info.create_type in SINGLE_FILE_VMDK and subformat in (None, info.create_type)
    return subformat is None


def _output_bound(layout: DataLayout, target: str, subformat: str | None) -> int:
    """Worst-case bytes qemu-img allocates writing ``layout``'s data as ``target``."""
    size = layout.virtual_size
    metadata = size // 4096 + 16 * MIB
    if subformat == "fixed":
        return size + metadata
    granule = _GRANULE[target]
    data = 0
    for extent in layout.extents:
        if not extent.zero:
            start = extent.start // granule * granule
            end = -(-extent.end // granule) * granule
            data += end - start
    return min(data, -(-size // granule) * granule) + metadata


def _digest_job(
    layout: DataLayout, scratch: Scratch, force_share: bool, threads: int = 1
) -> Callable[[CancelToken], str]:
    def job(token: CancelToken) -> str:
        remaining = None if scratch.limit is None else max(scratch.limit - scratch.reserved, 0)
        return digest.layout_digest(
            layout,
            cancel=token,
            scratch_dir=scratch.path,
            scratch_limit=remaining,
            force_share=force_share,
            threads=threads,
        )

    return job


class _AnyOf:
    def __init__(self, *tokens: CancelToken) -> None:
        self._tokens = tokens

    def is_set(self) -> bool:
        return any(token.is_set() for token in self._tokens)


class _Background:
    """One function in a thread beside the transfer; stopped if the transfer fails."""

    def __init__(self, cancel: CancelToken) -> None:
        self._stop = threading.Event()
        self._token = _AnyOf(cancel, self._stop)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="content-digest")
        self._future: Future[str] | None = None

    def start(self, job: Callable[[CancelToken], str]) -> None:
        self._future = self._pool.submit(job, self._token)

    def result(self) -> str:
        assert self._future is not None, "no background job started"
        return self._future.result()

    def __enter__(self) -> _Background:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is not None:
            self._stop.set()
        self._pool.shutdown(wait=True)


# ---------------------------------------------------------------- import


def import_image(
    source: Iterable[bytes],
    src_format: str,
    target_format: str,
    dest_path: str | os.PathLike[str],
    *,
    expected_sha256: str,
    expected_content_sha256: str | None = None,
    size: int | None = None,
    subformat: str | None = None,
    compress: bool = False,
    scratch_dir: str | os.PathLike[str] | None = None,
    scratch_limit: int | None = None,
    progress: ByteProgress | None = None,
    on_stage: StageFn | None = None,
    cancel: CancelToken | None = None,
    durable: bool = True,
) -> ImportOutcome:
    """Write the object streamed by ``source`` as image ``dest_path`` of ``target_format``.

    ``size`` (the object's length, when storage knows it) bounds scratch up front and
    detects a short or long stream; without it the download stage reports
    ``(bytes_received, 0)``. ``dest_path`` must not exist. On any failure, nothing is
    left at ``dest_path`` and scratch is empty. The written files are mode 0600.
    ``durable``: the image is on disk (fsync) before it is published; a caller that
    copies the image elsewhere right away (every provider: into a pool, a node, a
    datastore) passes False and spares the flush -- a crash loses the copy either way.
    """
    qemu_img.validate_format(src_format)
    qemu_img.validate_format(target_format, subformat)
    if compress and target_format != "qcow2":
        raise InvalidArgument("compress applies to a qcow2 target only")
    _check_hex("expected_sha256", expected_sha256)
    if expected_content_sha256 is not None:
        _check_hex("expected_content_sha256", expected_content_sha256)
    dest = qemu_img.safe_path(dest_path)
    parent = os.path.dirname(dest)
    if not os.path.isdir(parent):
        raise NotFound(f"destination directory {parent} does not exist")
    if os.path.lexists(dest):
        raise AlreadyExists(f"destination {dest} already exists")
    ctx = _Context(progress, on_stage, cancel or threading.Event())
    request = _ImportRequest(
        src_format,
        target_format,
        subformat,
        compress,
        size,
        expected_sha256,
        expected_content_sha256,
        durable,
    )
    try:
        with Scratch(scratch_dir, limit=scratch_limit) as scratch:
            outcome = _import_staged(source, request, dest, scratch, ctx)
    except OSError as exc:
        raise os_error(exc) from exc
    finally:
        close = getattr(source, "close", None)
        if callable(close):
            with contextlib.suppress(Exception):
                close()
    return outcome


def _import_staged(
    source: Iterable[bytes], req: _ImportRequest, dest: str, scratch: Scratch, ctx: _Context
) -> ImportOutcome:
    """Build the image in a staging directory beside ``dest``; publish it when verified."""
    parent, name = os.path.split(dest)
    staging = tempfile.mkdtemp(prefix=f".{name}.import-", dir=parent)
    try:
        outcome = _import(source, req, os.path.join(staging, name), scratch, ctx)
        if req.expected_content_sha256 not in (None, outcome.content_sha256):
            raise ChecksumMismatch(
                f"content digest of {dest} is {outcome.content_sha256}, "
                f"expected {req.expected_content_sha256}"
            )
        _publish(staging, parent, name)
        return dataclasses.replace(outcome, path=dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@dataclass(frozen=True)
class _ImportRequest:
    src_format: str
    target_format: str
    subformat: str | None
    compress: bool
    size: int | None
    expected_sha256: str
    expected_content_sha256: str | None
    durable: bool = True

    @property
    def streamed(self) -> bool:
        """Decoded while it arrives, no scratch (``streamed``)."""
        return (
            self.target_format in streamed.STREAMED_IMPORTS.get(self.src_format, ())
            and self.subformat is None
            and not self.compress
        )

    @property
    def passthrough(self) -> bool:
        return (
            self.src_format == self.target_format and self.subformat is None and not self.compress
        )


def _import(
    source: Iterable[bytes], req: _ImportRequest, staged: str, scratch: Scratch, ctx: _Context
) -> ImportOutcome:
    transport = _source_transport(source)
    chunks = _chunks(source, ctx)
    prefix: list[bytes] = []
    if req.streamed:
        try:
            return _import_streamed(chunks, transport, req, staged, scratch=scratch, ctx=ctx)
        except streamed.NotStreamable as exc:
            # Nothing was written yet; ``consumed`` holds every byte received so far.
            prefix.append(exc.consumed)
    if req.passthrough:
        received = staged
    else:
        received = scratch.file(f"object.{req.src_format}")
        if req.size is not None:
            scratch.reserve(req.size, "the downloaded object")
    stream_content = ContentHasher() if req.src_format == "raw" else None
    _receive(
        itertools.chain(prefix, chunks),
        received,
        transport,
        counted=sum(map(len, prefix)),
        req=req,
        content=stream_content,
        scratch=scratch,
        ctx=ctx,
    )
    virtual = _validate_object(received, req.src_format).virtual_size
    if stream_content is not None:
        # A raw object is the virtual disk itself; qemu pads its last sector with zeros.
        stream_content.update_zeros(virtual - stream_content.size)
    from_stream = stream_content.hexdigest() if stream_content is not None else None
    if req.passthrough:
        ctx.stage(STAGE_VERIFYING)
        layout = digest.data_layout(staged, req.target_format)
        content = from_stream or _target_digest(layout, scratch, ctx)
        conversion = "none"
    else:
        layout, content = _convert_and_verify(
            received, staged, req, from_stream=from_stream, scratch=scratch, ctx=ctx
        )
        conversion = "scratch"
    return ImportOutcome(
        path=staged,
        format=req.target_format,
        size=transport.size,
        sha256=transport.hexdigest(),
        content_sha256=content,
        virtual_size=layout.virtual_size,
        conversion=conversion,
        scratch_reserved=scratch.peak_reserved,
    )


def _convert_and_verify(
    received: str,
    staged: str,
    req: _ImportRequest,
    *,
    from_stream: str | None,
    scratch: Scratch,
    ctx: _Context,
) -> tuple[DataLayout, str]:
    """Convert the verified object into ``staged``; return its layout and content digest.

    The written image is checked against the object whatever the path: either both
    are read and compared byte for byte, the object's content digest having been
    computed while qemu-img converted (a raw object's during the download), or --
    when either image cannot be read directly -- the written image is hashed and its
    digest compared with the object's, when that one is known.
    """
    source = digest.data_layout(received, req.src_format)
    with _Background(ctx.cancel) as background:
        if from_stream is None and source.direct:
            # qemu-img converts on one core, the object's digest runs on another (one
            # thread: a second one would take CPU from qemu-img, the critical path).
            background.start(_digest_job(source, scratch, False))
        ctx.stage(STAGE_CONVERTING)
        qemu_img.convert(
            received,
            staged,
            src_format=req.src_format,
            dst_format=req.target_format,
            subformat=req.subformat,
            compress=req.compress,
            progress=ctx.convert_progress(source.virtual_size),
            cancel=ctx.cancel,
        )
        from_source = from_stream or (background.result() if source.direct else None)
    if req.durable:  # qemu-img convert writes with cache=unsafe: it does not flush
        _fsync_files(os.path.dirname(staged))
    ctx.stage(STAGE_VERIFYING)
    layout = digest.data_layout(staged, req.target_format)
    if from_source is not None and layout.direct:
        offset = digest.first_difference(
            source, layout, progress=ctx.progress, cancel=ctx.cancel, threads=_VERIFY_THREADS
        )
        if offset is not None:
            raise ChecksumMismatch(
                f"the converted image differs from the received object at virtual offset "
                f"{offset} (or in size)"
            )
        content = from_source
    else:
        content = _target_digest(layout, scratch, ctx)
        if from_source is not None and content != from_source:
            raise ChecksumMismatch(
                f"converted image digest {content} differs from the received data {from_source}"
            )
    os.unlink(received)
    scratch.release(req.size or 0)
    scratch.release_stream()
    return layout, content


def _target_digest(layout: DataLayout, scratch: Scratch, ctx: _Context) -> str:
    remaining = None if scratch.limit is None else max(scratch.limit - scratch.reserved, 0)
    return digest.layout_digest(
        layout,
        progress=ctx.progress,
        cancel=ctx.cancel,
        scratch_dir=scratch.path,
        scratch_limit=remaining,
        threads=_VERIFY_THREADS,
    )


def _import_streamed(
    chunks: Iterator[bytes],
    transport: _Transport,
    req: _ImportRequest,
    staged: str,
    *,
    scratch: Scratch,
    ctx: _Context,
) -> ImportOutcome:
    """Decode the object while it arrives, straight into the destination (``streamed``).

    Chunks are decoded in the receiving thread until the destination exists (an object
    refused as not streamable is refused before that, with every byte received so far
    in ``NotStreamable.consumed`` for the scratch path); after that a second thread
    decodes and writes while this one receives and hashes.
    """
    ctx.stage(STAGE_DOWNLOADING)
    importer = streamed.StreamedImport(
        req.src_format, req.target_format, staged, size=req.size, durable=req.durable
    )
    behind: _WriteBehind | None = None
    try:
        for chunk in chunks:
            _count(transport, chunk, req)
            if behind is not None:
                behind.put(chunk)
            else:
                importer.feed(chunk)
                if importer.started:
                    behind = _WriteBehind(importer.feed)
            ctx.report(transport.size, req.size or 0)
        if behind is not None:
            behind.finish()
        _check_received(transport, req)
        ctx.stage(STAGE_VERIFYING)
        result = importer.finish()
    except streamed.NotStreamable as exc:
        if importer.started:
            importer.abort()
            raise InternalError(f"streamed import refused the object after writing: {exc}") from exc
        raise
    except BaseException:
        if behind is not None:
            behind.stop()
        importer.abort()
        raise
    content = result.content_sha256
    if content is None:
        content = _target_digest(digest.data_layout(staged, req.target_format), scratch, ctx)
    return ImportOutcome(
        path=staged,
        format=req.target_format,
        size=transport.size,
        sha256=transport.hexdigest(),
        content_sha256=content,
        virtual_size=result.virtual_size,
        conversion="stream",
        scratch_reserved=0,
    )


def _count(transport: _Transport, chunk: bytes, req: _ImportRequest) -> None:
    transport.update(chunk)
    if req.size is not None and transport.size > req.size:
        raise ChecksumMismatch(f"object is longer than the expected {req.size} bytes")


def _check_received(transport: _Transport, req: _ImportRequest) -> None:
    if req.size is not None and transport.size != req.size:
        raise ChecksumMismatch(f"object truncated: {transport.size} of {req.size} bytes received")
    if transport.hexdigest() != req.expected_sha256:
        raise ChecksumMismatch(
            f"object SHA256 is {transport.hexdigest()}, expected {req.expected_sha256}"
        )


def _receive(
    chunks: Iterable[bytes],
    path: str,
    transport: _Transport,
    *,
    counted: int,
    req: _ImportRequest,
    content: ContentHasher | None,
    scratch: Scratch,
    ctx: _Context,
) -> None:
    """Store the object's bytes in ``path``; the first ``counted`` bytes of ``chunks``
    were already counted (and hashed) by ``transport``."""
    ctx.stage(STAGE_DOWNLOADING)
    streamed_to_scratch = not req.passthrough and req.size is None
    writer = SparseWriter(
        path,
        on_allocate=scratch.allocate if streamed_to_scratch else None,
        # A scratch copy is worthless after a crash: no fsync.
        durable=req.passthrough and req.durable,
    )

    def consume(chunk: bytes) -> None:
        writer.write(chunk)
        if content is not None:
            content.update(chunk)

    behind = _WriteBehind(consume)
    try:
        for chunk in chunks:
            if counted > 0:
                counted -= len(chunk)
            else:
                _count(transport, chunk, req)
            behind.put(chunk)
            ctx.report(transport.size, req.size or 0)
        behind.finish()
        writer.close()
    except BaseException:
        behind.stop()
        writer.abort()
        raise
    _check_received(transport, req)


class _WriteBehind:
    """Writes received chunks (``consume``: store, hash, decode) on its own thread.

    The receiving thread -- which also hashes the stream, in the storage reader or here --
    hands every chunk over through a queue of at most ``_WRITE_BEHIND_CHUNKS`` chunks,
    so hashing and writing overlap while memory stays bounded. The first error of the
    writing thread (out of scratch space, a failed write) is raised in the receiving
    thread at its next ``put`` or at ``finish``; the writing thread keeps draining the
    queue meanwhile, so the receiving thread never blocks on a dead consumer.
    """

    def __init__(self, consume: Callable[[bytes], None]) -> None:
        self._consume = consume
        self._queue: queue.Queue[bytes | None] = queue.Queue(_WRITE_BEHIND_CHUNKS)
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = threading.Thread(
            target=self._run, name="import-write", daemon=True
        )
        self._thread.start()

    def put(self, chunk: bytes) -> None:
        self._raise_error()
        self._queue.put(chunk)

    def finish(self) -> None:
        """Wait until every chunk handed over is written; raise the first write error."""
        self.stop()
        self._raise_error()

    def stop(self) -> None:
        """Let the writing thread finish what it was handed, and wait for it (idempotent)."""
        if self._thread is not None:
            thread, self._thread = self._thread, None
            self._queue.put(None)
            thread.join()

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            if self._error is not None:
                continue  # drained unwritten: the receiving thread raises the error
            try:
                self._consume(chunk)
            except BaseException as exc:  # handed to the receiving thread
                self._error = exc

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error


def _chunks(source: Iterable[bytes], ctx: _Context) -> Iterator[bytes]:
    for chunk in source:
        ctx.check()
        if chunk:
            yield bytes(chunk)
    ctx.check()


def _validate_object(path: str, fmt: str) -> ImageInfo:
    """Refuse an object that refers to other files or that qemu-img finds corrupt."""
    info = qemu_img.info(path, fmt, backing_chain=False)
    if not _self_contained(info, path):
        raise InvalidArgument(
            f"the {fmt} object refers to other files (backing file, data file or extents "
            f"outside the object); refused"
        )
    if info.encrypted:
        raise InvalidArgument(f"the {fmt} object is encrypted; refused")
    if fmt != "raw":
        result = qemu_img.check(path, fmt)
        if result.supported and (result.corruptions or result.check_errors):
            raise InvalidArgument(
                f"qemu-img check: the {fmt} object has {result.corruptions} corruptions and "
                f"{result.check_errors} check errors"
            )
    return info


def _self_contained(info: ImageInfo, path: str) -> bool:
    if info.backing_filename or info.backing_chain or info.data_file:
        return False
    return all(os.path.abspath(extent.filename) == path for extent in info.extents)


def _fsync_files(directory: str) -> None:
    for name in os.listdir(directory):
        fd = os.open(os.path.join(directory, name), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _publish(staging: str, parent: str, main: str) -> None:
    """Move the staged files into ``parent``; the image itself (``main``) goes last,
    after any extent files it refers to."""
    names = sorted(os.listdir(staging), key=lambda n: (n == main, n))
    clashes = [n for n in names if os.path.lexists(os.path.join(parent, n))]
    if clashes:
        raise AlreadyExists(f"destination files already exist: {', '.join(clashes)}")
    moved: list[str] = []
    try:
        for name in names:
            os.chmod(os.path.join(staging, name), 0o600)  # guest data: owner only
            os.rename(os.path.join(staging, name), os.path.join(parent, name))
            moved.append(os.path.join(parent, name))
    except BaseException:
        for path in moved:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        raise
    fd = os.open(parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_object_format(target: str, subformat: str | None, compress: bool) -> None:
    qemu_img.validate_format(target, subformat)
    if target == "vmdk" and subformat is not None and subformat not in SINGLE_FILE_VMDK:
        raise InvalidArgument(
            f"a storage object is one file: vmdk subformat {subformat} writes several; "
            f"use one of {sorted(SINGLE_FILE_VMDK)}"
        )
    if compress and target != "qcow2":
        raise InvalidArgument("compress applies to qcow2 objects only")


def _check_hex(name: str, value: str) -> None:
    if not isinstance(value, str) or not _HEX64.match(value):
        raise InvalidArgument(f"{name} must be 64 lowercase hexadecimal characters")
