"""Qcow2StreamWriter against the real qemu-img: every image is checked, compared with a raw
reference holding the same guest data, converted back to raw and mapped."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import struct
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from providers.common import qemu_img
from providers.common.qcow2stream import (
    CLUSTER_SIZE,
    HEADER_PIECE,
    MappedRun,
    Qcow2Layout,
    Qcow2StreamWriter,
    map_matches,
    refcount_layout,
    stream_qcow2,
)
from virtrigaud.errors import (
    AlreadyExists,
    ChecksumMismatch,
    InternalError,
    InvalidArgument,
    VirtrigaudError,
)

MIB = 1024 * 1024
CS = CLUSTER_SIZE


class Pair:
    """The writer under test plus a raw file receiving the same guest writes."""

    def __init__(self, tmp: Path, size: int, **kwargs: int | bool) -> None:
        self.size = size
        self.qcow = tmp / "disk.qcow2"
        self.raw = tmp / "disk.raw"
        self.writer = Qcow2StreamWriter(str(self.qcow), size, **kwargs)  # type: ignore[arg-type]
        with open(self.raw, "wb") as f:
            f.truncate(size)

    def write(self, offset: int, data: bytes | memoryview) -> None:
        self.writer.write(offset, data)
        with open(self.raw, "r+b") as f:
            f.seek(offset)
            f.write(bytes(data))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


def verify(pair: Pair, tmp: Path, *, convert: bool = True) -> None:
    """Clean check, right size, same guest bytes as the raw reference, map as reported."""
    result = qemu_img.check(pair.qcow, "qcow2")
    assert result.clean, result
    info = qemu_img.info(pair.qcow, "qcow2")
    assert (info.virtual_size, info.cluster_size, info.compat) == (pair.size, CS, "1.1")
    assert not info.dirty and not info.corrupt and info.backing_filename is None
    assert qemu_img.compare(pair.raw, pair.qcow, a_format="raw", b_format="qcow2")
    assert map_matches(str(pair.qcow), pair.writer.mapping(), pair.size) is None
    assert sum(run.length for run in pair.writer.mapping()) <= pair.writer.data_bytes
    if convert:
        back = tmp / "back.raw"
        qemu_img.convert(pair.qcow, back, src_format="qcow2", dst_format="raw")
        assert sha256(back) == sha256(pair.raw)


def expected_runs(clusters_in_host_order: list[int], size: int) -> list[MappedRun]:
    """The mapping an append-only writer must produce: k-th stored cluster at host k+1."""
    host = {c: (i + 1) * CS for i, c in enumerate(clusters_in_host_order)}
    runs: list[MappedRun] = []
    for c in sorted(host):
        start, length = c * CS, min(CS, size - c * CS)
        if runs and runs[-1].start + runs[-1].length == start:
            last = runs[-1]
            if last.host + last.length == host[c]:
                runs[-1] = MappedRun(last.start, last.length + length, last.host)
                continue
        runs.append(MappedRun(start, length, host[c]))
    return runs


def random_guest_data(rng: random.Random, size: int) -> list[tuple[int, bytes]]:
    """A few MiB of data regions of odd sizes/offsets; the rest of the disk stays zero."""
    regions: list[tuple[int, bytes]] = []
    pos = rng.randrange(0, 3 * CS)
    while pos < size:
        length = min(rng.randrange(1, 700_000), size - pos)
        regions.append((pos, rng.randbytes(length)))
        pos += length + rng.randrange(0, 5 * MIB)
    return regions


def stream(regions: list[tuple[int, bytes]], size: int, chunk: int) -> list[tuple[int, bytes]]:
    """The whole disk as a raw stream would deliver it, cut into `chunk`-byte writes."""
    disk = bytearray(size)
    for offset, data in regions:
        disk[offset : offset + len(data)] = data
    return [(pos, bytes(disk[pos : pos + chunk])) for pos in range(0, size, chunk)]


@pytest.mark.parametrize("size", [0, 512, 8 * MIB])
def test_empty_disk(tmp_path: Path, size: int) -> None:
    pair = Pair(tmp_path, size)
    pair.writer.close()
    assert pair.writer.data_bytes == 0
    assert pair.writer.mapping() == []
    verify(pair, tmp_path)


@pytest.mark.parametrize("chunk", [MIB, 100_000, 4097, 3 * CS])
def test_ascending_stream_of_any_chunking(tmp_path: Path, chunk: int) -> None:
    size = 40 * MIB + 3 * 512  # the last cluster is partial
    rng = random.Random(chunk)
    regions = random_guest_data(rng, size)
    regions.append((size - 700, rng.randbytes(700)))  # data up to the last byte
    pair = Pair(tmp_path, size)
    for offset, data in stream(regions, size, chunk):
        pair.write(offset, data)
    pair.writer.close()
    disk = Path(pair.raw).read_bytes()
    stored = [c for c in range(-(-size // CS)) if any(disk[c * CS : (c + 1) * CS])]
    assert pair.writer.data_bytes == len(stored) * CS
    assert pair.writer.mapping() == expected_runs(stored, size)
    assert pair.writer.mapping()[-1].start + pair.writer.mapping()[-1].length == size
    verify(pair, tmp_path)


@pytest.mark.parametrize("order", ["descending", "shuffled"])
def test_whole_clusters_in_any_order(tmp_path: Path, order: str) -> None:
    size = 16 * MIB + 512
    rng = random.Random(7)
    clusters = list(range(-(-size // CS)))
    if order == "descending":
        clusters.reverse()
    else:
        rng.shuffle(clusters)
    zero = set(rng.sample(clusters, 60))
    pair = Pair(tmp_path, size)
    for c in clusters:
        length = min(CS, size - c * CS)
        pair.write(c * CS, bytes(length) if c in zero else rng.randbytes(length))
    with pytest.raises(InvalidArgument, match="already written"):
        pair.writer.write(clusters[0] * CS, b"x")  # flushed, stored
    pair.writer.close()
    stored = [c for c in clusters if c not in zero]
    assert pair.writer.data_bytes == len(stored) * CS
    assert pair.writer.mapping() == expected_runs(stored, size)
    verify(pair, tmp_path)


def test_zero_clusters_are_not_stored(tmp_path: Path) -> None:
    size = 8 * MIB
    pair = Pair(tmp_path, size)
    data = bytearray(4 * MIB)  # clusters 0..63: only 3, 4 and 40 hold a non-zero byte
    data[3 * CS + 17] = 1
    data[5 * CS - 1] = 2
    data[40 * CS] = 3
    for pos in range(0, len(data), 100_000):
        pair.write(pos, bytes(data[pos : pos + 100_000]))
    pair.write(6 * MIB, bytes(MIB))  # explicit zeros: not stored either
    pair.writer.close()
    assert pair.writer.data_bytes == 3 * CS
    assert pair.writer.mapping() == [
        MappedRun(3 * CS, 2 * CS, CS),
        MappedRun(40 * CS, CS, 3 * CS),
    ]
    extents = qemu_img.map(pair.qcow, "qcow2")
    assert [(e.start, e.length) for e in extents if e.data] == [(3 * CS, 2 * CS), (40 * CS, CS)]
    verify(pair, tmp_path)


def test_gaps_inside_a_cluster_read_as_zeros(tmp_path: Path) -> None:
    pair = Pair(tmp_path, 4 * MIB)
    pair.write(10, b"a" * 100)
    pair.write(500, b"b" * 3)  # gap 110..500 inside cluster 0
    pair.write(CS - 1, b"cd")  # crosses into cluster 1
    pair.write(CS + 9, b"e")  # gap in cluster 1
    pair.write(3 * CS + 5, memoryview(b"xyz")[1:])  # skips cluster 2; a memoryview
    with pytest.raises(InvalidArgument, match="must ascend"):
        pair.writer.write(3 * CS + 6, b"!")  # back inside the cluster being assembled
    pair.write(2 * CS + 7, b"late")  # cluster 2 was never written: allowed out of order
    with pytest.raises(InvalidArgument, match="already written"):
        pair.writer.write(CS - 5, b"!")  # cluster 0 was flushed
    pair.writer.close()
    assert pair.writer.mapping() == [
        MappedRun(0, 2 * CS, CS),
        MappedRun(2 * CS, CS, 4 * CS),
        MappedRun(3 * CS, CS, 3 * CS),
    ]
    verify(pair, tmp_path)


def test_sparse_8gib_disk_needs_many_l2_tables(tmp_path: Path) -> None:
    size = 8 * 1024 * MIB
    rng = random.Random(8)
    pair = Pair(tmp_path, size, durable=False)
    starts = [*sorted(rng.sample(range(size // CS), 40)), size // CS - 1]
    for c in starts:
        pair.write(c * CS + 100, rng.randbytes(CS - 100))
    pair.writer.close()
    l1_indexes = {c * CS // (512 * MIB) for c in starts}
    assert len(l1_indexes) > 10  # that many L2 tables
    assert pair.writer.mapping() == expected_runs(starts, size)
    verify(pair, tmp_path, convert=False)  # an 8 GiB raw is too much to hash
    with open(pair.qcow, "rb") as f:
        f.seek(36)
        l1_size = struct.unpack(">I", f.read(4))[0]
    assert l1_size == 16
    # the file holds header + data + L2 tables + L1 + 1 refcount block + 1 refcount table
    assert os.path.getsize(pair.qcow) == (1 + len(starts) + len(l1_indexes) + 3) * CS


@pytest.mark.parametrize("cluster_bits", [9, 12])
def test_many_refcount_blocks_and_table_clusters(tmp_path: Path, cluster_bits: int) -> None:
    """Small clusters make a few MiB need many refcount blocks, several refcount-table
    clusters, a multi-cluster L1 and hundreds of L2 tables: all checked by qemu."""
    cs = 1 << cluster_bits
    size = 12 * MIB + 512
    rng = random.Random(cluster_bits)
    regions = [(pos, rng.randbytes(rng.randrange(800_000, MIB))) for pos in range(0, 11 * MIB, MIB)]
    regions.append((size - 100, rng.randbytes(100)))
    pair = Pair(tmp_path, size, cluster_bits=cluster_bits, durable=False)
    for offset, data in stream(regions, size, 100_000):
        pair.write(offset, data)
    pair.writer.close()
    with open(pair.qcow, "rb") as f:
        f.seek(48)
        reftable_offset, reftable_clusters = struct.unpack(">QI", f.read(12))
        f.seek(reftable_offset)
        reftable = struct.unpack(f">{reftable_clusters * cs // 8}Q", f.read(reftable_clusters * cs))
    blocks = sum(1 for entry in reftable if entry)
    assert blocks == -(-os.path.getsize(pair.qcow) // cs // (cs // 2))
    assert blocks > 1
    if cluster_bits == 9:
        assert reftable_clusters > 1
    assert qemu_img.check(pair.qcow, "qcow2").clean
    info = qemu_img.info(pair.qcow, "qcow2")
    assert (info.virtual_size, info.cluster_size) == (size, cs)
    assert qemu_img.compare(pair.raw, pair.qcow, a_format="raw", b_format="qcow2")
    assert map_matches(str(pair.qcow), pair.writer.mapping(), size) is None
    back = tmp_path / "back.raw"
    qemu_img.convert(pair.qcow, back, src_format="qcow2", dst_format="raw")
    assert sha256(back) == sha256(pair.raw)


@pytest.mark.parametrize(("per_block", "per_table"), [(4, 2), (8, 1), (32768, 8192)])
def test_refcount_layout_is_the_least_fixed_point(per_block: int, per_table: int) -> None:
    def fits(n: int, blocks: int, table: int) -> bool:
        return blocks * per_block >= n + blocks + table and table * per_table >= blocks

    edges = [per_block * k + d for k in (1, 2, per_table, per_table + 1) for d in range(-3, 3)]
    for n in [*range(0, 200), *edges]:
        blocks, table = refcount_layout(n, per_block=per_block, per_table_cluster=per_table)
        assert fits(n, blocks, table), (n, blocks, table)
        smaller = [
            (b, t) for b in range(blocks + 1) for t in range(table + 1) if (b, t) != (blocks, table)
        ]
        assert not any(fits(n, b, t) for b, t in smaller), (n, blocks, table)
    assert refcount_layout(32766) == (1, 1)  # 32766 + block + table = 32768: still one block
    assert refcount_layout(32767) == (2, 1)


def test_map_matches_reports_a_patched_l2_entry(tmp_path: Path) -> None:
    pair = Pair(tmp_path, 8 * MIB)
    rng = random.Random(3)
    for c in (2, 3, 9):
        pair.write(c * CS, rng.randbytes(CS))
    pair.writer.close()
    mapping = pair.writer.mapping()
    assert mapping == [MappedRun(2 * CS, 2 * CS, CS), MappedRun(9 * CS, CS, 3 * CS)]
    assert map_matches(str(pair.qcow), mapping, pair.size) is None
    wrong = [MappedRun(2 * CS, 2 * CS, CS), MappedRun(9 * CS, CS, 4 * CS)]
    assert map_matches(str(pair.qcow), wrong, pair.size) == (
        f"guest offset {9 * CS}: qemu-img map has data at host offset {3 * CS} for {CS} bytes, "
        f"expected data at host offset {4 * CS} for {CS} bytes"
    )
    with open(pair.qcow, "r+b") as f:  # swap the L2 entries of guest clusters 3 and 9
        f.seek(40)
        l1_offset = struct.unpack(">Q", f.read(8))[0]
        f.seek(l1_offset)
        l2_offset = struct.unpack(">Q", f.read(8))[0] & ((1 << 56) - 512)
        f.seek(l2_offset + 3 * 8)
        entry3 = f.read(8)
        f.seek(l2_offset + 9 * 8)
        entry9 = f.read(8)
        f.seek(l2_offset + 3 * 8)
        f.write(entry9)
        f.seek(l2_offset + 9 * 8)
        f.write(entry3)
    assert map_matches(str(pair.qcow), mapping, pair.size) == (
        f"guest offset {3 * CS}: qemu-img map has data at host offset {3 * CS} for {CS} bytes, "
        f"expected data at host offset {2 * CS} for {CS} bytes"
    )
    assert not qemu_img.compare(pair.raw, pair.qcow, a_format="raw", b_format="qcow2")


def test_map_matches_reports_size_and_zero_differences(tmp_path: Path) -> None:
    pair = Pair(tmp_path, 4 * MIB)
    pair.write(CS, b"\x01" * CS)
    pair.writer.close()
    assert map_matches(str(pair.qcow), [], pair.size) == (
        f"guest offset {CS}: qemu-img map has data at host offset {CS} for {CS} bytes, "
        f"expected zeros for {4 * MIB - CS} bytes"
    )
    assert map_matches(str(pair.qcow), pair.writer.mapping(), 8 * MIB) == (
        f"qemu-img map ends at guest offset {4 * MIB}, expected {8 * MIB} bytes"
    )
    assert map_matches(str(pair.qcow), pair.writer.mapping(), 2 * MIB) == (
        f"qemu-img map goes on to guest offset {4 * MIB}, past {2 * MIB} bytes"
    )


def test_write_outside_the_disk_is_refused(tmp_path: Path) -> None:
    writer = Qcow2StreamWriter(str(tmp_path / "d.qcow2"), MIB + 512)
    with pytest.raises(InvalidArgument, match="outside the virtual disk"):
        writer.write(MIB, b"x" * 513)
    with pytest.raises(InvalidArgument, match="outside the virtual disk"):
        writer.write(-1, b"x")
    writer.write(MIB, b"x" * 512)  # exactly up to the end is fine
    writer.close()
    writer.close()  # idempotent
    with pytest.raises(InternalError, match="closed"):
        writer.write(0, b"x")


@pytest.mark.parametrize("size", [-512, 1000, 513, (1 << 51) + 512])
def test_virtual_sizes_qemu_would_not_keep_are_refused(tmp_path: Path, size: int) -> None:
    with pytest.raises(InvalidArgument, match="multiple of 512"):
        Qcow2StreamWriter(str(tmp_path / "d.qcow2"), size)
    assert not (tmp_path / "d.qcow2").exists()


def test_largest_virtual_size_is_what_qemu_accepts(tmp_path: Path) -> None:
    size = 1 << 51  # 2 PiB: qemu's L1 limit (32 MiB of entries) with 64 KiB clusters
    with pytest.raises(VirtrigaudError, match="too large"):
        qemu_img.create(tmp_path / "qemu.qcow2", "qcow2", size + 512)
    path = tmp_path / "d.qcow2"
    with Qcow2StreamWriter(str(path), size, durable=False) as writer:
        writer.write(size - 3, b"end")
    assert qemu_img.check(path, "qcow2").clean
    assert qemu_img.info(path, "qcow2").virtual_size == size
    assert writer.mapping() == [MappedRun(size - CS, CS, CS)]


def test_abort_removes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "d.qcow2"
    writer = Qcow2StreamWriter(str(path), 4 * MIB)
    writer.write(0, b"\x01" * (CS + 5))
    assert path.exists()
    writer.abort()
    assert not path.exists()
    writer.abort()  # already gone: no error
    with pytest.raises(InternalError, match="aborted"):
        writer.close()


def test_context_manager_closes_or_removes(tmp_path: Path) -> None:
    path = tmp_path / "d.qcow2"
    with pytest.raises(RuntimeError), Qcow2StreamWriter(str(path), 4 * MIB) as writer:
        writer.write(0, b"\x01" * CS)
        raise RuntimeError("source failed")
    assert not path.exists()
    with Qcow2StreamWriter(str(path), 4 * MIB) as writer:
        writer.write(0, b"\x01" * 100)
    assert qemu_img.check(path, "qcow2").clean
    assert writer.mapping() == [MappedRun(0, CS, CS)]
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_existing_path_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.qcow2"
    path.write_bytes(b"keep me")
    with pytest.raises(AlreadyExists, match="already exists"):
        Qcow2StreamWriter(str(path), 4 * MIB)
    assert path.read_bytes() == b"keep me"


# ---------------------------------------------------------------- metadata-first layout

GIB = 1024 * MIB
Regions = list[tuple[int, bytes]]


def write_raw_file(path: Path, size: int, regions: Regions) -> None:
    """A sparse raw file: holes except for ``regions``."""
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in regions:
            f.seek(offset)
            f.write(data)


def raw_data_ranges(raw: Path) -> list[tuple[int, int]]:
    return [(e.start, e.end) for e in qemu_img.map(raw, "raw") if e.data]


def scrambled(rng: random.Random, ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The same bytes as ``ranges``, cut at unaligned points into overlapping pieces, with
    empty ranges mixed in, shuffled: the allocation must not depend on the presentation."""
    pieces: list[tuple[int, int]] = []
    for start, end in ranges:
        cuts = sorted({start, end, *(rng.randrange(start, end) for _ in range(2))})
        for a, b in itertools.pairwise(cuts):
            pieces.append((max(start, a - rng.randrange(0, 5000)), b))
        pieces.append((end, end))
    rng.shuffle(pieces)
    return pieces


