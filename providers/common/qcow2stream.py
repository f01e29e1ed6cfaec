"""Write a qcow2 image directly from a stream of guest data (no scratch copy, no convert).

Data clusters are appended to the file in arrival order; all metadata is written by
``close``. The file produced (qcow2 version 3, what ``qemu-img create -f qcow2`` 7.2
writes minus the optional feature-name table) is, in host clusters::

    0                header: 112 bytes (compression_type zlib) + end-of-extensions marker
    1 .. D           the D stored data clusters, in the order they were flushed
    D+1 .. D+L       one L2 table per 512 MiB guest range holding data, ascending
    ..               the L1 table (ceil(virtual_size / 512 MiB) entries; none if empty)
    ..               refcount blocks (16-bit; each covers 32768 clusters = 2 GiB of file)
    last             the refcount table (as many clusters as the blocks need)

Every cluster of the file is referenced exactly once, so every refcount is 1 and every
L1 and L2 entry carries the COPIED flag. The refcount structures count themselves; their
size is the fixed point computed by ``refcount_layout``. All-zero guest clusters are not
stored (L2 entry 0 reads as zeros: there is no backing file). The header is written last
(after an fsync when durable), so a crash leaves a file that is no image at all rather
than a wrong one.

Virtual size: qemu keeps the size in bytes but reads it as whole 512-byte sectors, so a
size that is not a multiple of 512 would hide the tail (``qemu-img create`` rounds up);
it is refused, as is anything above qemu's L1 limit (2 PiB with 64 KiB clusters).

Memory: per touched 512 MiB guest range, its L2 slots' host clusters (4 bytes each: 32
KiB) and a 1 KiB "written" bitmap -- at most 66 MiB per TiB of virtual disk -- plus one
cluster of assembly buffer. Data is never held beyond the cluster being assembled.

**Metadata first** (``Qcow2Layout`` + ``stream_qcow2``): when the allocation is known
before any data is read (an export: ``qemu-img map`` of the source), the whole layout is
computed up front and the object is produced strictly sequentially (S3/HTTP, no
seeking). Same header and the same rules (every refcount 1, COPIED everywhere, the
refcount structures count themselves), in host clusters::

    0                header (as above)
    1 ..             the L1 table (none if the disk is empty)
    ..               the refcount table, then the refcount blocks
    ..               one L2 table per 512 MiB guest range holding data, ascending
    data_offset ..   the allocated data clusters in ascending guest order

Allocated clusters are stored even when they hold zeros (the data is not seen before
the metadata is written); the last one is zero-padded past the virtual size.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import struct
import sys
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType

from virtrigaud.errors import AlreadyExists, ChecksumMismatch, InternalError, InvalidArgument

from . import qemu_img
from .sparsefile import is_zero, os_error, pwrite_all, unit_runs

CLUSTER_BITS = 16
CLUSTER_SIZE = 1 << CLUSTER_BITS
SECTOR = 512
COPIED = 1 << 63
MAX_L1_BYTES = 32 * 1024 * 1024  # qemu's QCOW_MAX_L1_SIZE
MAX_REFTABLE_BYTES = 8 * 1024 * 1024  # qemu's QCOW_MAX_REFTABLE_SIZE
REFCOUNT_ORDER = 4  # 16-bit refcounts
HEADER_LENGTH = 112
_HEADER = struct.Struct(">4sIQIIQIIQQIIQQQQIIB7xII")  # v3 header + end-of-extensions


_Seg = tuple[int, int, int | None]  # guest start, guest end, host offset of start or None


@dataclass(frozen=True)
class MappedRun:
    """Guest range ``[start, start + length)`` stored at host offset ``host``."""

    start: int
    length: int
    host: int


def refcount_layout(
    clusters: int, *, per_block: int = CLUSTER_SIZE // 2, per_table_cluster: int = CLUSTER_SIZE // 8
) -> tuple[int, int]:
    """(refcount blocks, refcount table clusters) for a file of ``clusters`` clusters plus
    these structures themselves: the least fixed point of blocks = ceil(total / per_block),
    table = ceil(blocks / per_table_cluster), total = clusters + blocks + table."""
    blocks = table = 0
    while True:
        need_blocks = _ceil_div(clusters + blocks + table, per_block)
        need_table = _ceil_div(need_blocks, per_table_cluster)
        if (need_blocks, need_table) == (blocks, table):
            return blocks, table
        blocks, table = need_blocks, need_table


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _l1_entries(virtual_size: int, cluster_bits: int) -> int:
    """L1 table entries for ``virtual_size``; InvalidArgument for a cluster size qemu does
    not support or a size it would not keep (see the module docstring)."""
    if not 9 <= cluster_bits <= 21:
        raise InvalidArgument(f"cluster_bits must be 9..21 (as in qemu), got {cluster_bits}")
    l2_bits = cluster_bits - 3  # an L2 table (one cluster) has cs/8 entries
    limit = (MAX_L1_BYTES // 8) << (l2_bits + cluster_bits)
    if virtual_size < 0 or virtual_size % SECTOR or virtual_size > limit:
        raise InvalidArgument(
            f"qcow2 virtual size must be a multiple of {SECTOR} bytes between 0 and "
            f"{limit} (qemu reads it in 512-byte sectors and caps the L1 table), "
            f"got {virtual_size}"
        )
    return _ceil_div(virtual_size, 1 << (l2_bits + cluster_bits))


def _pack_header(
    cluster_bits: int,
    virtual_size: int,
    *,
    l1_size: int,
    l1_offset: int,
    reftable_offset: int,
    reftable_clusters: int,
) -> bytes:
    """The v3 header (no features, zlib, 16-bit refcounts) + end-of-extensions marker."""
    return _HEADER.pack(
        *(b"QFI\xfb", 3, 0, 0, cluster_bits, virtual_size, 0, l1_size),
        *(l1_offset, reftable_offset, reftable_clusters, 0, 0),
        *(0, 0, 0, REFCOUNT_ORDER, HEADER_LENGTH, 0, 0, 0),
    )


class Qcow2StreamWriter:
    """A new qcow2 image written while its guest data arrives (see the module docstring).

    ``cluster_bits`` is 16 (``CLUSTER_SIZE``) in production; tests may pick a smaller
    cluster size to exercise many L2 tables and refcount blocks with little data.
    """

    def __init__(
        self, path: str, virtual_size: int, *, durable: bool = True, cluster_bits: int = 16
    ) -> None:
        self._l1_size = _l1_entries(virtual_size, cluster_bits)
        self.path = path
        self.virtual_size = virtual_size
        self._bits = cluster_bits
        self._cs = 1 << cluster_bits
        self._l2_bits = cluster_bits - 3  # an L2 table (one cluster) has cs/8 entries
        self._durable = durable
        self._buf = bytearray(self._cs)  # the cluster being assembled
        # Data clusters waiting to be written with one pwritev (host-contiguous: appended).
        # Per-call overhead dominates 64 KiB writes, so consecutive clusters go together;
        # they are written before write() returns (the caller may reuse its buffers).
        self._pending: list[memoryview] = []
        self._pending_host = 0
        self._cur: int | None = None  # its guest cluster index
        self._fill = 0  # end of the last write into it
        self._next_host = 1  # cluster 0 is the header
        # L1 index -> the host cluster of each slot of that L2 table (0: not stored), made
        # when the table's range is first stored into: 4 bytes per guest cluster of a
        # touched 512 MiB range, whatever the order the clusters come in.
        self._entries: dict[int, array[int]] = {}
        # Data clusters never outnumber the guest's: 32-bit host indexes unless huge.
        self._host_type = "I" if (virtual_size >> cluster_bits) < (1 << 32) - 1 else "Q"
        self._l2_entries_bytes = array(self._host_type).itemsize << self._l2_bits
        self._seen: dict[int, bytearray] = {}  # l1 index -> bitmap of flushed/claimed slots
        self._state = "open"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        try:
            self._fd: int | None = os.open(path, flags, 0o600)
        except FileExistsError as exc:
            raise AlreadyExists(f"output image {path} already exists") from exc
        except OSError as exc:
            raise os_error(exc, path) from exc

    @property
    def data_bytes(self) -> int:
        """Bytes of stored data clusters (all-zero clusters are not stored)."""
        return (self._next_host - 1) * self._cs

    def write(self, offset: int, data: bytes | memoryview) -> None:
        """Guest ``data`` at guest ``offset``, any alignment and length. Clusters may come
        in any order, but within the cluster being assembled writes must ascend (gaps read
        as zeros), and a cluster left for another one is flushed and cannot be written
        again (InvalidArgument; a write spanning clusters may then be partly applied, the
        writer stays consistent). All-zero clusters are not stored."""
        self._require("open", "write to")
        view = memoryview(data).cast("B")
        if offset < 0 or offset + len(view) > self.virtual_size:
            raise InvalidArgument(
                f"write of {len(view)} bytes at guest offset {offset} is outside the virtual "
                f"disk of {self.virtual_size} bytes"
            )
        try:
            self._write_into_clusters(offset, view)
        finally:
            self._write_pending()

    def _write_into_clusters(self, offset: int, view: memoryview) -> None:
        pos = 0
        while pos < len(view):
            cluster, within = divmod(offset + pos, self._cs)
            take = min(len(view) - pos, self._cs - within)
            piece = view[pos : pos + take]
            pos += take
            if cluster != self._cur:
                self._flush()
                self._claim(cluster)
                if take == self._cs:  # a whole cluster: store from the caller's buffer
                    self._store(cluster, piece)
                    continue
                self._cur = cluster
            elif within < self._fill:
                raise InvalidArgument(
                    f"write at guest offset {offset + pos - take} goes back into guest cluster "
                    f"{cluster}, already written up to offset {cluster * self._cs + self._fill}"
                    ": writes within a cluster must ascend"
                )
            self._buf[within : within + take] = piece
            self._fill = within + take

    def close(self) -> None:
        """Flush the partial cluster, write L2, L1, refcounts, then the header; fsync if
        durable. A second close does nothing; on failure the file is left for ``abort``."""
        if self._state == "closed":
            return
        self._require("open", "close")
        self._state = "failed"
        try:
            self._flush()
            self._finish()
        except OSError as exc:
            raise os_error(exc, self.path) from exc
        finally:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
        self._state = "closed"

    def abort(self) -> None:
        """Close the file and delete it (no error if it is already gone)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._state = "aborted"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def mapping(self) -> list[MappedRun]:
        """After close: stored data as runs sorted by guest offset, merged where adjacent
        in both guest and host space, clipped to the virtual size."""
        self._require("closed", "map")
        runs: list[MappedRun] = []
        for l1 in sorted(self._entries):
            for slot, host_cluster in enumerate(self._entries[l1]):
                if not host_cluster:
                    continue
                start = ((l1 << self._l2_bits) + slot) * self._cs
                host = host_cluster * self._cs
                length = min(self._cs, self.virtual_size - start)
                last = runs[-1] if runs else None
                if last and last.start + last.length == start and last.host + last.length == host:
                    runs[-1] = MappedRun(last.start, last.length + length, last.host)
                else:
                    runs.append(MappedRun(start, length, host))
        return runs

    def __enter__(self) -> Qcow2StreamWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.abort()
            return
        try:
            self.close()
        except BaseException:
            self.abort()
            raise

    # ------------------------------------------------------------ internals

    def _require(self, state: str, action: str) -> None:
        if self._state != state:
            raise InternalError(f"cannot {action} qcow2 image {self.path}: it is {self._state}")

    def _claim(self, cluster: int) -> None:
        l1, slot = divmod(cluster, 1 << self._l2_bits)
        bitmap = self._seen.setdefault(l1, bytearray(1 << (self._l2_bits - 3)))
        if bitmap[slot >> 3] & (1 << (slot & 7)):
            raise InvalidArgument(
                f"guest cluster {cluster} (offset {cluster * self._cs}) was already written "
                "and flushed: a stream may not rewrite a cluster"
            )
        bitmap[slot >> 3] |= 1 << (slot & 7)

    def _flush(self) -> None:
        if self._cur is not None:
            cluster, self._cur = self._cur, None
            self._store(cluster, memoryview(self._buf))
            self._write_pending()  # before the buffer is cleared for the next cluster
            self._buf[: self._fill] = bytes(self._fill)
            self._fill = 0

    def _store(self, cluster: int, data: bytes | memoryview) -> None:
        if is_zero(data):
            return
        host = self._next_host
        if not self._pending:
            self._pending_host = host
        self._pending.append(memoryview(data))
        if len(self._pending) >= _MAX_PENDING:
            self._write_pending()
        self._next_host += 1
        l1, slot = divmod(cluster, 1 << self._l2_bits)
        table = self._entries.get(l1)
        if table is None:
            table = self._entries[l1] = array(self._host_type, bytes(self._l2_entries_bytes))
        table[slot] = host

    def _finish(self) -> None:
        cs, l1_indexes = self._cs, sorted(self._entries)
        first_l2 = self._next_host
        l1_host = first_l2 + len(l1_indexes)
        l1_clusters = _ceil_div(self._l1_size * 8, cs)
        ref_first = l1_host + l1_clusters
        blocks, table = refcount_layout(ref_first, per_block=cs // 2, per_table_cluster=cs // 8)
        total = ref_first + blocks + table
        if table * cs > MAX_REFTABLE_BYTES:
            raise InvalidArgument(f"{self.path}: {total} clusters exceed qemu's refcount limit")
        l1_table = array("Q", bytes(l1_clusters * cs))
        for i, l1 in enumerate(l1_indexes):
            l2 = array("Q", (h * cs | COPIED if h else 0 for h in self._entries[l1]))
            self._pwrite(_big_endian(l2), (first_l2 + i) * cs)
            l1_table[l1] = (first_l2 + i) * cs | COPIED
        if l1_clusters:
            self._pwrite(_big_endian(l1_table), l1_host * cs)
        per_block = cs // 2
        for b in range(blocks):
            count = min(per_block, total - b * per_block)
            self._pwrite(b"\x00\x01" * count + bytes(cs - 2 * count), (ref_first + b) * cs)
        reftable = array("Q", bytes(table * cs))
        for b in range(blocks):
            reftable[b] = (ref_first + b) * cs
        self._pwrite(_big_endian(reftable), (ref_first + blocks) * cs)
        assert self._fd is not None
        if self._durable:
            os.fsync(self._fd)  # metadata on disk before the header that points at it
        header = _pack_header(
            self._bits,
            self.virtual_size,
            l1_size=self._l1_size,
            l1_offset=l1_host * cs if l1_clusters else 0,
            reftable_offset=(ref_first + blocks) * cs,
            reftable_clusters=table,
        )
        self._pwrite(header, 0)
        if self._durable:
            os.fsync(self._fd)

    def _write_pending(self) -> None:
        if not self._pending:
            return
        views, self._pending = self._pending, []
        if self._fd is None:
            raise InternalError(f"qcow2 image {self.path} is not open")
        offset = self._pending_host * self._cs
        try:
            written = os.pwritev(self._fd, views, offset)
        except OSError as exc:
            raise os_error(exc, self.path) from exc
        total = sum(len(v) for v in views)
        if written < total:  # a short write: the rest one piece at a time
            self._pwrite(b"".join(views)[written:], offset + written)

    def _pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        if self._fd is None:
            raise InternalError(f"qcow2 image {self.path} is not open")
        pwrite_all(self._fd, data, offset, self.path)


_MAX_PENDING = 256  # clusters per pwritev (16 MiB of 64 KiB clusters; IOV_MAX is 1024)


def _big_endian(values: array[int]) -> bytes:
    if sys.byteorder == "little":
        values.byteswap()
    return values.tobytes()


# ---------------------------------------------------------------- metadata-first layout


class Qcow2Layout:
    """Where everything goes in a qcow2 object of known allocation, metadata first.

    The twin of ``vmdkstream.SparseVmdkLayout`` (see the module docstring for the layout):
    the object is ``iter_header()`` (``data_offset`` bytes) followed by, for each guest
    cluster in ``clusters`` (ascending), exactly one cluster of its guest data, zero-padded
    past ``virtual_size``; ``stream_qcow2`` produces it from a read function. Nothing is
    ever written twice or out of order, so it can go straight to S3/HTTP.

    ``data_ranges``: guest byte ranges ``(start, end)`` that may hold data (e.g. from
    ``qemu-img map``), in any order, unaligned and overlapping allowed; every cluster
    touching one is allocated (and stored even if it turns out to hold zeros).
    ``virtual_size``: a multiple of 512 bytes, 0 allowed, at most qemu's L1 limit.
    ``cluster_bits`` is 16 (``CLUSTER_SIZE``) in production; tests may pick a smaller
    cluster size to exercise many L2 tables and refcount blocks with little data.

    Memory: ``clusters`` is an ``array("I")`` (4 bytes per allocated cluster; ``"Q"`` only
    for disks above 2**32 clusters, 256 TiB) plus 4 bytes per L2 table; ``iter_header``
    builds one piece (at most ``HEADER_PIECE`` bytes, or one cluster if larger) at a time.
    """

    def __init__(
        self,
        virtual_size: int,
        data_ranges: Iterable[tuple[int, int]],
        *,
        cluster_bits: int = CLUSTER_BITS,
    ) -> None:
        self._l1_size = _l1_entries(virtual_size, cluster_bits)
        self.virtual_size = virtual_size
        self.cluster_bits = cluster_bits
        self.cluster_size = cs = 1 << cluster_bits
        self._l2_bits = l2_bits = cluster_bits - 3
        # [first, stop) guest clusters, ascending and disjoint.
        runs = unit_runs(data_ranges, virtual_size, cs)
        count = sum(stop - first for first, stop in runs)
        # The L1 indexes of the L2 tables, ascending (below 2**22: the L1 limit).
        self._tables: array[int] = array("I")
        for first, stop in runs:
            low = first >> l2_bits
            if self._tables and self._tables[-1] == low:
                low += 1
            self._tables.extend(range(low, ((stop - 1) >> l2_bits) + 1))
        l1_clusters = _ceil_div(self._l1_size * 8, cs)
        blocks, table = refcount_layout(
            1 + l1_clusters + len(self._tables) + count,
            per_block=cs // 2,
            per_table_cluster=cs // 8,
        )
        if table * cs > MAX_REFTABLE_BYTES:
            raise InvalidArgument(
                f"{count * cs} bytes of allocated data exceed qemu's qcow2 refcount limit "
                f"with {cs}-byte clusters"
            )
        self._l1_at = 1  # host cluster numbers
        self._reftable_at = self._l1_at + l1_clusters
        self._reftable_clusters = table
        self._blocks_at = self._reftable_at + table
        self._blocks = blocks
        self._l2_at = self._blocks_at + blocks
        self._total = self._l2_at + len(self._tables) + count  # clusters in the object
        self.data_offset = (self._l2_at + len(self._tables)) * cs
        self.object_size = self._total * cs
        guest_clusters = _ceil_div(virtual_size, cs)
        typecode = "I" if guest_clusters <= 1 << (8 * array("I").itemsize) else "Q"
        self.clusters: array[int] = array(typecode)
        for first, stop in runs:
            self.clusters.extend(range(first, stop))

    def cluster_host_offset(self, index_in_clusters: int) -> int:
        """Object byte offset of the ``index_in_clusters``-th allocated cluster."""
        if not 0 <= index_in_clusters < len(self.clusters):
            raise InternalError(f"cluster index {index_in_clusters} out of range")
        return self.data_offset + index_in_clusters * self.cluster_size

    def iter_header(self) -> Iterator[bytes]:
        """Everything before ``data_offset``: header cluster, L1 table, refcount table,
        refcount blocks, L2 tables; in pieces of at most ``HEADER_PIECE`` bytes (or one
        cluster, if clusters are larger), each built when it is due."""
        limit = max(HEADER_PIECE, self.cluster_size)
        piece = bytearray()
        for chunk in self._metadata_chunks():
            if piece and len(piece) + len(chunk) > limit:
                yield bytes(piece)
                piece.clear()
            piece += chunk
        if piece:
            yield bytes(piece)

    def _metadata_chunks(self) -> Iterator[bytes]:
        """The metadata in order, as chunks of at most ``max(HEADER_PIECE, cluster)``."""
        cs = self.cluster_size
        header = _pack_header(
            self.cluster_bits,
            self.virtual_size,
            l1_size=self._l1_size,
            l1_offset=self._l1_at * cs if self._l1_size else 0,
            reftable_offset=self._reftable_at * cs,
            reftable_clusters=self._reftable_clusters,
        )
        yield header.ljust(cs, b"\0")
        yield from self._l1_chunks()
        # Refcount table: entry b -> refcount block b; the rest of its clusters are 0.
        entries = self._reftable_clusters * cs // 8
        for lo in range(0, entries, _ENTRIES_PER_PIECE):
            hi = min(entries, lo + _ENTRIES_PER_PIECE)
            first, stop = self._blocks_at + lo, self._blocks_at + min(hi, self._blocks)
            chunk = array("Q", range(first * cs, stop * cs, cs))  # empty past the blocks
            chunk.extend(array("Q", bytes((hi - lo - len(chunk)) * 8)))
            yield _big_endian(chunk)
        # Refcount blocks: every cluster of the object (and nothing past it) counts 1.
        per_block = cs // 2
        full = b"\x00\x01" * per_block
        for b in range(self._blocks):
            used = min(per_block, self._total - b * per_block)
            yield full if used == per_block else full[: 2 * used].ljust(cs, b"\0")
        yield from self._l2_chunks()

    def _l1_chunks(self) -> Iterator[bytes]:
        cs, tables = self.cluster_size, self._tables
        entries = _ceil_div(self._l1_size * 8, cs) * cs // 8  # whole clusters
        i = 0
        for lo in range(0, entries, _ENTRIES_PER_PIECE):
            hi = min(entries, lo + _ENTRIES_PER_PIECE)
            chunk = array("Q", bytes((hi - lo) * 8))
            while i < len(tables) and tables[i] < hi:
                chunk[tables[i] - lo] = (self._l2_at + i) * cs | COPIED
                i += 1
            yield _big_endian(chunk)

    def _l2_chunks(self) -> Iterator[bytes]:
        cs, l2_bits, clusters = self.cluster_size, self._l2_bits, self.clusters
        k = 0  # index in clusters of the first cluster of the current table
        for table in self._tables:
            base = table << l2_bits
            end = bisect.bisect_left(clusters, base + (1 << l2_bits), lo=k)
            if end == k:
                raise InternalError(f"qcow2 layout: L2 table {table} has no cluster")
            l2 = array("Q", bytes(cs))
            while k < end:
                run = _run_end(clusters, k, end) - k  # guest-consecutive clusters
                host = (self.data_offset + k * cs) | COPIED
                slot = clusters[k] - base
                l2[slot : slot + run] = array("Q", range(host, host + run * cs, cs))
                k += run
            yield _big_endian(l2)


HEADER_PIECE = 1 << 20  # Qcow2Layout.iter_header yields pieces of at most this size
STREAM_PIECE = 4 << 20  # stream_qcow2 reads at most this much at a time
_ENTRIES_PER_PIECE = HEADER_PIECE // 8


def _run_end(clusters: array[int], k: int, end: int) -> int:
    """The end of the run of guest-consecutive clusters starting at ``clusters[k]``, at most
    ``end``. ``clusters`` ascends strictly, so ``clusters[i] - i`` never decreases and the
    run is where it stays equal to ``clusters[k] - k``: found by bisection."""
    offset = clusters[k] - k
    return k + bisect.bisect_right(range(k, end), offset, key=lambda i: clusters[i] - i)


def stream_qcow2(layout: Qcow2Layout, read: Callable[[int, int], bytes]) -> Iterator[bytes]:
    """The whole object: the metadata, then the data clusters (runs of guest-consecutive
    clusters read with one ``read(guest_offset, length)`` each, at most ``STREAM_PIECE``
    bytes), zero-padded past the virtual size. A short read is a ChecksumMismatch."""
    yield from layout.iter_header()
    clusters, cs = layout.clusters, layout.cluster_size
    per_piece = max(1, STREAM_PIECE // cs)
    i = 0
    while i < len(clusters):
        j = _run_end(clusters, i, min(len(clusters), i + per_piece))
        start, length = clusters[i] * cs, (j - i) * cs
        wanted = min(length, layout.virtual_size - start)
        data = read(start, wanted)
        if len(data) != wanted:
            raise ChecksumMismatch(
                f"source disk returned {len(data)} bytes at offset {start}, expected {wanted} "
                "(did it shrink while being exported?)"
            )
        yield data if wanted == length else bytes(data) + bytes(length - wanted)
        i = j


def map_matches(path: str, expected: list[MappedRun], virtual_size: int) -> str | None:
    """None when ``qemu-img map`` of the qcow2 ``path`` shows exactly ``expected`` (data at
    those host offsets, zeros elsewhere), else a one-line description of the first
    difference."""
    want: list[_Seg] = []
    pos = 0
    for run in sorted(expected, key=lambda r: r.start):
        if run.start < pos or run.length <= 0 or run.start + run.length > virtual_size:
            raise InvalidArgument(f"expected mapping run {run} overlaps or is out of range")
        want += [(pos, run.start, None), (run.start, run.start + run.length, run.host)]
        pos = run.start + run.length
    want.append((pos, virtual_size, None))
    got = _qemu_segments(path)
    if isinstance(got, str):
        return got
    i = j = pos = 0
    while pos < virtual_size:
        while j < len(want) and want[j][1] <= pos:
            j += 1
        if i == len(got):
            return f"qemu-img map ends at guest offset {pos}, expected {virtual_size} bytes"
        mine, theirs = _at(want[j], pos), _at(got[i], pos)
        if mine[1] != theirs[1]:
            return f"guest offset {pos}: qemu-img map has {_say(theirs)}, expected {_say(mine)}"
        pos += min(mine[0], theirs[0])
        i += got[i][1] <= pos
    if got and got[-1][1] > virtual_size:
        return f"qemu-img map goes on to guest offset {got[-1][1]}, past {virtual_size} bytes"
    return None


def _qemu_segments(path: str) -> list[_Seg] | str:
    """``qemu-img map`` of a qcow2 as segments, or what is wrong with it."""
    got: list[_Seg] = []
    for ext in qemu_img.map(path, "qcow2"):
        if ext.length == 0:
            continue
        if ext.start != (got[-1][1] if got else 0):
            return f"guest offset {ext.start}: qemu-img map does not continue the previous extent"
        if ext.data and not ext.zero and ext.depth == 0 and ext.offset is not None:
            got.append((ext.start, ext.end, ext.offset))
        elif not ext.data and ext.zero:
            got.append((ext.start, ext.end, None))
        else:
            return f"guest offset {ext.start}: qemu-img map reports an unexpected extent {ext}"
    return got


def _at(seg: _Seg, pos: int) -> tuple[int, int | None]:
    """(bytes left, host offset or None for zeros) of a segment seen from guest ``pos``."""
    start, end, host = seg
    return end - pos, None if host is None else host + pos - start


def _say(view: tuple[int, int | None]) -> str:
    length, host = view
    return f"{'zeros' if host is None else f'data at host offset {host}'} for {length} bytes"
