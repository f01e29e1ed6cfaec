"""The two digests of a migrated disk, both built on SHA256.

Transport digest
----------------
The plain SHA256 of the bytes of the object in intermediate storage (a qcow2 file, a
raw image, ...): what the exporter wrote is what the importer read. ``TransportHasher``
computes it while bytes stream past.

Content digest (definition, version 1)
--------------------------------------
A digest of the guest-visible disk: the bytes a guest reads from the virtual disk,
i.e. the image converted to raw. It does not depend on the image format, on
allocation, compression or cluster layout, so it is equal for the source snapshot and
for the imported disk whatever conversions happened in between. Definition:

- ``D``: the virtual disk bytes, ``V = len(D)`` the virtual size in bytes as qemu-img
  reports it (``virtual-size``). Note: qemu-img rounds a raw file whose length is not a
  multiple of 512 up to a whole sector, the tail reading as zeros; ``V`` is that
  rounded size, as every converted copy of the file has it.
- ``C = 4 MiB = 4194304`` bytes; ``n = ceil(V / C)``;
  ``chunk_i = D[i*C : min((i+1)*C, V)]`` for ``i = 0 .. n-1`` (the last chunk may be
  shorter than ``C`` and is hashed as it is, without padding).
- ``H_i = SHA256(chunk_i)`` (32 raw bytes).
- ``content digest = SHA256( uint64_big_endian(V) || H_0 || H_1 || ... || H_{n-1} )``,
  written as 64 lowercase hexadecimal characters. For ``V = 0`` it is
  ``SHA256(8 zero bytes)`` = ``af5570f5a1810b7af78caf4bc70a660f0df51e42baf91d4de5b2328de0e83dfc``.

A full chunk of zeros always hashes to ``ZERO_CHUNK_SHA256`` =
``bb9f8df61474d25e71fa00722318cd387396ca1736605e1248821cc0de3d3af8`` (SHA256 of 4 MiB of
zero bytes), so an implementation may use that constant for any chunk it knows to be
zero (unallocated or zero-flagged in the image's allocation map) without reading or
hashing it; this changes nothing in the result, only its cost.

Computing it from an image file (``content_digest``)
----------------------------------------------------
``qemu-img map --output=json`` gives, for every virtual range, whether it reads as
zeros and, for stored data, the host ``offset`` in the file of the layer at ``depth``.

- Zero ranges (``"zero": true``: holes, unallocated clusters, zero clusters, the end of
  a backing chain) are never read: whole zero chunks use the constant.
- Data ranges with an ``offset`` are read straight from the host file when that file is
  known without doubt: raw (the file), qcow2 without an external data file (the file),
  vdi and vpc (the file), vmdk with a single uncompressed extent (that extent's file:
  the image itself for monolithicSparse, ``x-flat.vmdk`` for monolithicFlat); each
  layer of a backing chain by its depth. This is the cheap path: only data is read.
- Everything else takes the fallback: the image is converted by qemu-img into a sparse
  raw file in a bounded scratch directory (budget: the image's data ranges), and that
  file is hashed by the cheap path. This covers compressed qcow2 clusters and
  streamOptimized vmdk (map gives no offsets for compressed data), vhdx (qemu 7.2's
  vhdx driver reports neither offsets nor zeros), multi-extent vmdk and encrypted
  images (whose keys qemu-img would need anyway).
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

from virtrigaud.errors import Cancelled, InternalError, InvalidArgument

from . import qemu_img
from .qemu_img import CancelToken, Extent, ImageInfo
from .scratch import Scratch
from .sparsefile import is_zero

CHUNK_SIZE = 4 * 1024 * 1024
ZERO_CHUNK_SHA256 = hashlib.sha256(bytes(CHUNK_SIZE)).digest()
_SECTOR = 512
_ZEROS = bytes(CHUNK_SIZE)
_ZERO_VIEW = memoryview(_ZEROS)

ByteProgress = Callable[[int, int], None]


# ---------------------------------------------------------------- transport digest


class TransportHasher:
    """SHA256 and length of a byte stream."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self.size = 0

    def update(self, data: bytes | memoryview) -> None:
        self._sha.update(data)
        self.size += len(data)

    def wrap(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """Pass ``chunks`` through, hashing each one."""
        for chunk in chunks:
            self.update(chunk)
            yield chunk

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def sha256_file(path: str | os.PathLike[str], block: int = 1024 * 1024) -> str:
    """Transport digest of a file."""
    hasher = TransportHasher()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            hasher.update(chunk)
    return hasher.hexdigest()


# ---------------------------------------------------------------- content digest core


@functools.lru_cache(maxsize=8)
def zero_digest(length: int) -> bytes:
    """SHA256 of ``length`` zero bytes (``ZERO_CHUNK_SHA256`` for a full chunk)."""
    return ZERO_CHUNK_SHA256 if length == CHUNK_SIZE else hashlib.sha256(bytes(length)).digest()


class ContentTree:
    """The content digest fed one chunk at a time, in order (see module docstring)."""

    def __init__(self, virtual_size: int | None = None) -> None:
        self.virtual_size = virtual_size
        self.consumed = 0
        self._closed = False  # a short chunk was added: it must be the last
        self._outer: hashlib._Hash | None = None
        self._pending = bytearray()
        if virtual_size is not None:
            self._outer = hashlib.sha256(virtual_size.to_bytes(8, "big"))

    def add_chunk(self, data: bytes | bytearray | memoryview) -> None:
        self._append(hashlib.sha256(data).digest(), len(data))

    def add_zero_chunk(self, length: int) -> None:
        self._append(zero_digest(length), length)

    def add_chunk_digest(self, digest: bytes, length: int) -> None:
        """A chunk hashed elsewhere: ``digest`` is SHA256 of its ``length`` bytes."""
        if len(digest) != hashlib.sha256().digest_size:
            raise InternalError("content digest chunk digests are 32 bytes")
        self._append(digest, length)

    def hexdigest(self) -> str:
        if self.virtual_size is None:
            outer = hashlib.sha256(self.consumed.to_bytes(8, "big"))
            outer.update(self._pending)
            return outer.hexdigest()
        if self.consumed != self.virtual_size:
            raise InternalError(
                f"content digest fed {self.consumed} of {self.virtual_size} virtual bytes"
            )
        assert self._outer is not None
        return self._outer.hexdigest()

    def _append(self, digest: bytes, length: int) -> None:
        if self._closed or not 0 < length <= CHUNK_SIZE:
            raise InternalError("content digest chunks must be 4 MiB except the last")
        if self.virtual_size is not None and self.consumed + length > self.virtual_size:
            raise InternalError("content digest fed past the virtual size")
        self._closed = length < CHUNK_SIZE
        self.consumed += length
        if self._outer is not None:
            self._outer.update(digest)
        else:
            self._pending += digest


class ContentHasher:
    """The content digest of raw virtual disk bytes arriving in order, in any pieces.

    Pieces are gathered into 4 MiB chunks in a reused buffer (no copies beyond that one);
    zero runs fill it without being read. ``threads > 0`` hashes chunks in that many
    background threads (hashlib releases the GIL) while the caller goes on; ``hexdigest``
    waits for them, ``close`` stops them (an abandoned digest).
    """

    def __init__(self, virtual_size: int | None = None, *, threads: int = 0) -> None:
        self._tree = ContentTree(virtual_size)
        self._hashers = ChunkHashers(self._tree, max(threads, 1), background=threads > 0)
        self._buf = self._hashers.buffer()
        self._fill = 0
        self._background = threads > 0
        self.size = 0

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        self.size += len(view)
        pos = 0
        while pos < len(view):
            if not self._fill and not self._background and len(view) - pos >= CHUNK_SIZE:
                self._add(view[pos : pos + CHUNK_SIZE])  # a whole chunk: hashed in place
                pos += CHUNK_SIZE
                continue
            take = min(CHUNK_SIZE - self._fill, len(view) - pos)
            self._buf[self._fill : self._fill + take] = view[pos : pos + take]
            self._fill += take
            pos += take
            if self._fill == CHUNK_SIZE:
                self._emit()

    def update_zeros(self, count: int) -> None:
        """``count`` zero bytes, known to be zero: whole chunks are not hashed."""
        self.size += count
        if self._fill:
            take = min(CHUNK_SIZE - self._fill, count)
            self._buf[self._fill : self._fill + take] = _ZERO_VIEW[:take]
            self._fill += take
            count -= take
            if self._fill == CHUNK_SIZE:
                self._emit()
        while count >= CHUNK_SIZE:
            self._hashers.add_zero_chunk(CHUNK_SIZE)
            count -= CHUNK_SIZE
        if count:
            self._buf[:count] = _ZERO_VIEW[:count]
            self._fill = count

    def hexdigest(self) -> str:
        if self._fill:
            self._emit()
        self._hashers.__exit__(None, None, None)  # waits for the chunks being hashed
        return self._tree.hexdigest()

    def close(self) -> None:
        """Stop hashing threads without a result (idempotent; hexdigest closes too)."""
        self._hashers.__exit__(InternalError, None, None)

    def _emit(self) -> None:
        self._add(self._buf[: self._fill])
        self._fill = 0

    def _add(self, chunk: memoryview) -> None:
        if is_zero(chunk):
            self._hashers.add_zero_chunk(len(chunk))
        else:
            self._hashers.add_chunk(chunk)
            if chunk.obj is self._buf.obj:
                self._buf = self._hashers.buffer()  # that one is being hashed


# ---------------------------------------------------------------- from an image file


class RangeReader(Protocol):
    """Reads host file bytes; injectable so tests can count what is read.

    A reader that also has ``readinto(path, offset, view) -> int`` (like
    :class:`FileRangeReader`) is read straight into the digest's buffers.
    """

    def pread(self, path: str, offset: int, length: int) -> bytes: ...


class FileRangeReader:
    """The default reader: ``os.pread`` on files opened read-only once each.

    Thread-safe: the content digest lets its hashing threads read their own chunks.
    """

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()

    def _fd(self, path: str) -> int:
        fd = self._fds.get(path)
        if fd is None:
            with self._lock:
                fd = self._fds.get(path)
                if fd is None:
                    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
                    fd = self._fds[path] = os.open(path, flags)
        return fd

    def readinto(self, path: str, offset: int, view: memoryview) -> int:
        """Fill ``view`` from ``offset``; fewer bytes only at the end of the file."""
        fd = self._fd(path)
        done = 0
        while done < len(view):
            n = os.preadv(fd, [view[done:]], offset + done)
            if not n:
                break
            done += n
        return done

    def pread(self, path: str, offset: int, length: int) -> bytes:
        fd = self._fd(path)
        parts = []
        while length > 0:
            data = os.pread(fd, length, offset)
            if not data:
                break
            parts.append(data)
            offset += len(data)
            length -= len(data)
        return b"".join(parts)

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def __enter__(self) -> FileRangeReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass(frozen=True)
class DataLayout:
    """Where an image's virtual bytes are: its info, its map, the host file per depth.

    ``files`` is None when some data range cannot be read straight from a known file
    (the content digest then takes the raw-copy fallback).
    """

    path: str
    info: ImageInfo
    extents: tuple[Extent, ...]
    files: Mapping[int, str] | None

    @property
    def virtual_size(self) -> int:
        return self.info.virtual_size

    @property
    def direct(self) -> bool:
        return self.files is not None

    @property
    def data_bytes(self) -> int:
        """Virtual bytes in ranges that are not known to be zero (an upper bound of data)."""
        return sum(e.length for e in self.extents if not e.zero)


def data_layout(
    path: str | os.PathLike[str], format: str | None = None, *, force_share: bool = False
) -> DataLayout:
    """Read info (with the backing chain) and the allocation map of an image."""
    abspath = qemu_img.safe_path(path)
    info = qemu_img.info(abspath, format, backing_chain=True, force_share=force_share)
    extents = tuple(qemu_img.map(abspath, format or info.format, force_share=force_share))
    _check_coverage(extents, info.virtual_size)
    return DataLayout(abspath, info, extents, _host_files(info, extents))


def content_digest(
    path: str | os.PathLike[str],
    format: str | None = None,
    progress: ByteProgress | None = None,
    cancel: CancelToken | None = None,
    *,
    scratch_dir: str | os.PathLike[str] | None = None,
    scratch_limit: int | None = None,
    reader: RangeReader | None = None,
    force_share: bool = False,
    threads: int = 1,
) -> str:
    """Content digest (hex) of an image of any qemu-img format; see module docstring."""
    layout = data_layout(path, format, force_share=force_share)
    return layout_digest(
        layout,
        progress=progress,
        cancel=cancel,
        scratch_dir=scratch_dir,
        scratch_limit=scratch_limit,
        reader=reader,
        force_share=force_share,
        threads=threads,
    )


def layout_digest(
    layout: DataLayout,
    *,
    progress: ByteProgress | None = None,
    cancel: CancelToken | None = None,
    scratch_dir: str | os.PathLike[str] | None = None,
    scratch_limit: int | None = None,
    reader: RangeReader | None = None,
    force_share: bool = False,
    threads: int = 1,
) -> str:
    """Content digest of an already mapped image (direct reads or the raw-copy fallback).

    ``threads > 1`` hashes that many 4 MiB chunks at once (hashlib releases the GIL, and
    so does ``os.preadv``): with the default reader each thread also reads its own
    chunk, an injected reader is called from the calling thread only. At most
    ``2 x threads`` chunks are buffered. The result does not depend on ``threads``.
    """
    if layout.direct:
        if reader is not None:
            return _digest_direct(layout, reader, progress, cancel, threads)
        with FileRangeReader() as own:
            return _digest_direct(layout, own, progress, cancel, threads)
    size = layout.virtual_size
    with Scratch(scratch_dir, limit=scratch_limit) as scratch:
        scratch.reserve(layout.data_bytes, "a raw copy for the content digest")
        raw = scratch.file("content.raw")
        half = _scaled(progress, 0, size)
        qemu_img.convert(
            layout.path,
            raw,
            src_format=layout.info.format,
            dst_format="raw",
            progress=(lambda f: half(int(f * size), size)) if half else None,
            cancel=cancel,
            force_share=force_share,
        )
        raw_layout = data_layout(raw, "raw")
        if raw_layout.virtual_size != size or not raw_layout.direct:
            raise InternalError(f"raw copy of {layout.path} does not map as expected")
        with FileRangeReader() as own:
            return _digest_direct(
                raw_layout, reader or own, _scaled(progress, size, size), cancel, threads
            )


def first_difference(
    first: DataLayout,
    second: DataLayout,
    *,
    progress: ByteProgress | None = None,
    cancel: CancelToken | None = None,
    threads: int = 1,
) -> int | None:
    """Virtual offset of the first 4 MiB chunk whose guest-visible bytes differ, or None.

    Both images are read the cheap way (``direct`` layouts only): chunks that are zero
    in both allocation maps are not read, every other chunk is read from both and
    compared byte for byte (a zero range on one side against data on the other is
    compared against zeros). Identical bytes have identical content digests, so an
    image proven identical to one whose digest is known has that digest -- at the cost
    of a memory compare instead of a SHA256 pass (see ``pipeline``'s import). Up to
    ``threads`` chunks are read and compared at once; at most ``2 x threads`` wait.
    """
    if not (first.direct and second.direct):
        raise InternalError("comparing images needs both readable directly")
    if first.virtual_size != second.virtual_size:
        return 0
    size = first.virtual_size
    workers = max(1, threads)
    buffers = _PairBuffers()
    pending: deque[tuple[int, Future[bool]]] = deque()
    with FileRangeReader() as reader, ThreadPoolExecutor(workers, "compare") as pool:
        try:
            for job in _ChunkPair.iterate(first, second, cancel):
                pending.append((job.start, pool.submit(job.differs, buffers, reader)))
                while len(pending) > 2 * workers:
                    offset, future = pending.popleft()
                    if future.result():
                        return offset
                if progress is not None:
                    progress(job.end, size)
            while pending:
                offset, future = pending.popleft()
                if future.result():
                    return offset
        finally:
            for _, future in pending:
                future.cancel()
    if progress is not None:
        progress(size, size)
    return None


class _PairBuffers(threading.local):
    """Two chunk buffers per comparing thread, freed with the comparison."""

    def __init__(self) -> None:
        self.a = bytearray(CHUNK_SIZE)
        self.b = bytearray(CHUNK_SIZE)


@dataclass(frozen=True)
class _ChunkPair:
    """One chunk of two same-sized images where at least one of them has data."""

    first: DataLayout
    second: DataLayout
    first_data: list[Extent]
    second_data: list[Extent]
    first_index: int
    second_index: int
    start: int
    end: int

    @classmethod
    def iterate(
        cls, first: DataLayout, second: DataLayout, cancel: CancelToken | None
    ) -> Iterator[_ChunkPair]:
        a_data = [e for e in first.extents if not e.zero]
        b_data = [e for e in second.extents if not e.zero]
        a = b = 0
        size = first.virtual_size
        for start in range(0, size, CHUNK_SIZE):
            if cancel is not None and cancel.is_set():
                raise Cancelled("image comparison cancelled")
            end = min(start + CHUNK_SIZE, size)
            while a < len(a_data) and a_data[a].end <= start:
                a += 1
            while b < len(b_data) and b_data[b].end <= start:
                b += 1
            if (a < len(a_data) and a_data[a].start < end) or (
                b < len(b_data) and b_data[b].start < end
            ):
                yield cls(first, second, a_data, b_data, a, b, start, end)

    def differs(self, buffers: _PairBuffers, reader: FileRangeReader) -> bool:
        """Read the chunk of both images (in the calling thread) and compare."""
        length = self.end - self.start
        a, b = memoryview(buffers.a)[:length], memoryview(buffers.b)[:length]
        fill_chunk(
            self.first, reader, self.first_data, index=self.first_index, start=self.start, chunk=a
        )
        fill_chunk(
            self.second,
            reader,
            self.second_data,
            index=self.second_index,
            start=self.start,
            chunk=b,
        )
        if length == CHUNK_SIZE:
            return buffers.a != buffers.b  # bytearray equality is one memcmp
        return buffers.a[:length] != buffers.b[:length]


def _scaled(progress: ByteProgress | None, base: int, size: int) -> ByteProgress | None:
    """Report one of two equal halves of the work (raw copy, then hashing)."""
    if progress is None:
        return None
    report = progress

    def scaled(done: int, _total: int) -> None:
        report((base + done) // 2, size)

    return scaled


def _digest_direct(
    layout: DataLayout,
    reader: RangeReader,
    progress: ByteProgress | None,
    cancel: CancelToken | None,
    threads: int = 1,
) -> str:
    assert layout.files is not None
    size = layout.virtual_size
    tree = ContentTree(size)
    data = [e for e in layout.extents if not e.zero]
    first = 0
    # Our own reader is thread-safe: let the hashing threads read too (page-cache copies
    # then overlap the hashing instead of queueing behind one reading thread).
    reads_in_threads = isinstance(reader, FileRangeReader)
    with ChunkHashers(tree, threads) as hashers:
        for start in range(0, size, CHUNK_SIZE):
            if cancel is not None and cancel.is_set():
                raise Cancelled("content digest cancelled")
            end = min(start + CHUNK_SIZE, size)
            while first < len(data) and data[first].end <= start:
                first += 1
            if first < len(data) and data[first].start < end:
                chunk = hashers.buffer()[: end - start]
                fill = functools.partial(
                    fill_chunk, layout, reader, data, index=first, start=start, chunk=chunk
                )
                if reads_in_threads:
                    hashers.add_filled_chunk(fill, chunk)
                else:
                    fill()
                    hashers.add_chunk(chunk)
            else:
                hashers.add_zero_chunk(end - start)
            if progress is not None:
                progress(end, size)
    return tree.hexdigest()


def fill_chunk(
    layout: DataLayout,
    reader: RangeReader,
    data: list[Extent],
    *,
    index: int,
    start: int,
    chunk: memoryview,
) -> None:
    """Virtual bytes ``[start, start + len(chunk))`` into ``chunk``: data read, rest zero."""
    end = start + len(chunk)
    cursor = start
    while index < len(data) and data[index].start < end:
        extent = data[index]
        lo, hi = max(extent.start, start), min(extent.end, end)
        if lo > cursor:
            chunk[cursor - start : lo - start] = _ZERO_VIEW[: lo - cursor]
        got = _read_piece(layout, reader, extent, lo, chunk[lo - start : hi - start])
        cursor = lo + got
        index += 1
    if cursor < end:
        chunk[cursor - start :] = _ZERO_VIEW[: end - cursor]


class ChunkHashers:
    """Feeds a ContentTree in order while up to ``threads`` chunks are hashed at once.

    Chunks are filled into a ring of reusable buffers: at most ``2 x threads`` chunks
    wait for their hash, so the buffer handed out next is never one still being hashed.
    """

    def __init__(self, tree: ContentTree, threads: int, *, background: bool = False) -> None:
        self._tree = tree
        pooled = threads > 1 or background
        self._pool = ThreadPoolExecutor(threads, "content-hash") if pooled else None
        self._limit = 2 * threads if self._pool is not None else 0
        self._pending: deque[tuple[Future[bytes] | None, int]] = deque()
        self._ring: list[memoryview] = []
        self._next = 0

    def buffer(self) -> memoryview:
        """A CHUNK_SIZE buffer that no pending hash uses (contents undefined)."""
        if len(self._ring) < self._limit + 1:
            self._ring.append(memoryview(bytearray(CHUNK_SIZE)))
            return self._ring[-1]
        view = self._ring[self._next]
        self._next = (self._next + 1) % len(self._ring)
        return view

    def add_chunk(self, data: memoryview) -> None:
        if self._pool is None:
            self._tree.add_chunk(data)
            return
        self._pending.append((self._pool.submit(_sha256, data), len(data)))
        self._drain(self._limit)

    def add_filled_chunk(self, fill: Callable[[], None], data: memoryview) -> None:
        """Like ``add_chunk``, but ``fill()`` writes ``data`` first, in the hashing thread."""
        if self._pool is None:
            fill()
            self._tree.add_chunk(data)
            return
        self._pending.append((self._pool.submit(_fill_and_hash, fill, data), len(data)))
        self._drain(self._limit)

    def add_zero_chunk(self, length: int) -> None:
        if self._pool is None:
            self._tree.add_zero_chunk(length)
        else:
            self._pending.append((None, length))

    def _drain(self, keep: int) -> None:
        while len(self._pending) > keep or (self._pending and self._pending[0][0] is None):
            future, length = self._pending.popleft()
            if future is None:
                self._tree.add_zero_chunk(length)
            else:
                self._tree.add_chunk_digest(future.result(), length)

    def __enter__(self) -> ChunkHashers:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if self._pool is None:
            return
        try:
            if exc_type is None:
                self._drain(0)
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)


def _sha256(data: memoryview) -> bytes:
    return hashlib.sha256(data).digest()


def _fill_and_hash(fill: Callable[[], None], data: memoryview) -> bytes:
    fill()
    return hashlib.sha256(data).digest()


def _read_piece(
    layout: DataLayout, reader: RangeReader, extent: Extent, lo: int, into: memoryview
) -> int:
    """Read virtual ``[lo, lo + len(into))`` of a data extent into ``into``; bytes read."""
    assert layout.files is not None and extent.offset is not None
    path, offset, length = layout.files[extent.depth], extent.offset + lo - extent.start, len(into)
    readinto = getattr(reader, "readinto", None)
    if readinto is not None:
        got = int(readinto(path, offset, into))
    else:
        piece = reader.pread(path, offset, length)
        got = min(len(piece), length)
        into[:got] = piece[:got]
    hi = lo + length
    # A raw file is a whole number of sectors to qemu: bytes past its end read as zeros.
    if got < length and not (hi == layout.virtual_size and length - got < _SECTOR):
        raise InvalidArgument(
            f"{layout.path}: data at virtual offset {lo} lies beyond the end of "
            f"{path} (truncated image?)"
        )
    return got


def _check_coverage(extents: tuple[Extent, ...], size: int) -> None:
    pos = 0
    for extent in extents:
        if extent.start != pos:
            raise InternalError(f"qemu-img map has a gap or overlap at offset {pos}")
        pos = extent.end
    if pos != size:
        raise InternalError(f"qemu-img map covers {pos} of {size} virtual bytes")


def _host_files(info: ImageInfo, extents: tuple[Extent, ...]) -> dict[int, str] | None:
    layers = info.layers
    files: dict[int, str] = {}
    for extent in extents:
        if extent.zero or extent.depth in files:
            if not extent.zero and extent.offset is None:
                return None
            continue
        if extent.offset is None or extent.depth >= len(layers):
            return None
        host = _raw_mapped_file(layers[extent.depth])
        if host is None:
            return None
        files[extent.depth] = host
    return files


def _raw_mapped_file(layer: ImageInfo) -> str | None:
    """The file that map offsets of this layer point into, when it is certain."""
    if layer.encrypted:
        return None
    name: str | None = None
    if layer.format in ("raw", "vdi", "vpc") or (layer.format == "qcow2" and not layer.data_file):
        name = layer.filename
    elif layer.format == "vmdk" and len(layer.extents) == 1 and not layer.extents[0].compressed:
        name = layer.extents[0].filename
    if name is None or not qemu_img.is_absolute_file(name):
        return None
    return name