def touched_clusters(ranges: list[tuple[int, int]], cs: int) -> list[int]:
    return sorted({c for s, e in ranges if s < e for c in range(s // cs, -(-e // cs))})


def layout_runs(layout: Qcow2Layout) -> list[MappedRun]:
    """The mapping qemu must report: cluster i of ``clusters`` at cluster_host_offset(i)."""
    cs, runs = layout.cluster_size, list[MappedRun]()
    for i, c in enumerate(layout.clusters):
        start, host = c * cs, layout.cluster_host_offset(i)
        length = min(cs, layout.virtual_size - start)
        last = runs[-1] if runs else None
        if last and last.start + last.length == start and last.host + last.length == host:
            runs[-1] = MappedRun(last.start, last.length + length, last.host)
        else:
            runs.append(MappedRun(start, length, host))
    return runs


def export(layout: Qcow2Layout, raw: Path, dest: Path) -> None:
    fd = os.open(raw, os.O_RDONLY)
    try:
        with open(dest, "wb") as out:
            for piece in stream_qcow2(layout, lambda off, n: os.pread(fd, n, off)):
                out.write(piece)
    finally:
        os.close(fd)


def verify_layout(layout: Qcow2Layout, raw: Path, qcow: Path, tmp: Path, *, convert: bool) -> None:
    """Clean check, right size, the raw reference's guest bytes, mapped where the layout
    says, and every data cluster holding its guest cluster, in ascending guest order."""
    cs = layout.cluster_size
    assert os.path.getsize(qcow) == layout.object_size
    result = qemu_img.check(qcow, "qcow2")
    assert result.clean and result.leaks == 0 and result.corruptions == 0, result
    assert result.image_end_offset == layout.object_size
    info = qemu_img.info(qcow)  # probed, not told
    assert (info.format, info.virtual_size, info.cluster_size) == ("qcow2", layout.virtual_size, cs)
    assert info.compat == "1.1" and not info.dirty and not info.corrupt
    assert qemu_img.compare(raw, qcow, a_format="raw", b_format="qcow2")
    assert map_matches(str(qcow), layout_runs(layout), layout.virtual_size) is None
    clusters = list(layout.clusters)
    assert clusters == sorted(set(clusters))
    counts = refcounts(qcow)  # qemu-img check does not look past the end of the file
    assert counts[: layout.object_size // cs] == [1] * (layout.object_size // cs)
    assert not any(counts[layout.object_size // cs :])
    raw_fd, qcow_fd = os.open(raw, os.O_RDONLY), os.open(qcow, os.O_RDONLY)
    try:
        for i, c in enumerate(clusters):
            host = layout.cluster_host_offset(i)
            assert host == layout.data_offset + i * cs
            guest = os.pread(raw_fd, cs, c * cs).ljust(cs, b"\0")
            assert os.pread(qcow_fd, cs, host) == guest, f"guest cluster {c}"
    finally:
        os.close(raw_fd)
        os.close(qcow_fd)
    if convert:
        back = tmp / "back.raw"
        qemu_img.convert(qcow, back, src_format="qcow2", dst_format="raw")
        assert sha256(back) == sha256(raw)


def header_fields(path: Path) -> dict[str, int]:
    with open(path, "rb") as f:
        head = f.read(64)
    names = ("cluster_bits", "size", "l1_size", "l1_offset", "reftable", "reftable_clusters")
    values = struct.unpack_from(">IQ4xIQQI", head, 20)
    return dict(zip(names, values, strict=True))


def refcounts(path: Path) -> list[int]:
    """The 16-bit refcounts of the refcount blocks, in cluster order: the clusters past
    them have none (the blocks must be a prefix of the refcount table)."""
    fields = header_fields(path)
    cs = 1 << fields["cluster_bits"]
    counts: list[int] = []
    with open(path, "rb") as f:
        f.seek(fields["reftable"])
        entries = fields["reftable_clusters"] * cs // 8
        table = struct.unpack(f">{entries}Q", f.read(entries * 8))
        blocks = [block for block in table if block]
        assert table[: len(blocks)] == tuple(blocks)
        for block in blocks:
            f.seek(block)
            counts += struct.unpack(f">{cs // 2}H", f.read(cs))
    return counts


def _sparse(size: int) -> Regions:
    return random_guest_data(random.Random(size), size)


def _two_l2_tables(size: int) -> Regions:
    rng = random.Random(15)
    return [
        (0, rng.randbytes(5000)),
        (512 * MIB - 1000, rng.randbytes(3000)),  # crosses into the second L2 table
        (GIB + 12345, rng.randbytes(200_000)),
        (size - 512, rng.randbytes(512)),
    ]


LAYOUT_CASES: dict[str, tuple[int, Callable[[int], Regions]]] = {
    "sparse": (40 * MIB + 1536, _sparse),
    "dense": (3 * MIB + 512, lambda s: [(0, random.Random(2).randbytes(s))]),
    "tail-cluster": (10 * MIB + 1536, lambda s: [(0, b"A"), (s - 100, random.randbytes(100))]),
    "unaligned-size": (5 * MIB + 3 * 512, lambda s: [(s - 7, b"theend!"), (4096, b"x" * 70000)]),
    "empty": (0, lambda s: []),
    "empty-8mib": (8 * MIB, lambda s: []),
    "two-l2-tables": (3 * GIB // 2, _two_l2_tables),  # 1.5 GiB: three L2 tables
}


@pytest.mark.parametrize("case", list(LAYOUT_CASES))
def test_layout_streams_an_image_qemu_reads(tmp_path: Path, case: str) -> None:
    size, make = LAYOUT_CASES[case]
    raw, qcow = tmp_path / "src.raw", tmp_path / "out.qcow2"
    write_raw_file(raw, size, make(size))
    ranges = raw_data_ranges(raw)
    given = scrambled(random.Random(size), ranges)
    layout = Qcow2Layout(size, iter(given))  # any iterable
    assert list(layout.clusters) == touched_clusters(ranges, CS)
    assert layout.clusters.itemsize == 4
    export(layout, raw, qcow)
    tables = len({c * CS // (512 * MIB) for c in layout.clusters})
    fields = header_fields(qcow)
    assert fields["l1_size"] == -(-size // (512 * MIB))
    assert fields["l1_offset"] == (CS if size else 0)
    assert fields["reftable"] == CS + (CS if size else 0)
    assert fields["reftable_clusters"] == 1
    # header, L1, refcount table, one refcount block, the L2 tables, then data
    assert layout.data_offset == (3 + (size > 0) + tables) * CS
    assert layout.object_size == layout.data_offset + len(layout.clusters) * CS
    if case == "two-l2-tables":
        assert tables == 3
    verify_layout(layout, raw, qcow, tmp_path, convert=size <= 64 * MIB)


def test_layout_stores_claimed_zero_clusters(tmp_path: Path) -> None:
    """Ranges that turn out to hold zeros are still allocated: qemu maps them as data."""
    size = 8 * MIB
    raw, qcow = tmp_path / "src.raw", tmp_path / "out.qcow2"
    write_raw_file(raw, size, [(3 * CS + 5, b"data"), (5 * CS, b"five"), (MIB, bytes(CS))])
    ranges = [(3 * CS + 5, 3 * CS + 9), (5 * CS, 5 * CS + 4), (MIB - 1, MIB + 1), (7 * MIB, size)]
    layout = Qcow2Layout(size, ranges)
    first = MIB // CS
    assert list(layout.clusters) == [3, 5, first - 1, first, *range(7 * MIB // CS, size // CS)]
    export(layout, raw, qcow)
    data = [(e.start, e.end) for e in qemu_img.map(qcow, "qcow2") if e.data]
    assert data == [(3 * CS, 4 * CS), (5 * CS, 6 * CS), (MIB - CS, MIB + CS), (7 * MIB, size)]
    verify_layout(layout, raw, qcow, tmp_path, convert=True)


@pytest.mark.parametrize("cluster_bits", [9, 12])
def test_layout_with_many_refcount_blocks(tmp_path: Path, cluster_bits: int) -> None:
    """Small clusters make a few MiB need many refcount blocks, several refcount-table
    clusters, a multi-cluster L1 and hundreds of L2 tables: all checked by qemu."""
    cs = 1 << cluster_bits
    size = 12 * MIB + 512
    rng = random.Random(cluster_bits)
    regions = [(pos, rng.randbytes(rng.randrange(800_000, MIB))) for pos in range(0, 11 * MIB, MIB)]
    regions.append((size - 100, rng.randbytes(100)))
    raw, qcow = tmp_path / "src.raw", tmp_path / "out.qcow2"
    write_raw_file(raw, size, regions)
    ranges = raw_data_ranges(raw)
    layout = Qcow2Layout(size, scrambled(rng, ranges), cluster_bits=cluster_bits)
    assert list(layout.clusters) == touched_clusters(ranges, cs)
    export(layout, raw, qcow)
    fields = header_fields(qcow)
    assert fields["cluster_bits"] == cluster_bits
    with open(qcow, "rb") as f:
        f.seek(fields["reftable"])
        count = fields["reftable_clusters"] * cs // 8
        reftable = struct.unpack(f">{count}Q", f.read(count * 8))
        f.seek(fields["l1_offset"])
        l1 = struct.unpack(f">{fields['l1_size']}Q", f.read(fields["l1_size"] * 8))
    blocks = [entry for entry in reftable if entry]
    assert len(blocks) == -(-layout.object_size // cs // (cs // 2)) > 1
    assert blocks == [blocks[0] + b * cs for b in range(len(blocks))]  # consecutive
    l2_tables = [entry & ~(1 << 63) for entry in l1 if entry]
    assert all(entry >> 63 for entry in l1 if entry)  # COPIED
    assert len(l2_tables) == len({c >> (cluster_bits - 3) for c in layout.clusters}) > 1
    assert l2_tables == sorted(l2_tables) and l2_tables[-1] + cs == layout.data_offset
    if cluster_bits == 9:
        assert len(l2_tables) > 100
        assert fields["reftable_clusters"] > 1
        assert fields["l1_size"] * 8 > cs  # a multi-cluster L1 table
    verify_layout(layout, raw, qcow, tmp_path, convert=True)


def test_layout_of_the_largest_virtual_size(tmp_path: Path) -> None:
    """2 PiB: guest cluster indexes above 2**32 (an 8-byte array) and a 32 MiB L1 table,
    generated in pieces; the data lands at the offsets the layout names."""
    size = 1 << 51
    tail = size - 3 * CS
    layout = Qcow2Layout(size, [(size - 3, size), (10, 20), (tail + 1, tail + 2)])
    assert layout.clusters.typecode == "Q"
    assert list(layout.clusters) == [0, tail // CS, size // CS - 1]
    pieces = [len(piece) for piece in layout.iter_header()]
    assert max(pieces) <= HEADER_PIECE and sum(pieces) == layout.data_offset
    assert len(pieces) > 32  # the L1 table alone is 32 MiB

    def read(offset: int, length: int) -> bytes:
        return hashlib.sha256(offset.to_bytes(8, "big")).digest() * (length // 32)

    path = tmp_path / "big.qcow2"
    with open(path, "wb") as f:
        for piece in stream_qcow2(layout, read):
            f.write(piece)
    assert os.path.getsize(path) == layout.object_size
    result = qemu_img.check(path, "qcow2")
    assert result.clean and result.image_end_offset == layout.object_size, result
    assert qemu_img.info(path).virtual_size == size
    # qemu-img map of all 2 PiB takes seconds: map each cluster and its neighbours alone.
    allocated = {c: layout.cluster_host_offset(i) for i, c in enumerate(layout.clusters)}
    near = {n for a in allocated for n in (a - 1, a, a + 1) if 0 <= n < size // CS}
    for c in sorted(near):
        host = allocated.get(c)
        want = {"start": c * CS, "length": CS, "data": host is not None, "zero": host is None}
        assert map_window(path, c * CS, CS) == [want | ({} if host is None else {"offset": host})]
    with open(path, "rb") as image:
        for i, c in enumerate(layout.clusters):
            image.seek(layout.cluster_host_offset(i))
            assert image.read(CS) == read(c * CS, CS)


def map_window(path: Path, start: int, length: int) -> list[dict[str, object]]:
    """``qemu-img map`` of guest ``[start, start + length)`` only (fields of interest)."""
    args = [qemu_img.binary(), "map", "--output=json", "-f", "qcow2"]
    args += [f"--start-offset={start}", f"--max-length={length}", str(path)]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    keys = ("start", "length", "data", "zero", "offset")
    return [{k: e[k] for k in keys if k in e} for e in json.loads(out)]


HEADER_LENGTH_WITH_END = 112 + 8  # header, then the end-of-extensions marker


def test_header_is_the_writers(tmp_path: Path) -> None:
    """Same header as Qcow2StreamWriter writes, apart from where the tables are."""
    size = 8 * MIB + 512
    path = tmp_path / "w.qcow2"
    with Qcow2StreamWriter(str(path), size, durable=False) as writer:
        writer.write(CS, b"x")
    theirs = path.read_bytes()[:CS]
    ours = next(Qcow2Layout(size, [(CS, CS + 1)]).iter_header())[:CS]
    offsets = slice(40, 60)  # L1 offset, refcount table offset and clusters
    assert ours[: offsets.start] + ours[offsets.stop :] == theirs[:40] + theirs[60:]
    assert ours[offsets] != theirs[offsets]
    assert ours[HEADER_LENGTH_WITH_END:] == bytes(CS - HEADER_LENGTH_WITH_END)


def test_layout_is_deterministic(tmp_path: Path) -> None:
    size = 600 * MIB + 512
    ranges = [(0, 10), (5 * MIB + 3, 7 * MIB), (513 * MIB, 514 * MIB), (size - 1, size)]

    def read(offset: int, length: int) -> bytes:
        return random.Random(offset).randbytes(length)

    def digest(pieces: Iterator[bytes]) -> str:
        h = hashlib.sha256()
        for piece in pieces:
            h.update(piece)
        return h.hexdigest()

    a = digest(stream_qcow2(Qcow2Layout(size, ranges), read))
    shuffled = scrambled(random.Random(1), ranges)
    assert digest(stream_qcow2(Qcow2Layout(size, shuffled), read)) == a
    assert digest(stream_qcow2(Qcow2Layout(size, ranges), read)) == a
    other = digest(stream_qcow2(Qcow2Layout(size, [*ranges, (100 * MIB, 100 * MIB + 1)]), read))
    assert other != a


@pytest.mark.parametrize(
    ("size", "ranges", "kwargs", "match"),
    [
        (1000, [], {}, "multiple of 512"),
        (513, [], {}, "multiple of 512"),
        (-512, [], {}, "multiple of 512"),
        ((1 << 51) + 512, [], {}, "multiple of 512"),
        (MIB, [(-1, 10)], {}, "outside the disk"),
        (MIB, [(0, 10), (MIB - 10, MIB + 1)], {}, "outside the disk"),
        (MIB, [(20, 10)], {}, "outside the disk"),
        (MIB, [], {"cluster_bits": 8}, "cluster_bits"),
        (MIB, [], {"cluster_bits": 22}, "cluster_bits"),
        (1 << 51, [(0, 1 << 51)], {}, "refcount limit"),  # refused before any allocation
    ],
)
def test_layout_refuses_bad_input(
    size: int, ranges: list[tuple[int, int]], kwargs: dict[str, int], match: str
) -> None:
    with pytest.raises(InvalidArgument, match=match):
        Qcow2Layout(size, ranges, **kwargs)


def test_cluster_host_offset_out_of_range() -> None:
    layout = Qcow2Layout(MIB, [(0, 1)])
    assert layout.cluster_host_offset(0) == layout.data_offset
    for index in (-1, 1):
        with pytest.raises(InternalError, match="out of range"):
            layout.cluster_host_offset(index)


@pytest.mark.parametrize("delta", [-1, 1])
def test_stream_refuses_a_wrong_length_read(delta: int) -> None:
    layout = Qcow2Layout(MIB, [(0, 3 * CS)])
    with pytest.raises(ChecksumMismatch, match="shrink"):
        list(stream_qcow2(layout, lambda off, n: bytes(n + delta)))


def test_stream_batches_consecutive_clusters_and_pads_the_tail() -> None:
    size = 16 * MIB + 512
    layout = Qcow2Layout(size, [(8 * MIB, 8 * MIB + 1), (0, 5 * MIB), (size - 1, size)])
    calls: list[tuple[int, int]] = []

    def read(offset: int, length: int) -> bytes:
        calls.append((offset, length))
        return b"\xff" * length

    pieces = list(stream_qcow2(layout, read))
    assert calls == [(0, 4 * MIB), (4 * MIB, MIB), (8 * MIB, CS), (16 * MIB, 512)]
    assert sum(map(len, pieces)) == layout.object_size
    assert pieces[-1] == b"\xff" * 512 + bytes(CS - 512)
