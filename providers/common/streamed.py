"""Format conversions done in the stream: no qemu-img run, no scratch file.

qemu-img can neither write nor read a pipe (``pipeline`` module docstring), so the
default way to change an image's format around a transfer is a scratch file converted
before the upload or after the download: the transfer waits for the conversion, and
scratch must hold a copy of the data. For the commonest pairs we write and read the
formats ourselves, in the same pass as the transfer:

- **export to a monolithicSparse vmdk or a qcow2 object** from a source whose data can
  be read directly (raw, uncompressed qcow2, sparse or flat vmdk, vdi, vpc, backing
  chains: ``DataLayout.direct``): the allocation map is known before any data is read,
  so the whole metadata goes first and the 64 KiB data units follow in guest order
  (``vmdkstream.SparseVmdkLayout``, ``qcow2stream.Qcow2Layout``). The source is read
  once, chunk by chunk, and every chunk feeds the content digest (in hashing threads)
  and the sink. The bytes depend only on the source, so a resumed upload can replay
  them.
- **import of a monolithicSparse vmdk or a raw object into qcow2 or raw**: the object is
  decoded as it arrives (``vmdkstream.SparseVmdkStreamReader``: metadata first, then the
  grains) and the guest data is written straight into the destination
  (``qcow2stream.Qcow2StreamWriter`` appends data clusters and writes the qcow2 metadata
  at the end; a raw destination is written in place, holes left for zeros). The content
  digest is computed from the decoded data while it is written.

Verification of a streamed import: every byte written was hashed into the content digest
on its way into the file; the written image is then checked by qemu itself -- ``qemu-img
check`` must find it clean (refcounts included: a wrong refcount would make a hypervisor
overwrite live data later) and ``qemu-img map`` must place every guest range exactly at
the host offset it was written to, and nothing else. Equal placement of hashed bytes is
the same proof as hashing the written image again, without the second pass.

Not streamable, and taken by the scratch path instead: a streamOptimized vmdk (and
anything else ``SparseVmdkStreamReader`` refuses as ``NotStreamable``, e.g. metadata
after the grains), a raw object of unknown size, and every other pair. A vmdk whose
grains are stored out of guest order is still streamed; its content digest is then
computed from the written image afterwards.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from virtrigaud.errors import Cancelled, ChecksumMismatch, InternalError

from . import qemu_img
from .digest import (
    CHUNK_SIZE,
    ChunkHashers,
    ContentHasher,
    ContentTree,
    DataLayout,
    FileRangeReader,
    fill_chunk,
)
from .qcow2stream import CLUSTER_SIZE, Qcow2Layout, Qcow2StreamWriter, map_matches
from .qemu_img import CancelToken
from .sparsefile import SparseWriter
from .vmdkstream import GRAIN_SIZE, NotStreamable, SparseVmdkLayout, SparseVmdkStreamReader

Report = Callable[[int, int], None]
_SECTOR = 512

# Export: object format -> subformats written in the stream (from a direct source).
STREAMED_EXPORTS = {"vmdk": (None, "monolithicSparse"), "qcow2": (None,)}
UNIT = GRAIN_SIZE  # a vmdk grain, a qcow2 cluster (both 64 KiB)
assert UNIT == CLUSTER_SIZE
# Import: object format -> destination formats written in the stream.
STREAMED_IMPORTS = {"vmdk": ("qcow2", "raw"), "raw": ("qcow2",)}

__all__ = [
    "STREAMED_EXPORTS",
    "STREAMED_IMPORTS",
    "NotStreamable",
    "StreamedImport",
    "export_layout",
]


# ---------------------------------------------------------------- export


class _ObjectLayout(Protocol):
    """A format written metadata first (SparseVmdkLayout, Qcow2Layout)."""

    @property
    def object_size(self) -> int: ...

    def iter_header(self) -> Iterator[bytes]: ...


def export_layout(
    layout: DataLayout,
    target_format: str,
    write: Callable[[memoryview], None],
    *,
    cancel: CancelToken,
    report: Report,
) -> tuple[int, str]:
    """Write ``layout``'s image as a ``target_format`` object (``STREAMED_EXPORTS``).

    Returns the object size and the content digest of the source. ``write`` must copy
    what it keeps (the buffers are reused).
    """
    if not layout.direct:
        raise InternalError("a streamed export needs a directly readable source")
    size = layout.virtual_size
    data = [e for e in layout.extents if not e.zero]
    target, units = _object_layout(target_format, size, [(e.start, e.end) for e in data])
    total = target.object_size
    sent = 0

    def emit(piece: memoryview) -> None:
        nonlocal sent
        write(piece)
        sent += len(piece)
        report(sent, total)

    for piece in target.iter_header():  # at most ~1 MiB at a time, whatever the disk size
        emit(memoryview(piece))
    per_chunk = CHUNK_SIZE // UNIT
    tree = ContentTree(size)
    u = first = 0
    # Two hashing threads: the content digest of a chunk runs while the next one is read
    # and sent (hashlib and preadv release the GIL).
    with FileRangeReader() as reader, ChunkHashers(tree, threads=2) as hashers:
        for start in range(0, size, CHUNK_SIZE):
            if cancel.is_set():
                raise Cancelled("transfer cancelled")
            end = min(start + CHUNK_SIZE, size)
            while first < len(data) and data[first].end <= start:
                first += 1
            if not (first < len(data) and data[first].start < end):
                hashers.add_zero_chunk(end - start)
                continue
            buffer = hashers.buffer()
            chunk = buffer[: end - start]
            fill_chunk(layout, reader, data, index=first, start=start, chunk=chunk)
            if end - start < CHUNK_SIZE:
                buffer[end - start :] = bytes(CHUNK_SIZE - (end - start))  # last unit's pad
            hashers.add_chunk(chunk)
            # This chunk's allocated units, each run of consecutive ones in one piece.
            base = start // UNIT
            while u < len(units) and units[u] < base + per_chunk:
                end_u = _run_end(units, u, base + per_chunk)
                emit(buffer[(units[u] - base) * UNIT : (units[end_u - 1] - base + 1) * UNIT])
                u = end_u
    if u != len(units) or sent != total:
        raise InternalError(f"streamed {target_format}: {sent} of {total} bytes, {u} units")
    return sent, tree.hexdigest()


def _object_layout(
    target_format: str, size: int, ranges: list[tuple[int, int]]
) -> tuple[_ObjectLayout, array[int]]:
    """The object's layout and its allocated 64 KiB units (guest indexes, ascending)."""
    if target_format == "vmdk":
        vmdk = SparseVmdkLayout(size, ranges)
        return vmdk, vmdk.grains
    if target_format == "qcow2":
        qcow2 = Qcow2Layout(size, ranges)
        return qcow2, qcow2.clusters
    raise InternalError(f"no streamed export to {target_format}")


def _run_end(units: array[int], u: int, limit: int) -> int:
    """End (exclusive) of the run of consecutive units starting at ``u``, below ``limit``."""
    end = u + 1
    while end < len(units) and units[end] == units[end - 1] + 1 and units[end] < limit:
        end += 1
    return end


# ---------------------------------------------------------------- import


class _Destination(Protocol):
    def close(self) -> None: ...

    def abort(self) -> None: ...


@dataclass(frozen=True)
class StreamedResult:
    virtual_size: int
    content_sha256: str | None  # None: not computable in the stream (grains out of order)


def _not_open(_offset: int, _data: memoryview) -> None:
    raise InternalError("streamed import: write before the destination exists")


class StreamedImport:
    """Decodes an object's bytes as they arrive and writes the guest data to ``path``.

    ``feed`` the object's bytes in order, then ``finish``. The destination is created
    once the object's metadata is known (a vmdk's header and grain tables; a raw
    object's ``size``, which must then be known). Raises ``NotStreamable`` (from the
    constructor or from ``feed``) before anything is written when the object cannot be
    decoded in the stream; its ``consumed`` holds every byte fed, for the caller's
    fallback.
    """

    def __init__(
        self,
        src_format: str,
        target_format: str,
        path: str,
        *,
        size: int | None,
        durable: bool = True,
    ) -> None:
        if target_format not in STREAMED_IMPORTS.get(src_format, ()):
            raise InternalError(f"{src_format} -> {target_format} is not streamed")
        if src_format == "raw" and size is None:
            raise NotStreamable("a raw object of unknown size", consumed=b"")
        self._target = target_format
        self._durable = durable
        self._path = path
        self._parser = SparseVmdkStreamReader() if src_format == "vmdk" else None
        self._raw_pos = 0
        # A raw object is the disk (qemu pads it to a whole sector); a vmdk says in its header.
        self._virtual: int | None = None
        if src_format == "raw" and size is not None:
            self._virtual = -(-size // _SECTOR) * _SECTOR
        self._dest: _Destination | None = None
        self._write: Callable[[int, memoryview], None] = _not_open
        self._content: ContentHasher | None = None
        self._hashed = 0  # guest bytes fed to the content digest, in order

    @property
    def started(self) -> bool:
        """The destination exists: from now on the object is decoded in the stream."""
        return self._dest is not None

    def feed(self, data: bytes) -> None:
        for offset, decoded in self._decode(data):
            if self._dest is None:
                self._open()
            piece = decoded[: max(self._size - offset, 0)]  # no padding past the end
            if not piece:
                continue
            self._write(offset, piece)
            if self._content is not None:
                if offset < self._hashed:
                    self._content.close()
                    self._content = None  # out of order: hash the written image instead
                else:
                    self._content.update_zeros(offset - self._hashed)
                    self._content.update(piece)
                    self._hashed = offset + len(piece)

    def finish(self) -> StreamedResult:
        """End of the object: close and verify the destination (see module docstring)."""
        if self._parser is not None:
            self._parser.finish()
        dest = self._dest or self._open()
        dest.close()
        size = self._size
        if isinstance(dest, Qcow2StreamWriter):
            check = qemu_img.check(self._path, "qcow2")
            if not check.clean:
                raise ChecksumMismatch(
                    f"the written qcow2 image is not clean: {check.corruptions} corruptions, "
                    f"{check.leaks} leaked clusters, {check.check_errors} check errors"
                )
            problem = map_matches(self._path, dest.mapping(), size)
            if problem is not None:
                raise ChecksumMismatch(
                    f"the written qcow2 image does not map as written: {problem}"
                )
        if self._content is None:
            return StreamedResult(size, None)
        self._content.update_zeros(size - self._hashed)
        return StreamedResult(size, self._content.hexdigest())

    def abort(self) -> None:
        if self._content is not None:
            self._content.close()
        if self._dest is not None:
            self._dest.abort()

    @property
    def _size(self) -> int:
        if self._virtual is None:
            raise InternalError("virtual size not known yet")
        return self._virtual

    def _decode(self, data: bytes) -> Iterator[tuple[int, memoryview]]:
        if self._parser is None:
            offset, self._raw_pos = self._raw_pos, self._raw_pos + len(data)
            if self._raw_pos > self._size:
                raise ChecksumMismatch(f"raw object longer than its size {self._size}")
            yield offset, memoryview(data)
            return
        yield from self._parser.feed(data)
        if self._dest is None and self._parser.grains_ascending is not None:
            self._open()  # metadata parsed: nothing is buffered from here on

    def _open(self) -> _Destination:
        if self._virtual is None and self._parser is not None:
            self._virtual = self._parser.virtual_size
        size = self._size
        if self._target == "qcow2":
            qcow2 = Qcow2StreamWriter(self._path, size, durable=self._durable)
            self._dest, self._write = qcow2, qcow2.write
        else:  # raw: the disk itself, written in place, zero blocks left as holes
            raw = SparseWriter(self._path, durable=self._durable, length=size)
            self._dest, self._write = raw, raw.write_at
        if self._parser is None or self._parser.grains_ascending is not False:
            # Hashed in a thread of its own: the caller's thread decodes and writes.
            self._content = ContentHasher(size, threads=1)
        return self._dest
