"""monolithicSparse vmdk streams (providers/common/vmdkstream.py) against the real qemu-img."""

from __future__ import annotations

import hashlib
import os
import random
import re
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from providers.common import qemu_img
from providers.common.vmdkstream import (
    GRAIN_SIZE,
    NotStreamable,
    SparseVmdkLayout,
    SparseVmdkStreamReader,
    stream_sparse_vmdk,
)
from virtrigaud.errors import (
    ChecksumMismatch,
    InternalError,
    InvalidArgument,
    VirtrigaudError,
)

from .helpers import MIB, write_raw

GIB = 1024 * MIB
HEADER = struct.Struct("<4sIIQQQQIQQQB4sH")
Writes = tuple[tuple[int, bytes], ...]


# ---------------------------------------------------------------- helpers


def random_writes(seed: int, size: int, count: int, max_len: int = 100_000) -> Writes:
    rng = random.Random(seed)
    writes = []
    for _ in range(count):
        length = rng.randrange(1, max_len)
        writes.append((rng.randrange(0, size - length), rng.randbytes(length)))
    return tuple(writes)


def reference(size: int, writes: Writes) -> bytes:
    """The guest bytes, padded to a whole sector as qemu shows the disk."""
    data = bytearray(-(-size // 512) * 512)
    for offset, chunk in writes:
        data[offset : offset + len(chunk)] = chunk
    return bytes(data)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def data_ranges(raw: Path) -> list[tuple[int, int]]:
    return [(e.start, e.end) for e in qemu_img.map(raw, "raw") if e.data]


def export(layout: SparseVmdkLayout, raw: Path, dest: Path) -> None:
    fd = os.open(raw, os.O_RDONLY)
    try:
        with open(dest, "wb") as out:
            for piece in stream_sparse_vmdk(layout, lambda off, n: os.pread(fd, n, off)):
                out.write(piece)
    finally:
        os.close(fd)


def parse(
    data: bytes, chunk: int, reader: SparseVmdkStreamReader | None = None
) -> tuple[bytes, SparseVmdkStreamReader]:
    """Feed ``data`` in ``chunk``-byte pieces; the guest disk assembled from the output."""
    reader = reader or SparseVmdkStreamReader()
    disk = bytearray()
    for start in range(0, len(data), chunk):
        for offset, piece in reader.feed(data[start : start + chunk]):
            if reader.virtual_size is not None and len(disk) < reader.virtual_size:
                disk.extend(bytes(reader.virtual_size - len(disk)))
            assert offset + len(piece) <= len(disk)
            disk[offset : offset + len(piece)] = piece
    reader.finish()
    assert reader.virtual_size is not None
    disk.extend(bytes(reader.virtual_size - len(disk)))
    return bytes(disk), reader


def qemu_raw(vmdk: Path, tmp: Path) -> bytes:
    out = tmp / (vmdk.name + ".out.raw")
    qemu_img.convert(vmdk, out, src_format="vmdk", dst_format="raw", overwrite=True)
    return out.read_bytes()


def mapped_grains(vmdk: Path) -> dict[int, int]:
    """guest grain -> object offset, for every grain qemu-img map reports as data."""
    mapped = {}
    for extent in qemu_img.map(vmdk, "vmdk"):
        if extent.data:
            assert extent.offset is not None and extent.start % GRAIN_SIZE == 0
            for g in range(extent.start // GRAIN_SIZE, -(-extent.end // GRAIN_SIZE)):
                mapped[g] = extent.offset + g * GRAIN_SIZE - extent.start
    return mapped


def fields(data: bytes | bytearray) -> dict[str, int]:
    names: tuple[str, ...] = ("version", "flags", "capacity", "grain", "desc", "desc_size")
    names += ("gtes", "rgd", "gd", "overhead")
    return dict(zip(names, HEADER.unpack_from(data)[1:11], strict=True))


def gte_offset(data: bytes | bytearray, guest_grain: int) -> int:
    """Byte offset of a guest grain's entry in the primary grain table."""
    f = fields(data)
    gt_sector = struct.unpack_from("<I", data, f["gd"] * 512 + guest_grain // 512 * 4)[0]
    return int(gt_sector) * 512 + guest_grain % 512 * 4


def allocated(data: bytes | bytearray, count: int) -> list[tuple[int, int]]:
    """(guest grain, sector) of the first ``count`` allocated grains (primary tables)."""
    found = []
    for grain in range(-(-fields(data)["capacity"] // 128)):
        sector = struct.unpack_from("<I", data, gte_offset(data, grain))[0]
        if sector:
            found.append((grain, int(sector)))
        if len(found) == count:
            break
    return found


# ---------------------------------------------------------------- writer

WRITER_CASES: dict[str, tuple[int, Callable[[int], Writes]]] = {
    # > 32 MiB: two grain tables; size neither a multiple of 64 KiB nor of a table.
    "sparse": (
        40 * MIB + 1536,
        lambda s: (*random_writes(1, s, 25), (10 * GRAIN_SIZE - 1, b"xy")),
    ),
    "dense": (3 * MIB + 512, lambda s: ((0, random.Random(2).randbytes(s)),)),
    "tail-grain": (10 * MIB + 1536, lambda s: ((0, b"A"), (s - 100, random.randbytes(100)))),
    "empty": (20 * MIB, lambda s: ()),
    "many-tables": (300 * MIB, lambda s: random_writes(3, s, 40, 20_000)),
    "unaligned-size": (5 * MIB + 1000, lambda s: ((s - 7, b"theend!"), (4096, b"x" * 70000))),
}


@pytest.mark.parametrize("case", list(WRITER_CASES))
def test_written_vmdk_is_what_qemu_reads(tmp_path: Path, case: str) -> None:
    size, make = WRITER_CASES[case]
    writes = make(size)
    raw = tmp_path / "src.raw"
    write_raw(raw, size, writes)
    expected = reference(size, writes)
    layout = SparseVmdkLayout(size, data_ranges(raw))
    vmdk = tmp_path / "exported.vmdk"  # the descriptor says "disk.vmdk": informational only
    export(layout, raw, vmdk)

    data = vmdk.read_bytes()
    assert len(data) == layout.object_size
    assert data[: len(layout.header)] == layout.header
    assert len(layout.header) == layout.grain_offset * 512
    check = qemu_img.check(vmdk, "vmdk")
    assert check.supported and check.clean
    info = qemu_img.info(vmdk, "vmdk")
    assert (info.format, info.create_type) == ("vmdk", "monolithicSparse")
    assert info.virtual_size == len(expected) == layout.capacity_sectors * 512
    assert [(e.filename, e.compressed) for e in info.extents] == [(str(vmdk), False)]
    assert qemu_img.compare(raw, vmdk, a_format="raw", b_format="vmdk")
    assert sha(qemu_raw(vmdk, tmp_path)) == sha(expected)

    # qemu's map shows data exactly in the allocated grains, at the layout's offsets
    expected_map = {g: layout.grain_host_offset(i) for i, g in enumerate(layout.grains)}
    assert mapped_grains(vmdk) == expected_map
    if case == "empty":
        assert list(layout.grains) == []
    elif case == "dense":
        assert len(layout.grains) == -(-size // GRAIN_SIZE)
    else:
        assert 0 < len(layout.grains) < size // GRAIN_SIZE

    # and the stream parser reads our own output back
    disk, reader = parse(data, 100_000)
    assert sha(disk) == sha(expected)
    assert reader.grains_ascending is True
    assert reader.data_bytes == len(layout.grains) * GRAIN_SIZE


def test_grains_from_unaligned_overlapping_ranges() -> None:
    g = GRAIN_SIZE
    ranges = [(7 * g - 1, 7 * g + 1), (100, 200), (150, 70000), (5 * g, 5 * g), (3 * g, 4 * g)]
    layout = SparseVmdkLayout(9 * g - 512, ranges)
    assert list(layout.grains) == [0, 1, 3, 6, 7]
    assert layout.object_size == layout.grain_offset * 512 + 5 * g
    assert layout.grain_host_offset(2) == layout.grain_offset * 512 + 2 * g
    with pytest.raises(InternalError):
        layout.grain_host_offset(5)


def test_header_is_byte_identical_to_qemu_img_create(tmp_path: Path) -> None:
    """Identical but for the CID value (qemu's is random, printed without leading zeros,
    so the descriptor text is compared on its own, the sectors around it byte for byte)."""
    desc = slice(512, 21 * 512)  # the embedded descriptor: sectors 1-20
    cid = re.compile(rb"\nCID=[0-9a-f]{1,8}\n")
    for size in (100 * MIB, 24 * MIB + 1536, 1000):
        path = tmp_path / f"q{size}.vmdk"
        qemu_img.create(path, "vmdk", size)
        theirs = path.read_bytes()
        ours = SparseVmdkLayout(size, [], name=path.name).header
        assert len(ours) == len(theirs)
        assert ours[: desc.start] == theirs[: desc.start]
        assert ours[desc.stop :] == theirs[desc.stop :]
        text = [cid.sub(b"\nCID\n", d[desc].rstrip(b"\0")) for d in (ours, theirs)]
        assert text[0] == text[1]


def test_more_than_one_grain_directory_sector(tmp_path: Path) -> None:
    """> 128 grain tables (> 4 GiB): the directory spans two sectors."""
    size = 5 * GIB + 4096
    writes = ((0, b"first"), (4 * GIB + MIB + 3, random.randbytes(200_000)), (size - 4, b"last"))
    raw = tmp_path / "big.raw"
    write_raw(raw, size, writes)
    layout = SparseVmdkLayout(size, data_ranges(raw))
    assert fields(layout.header)["gd"] - fields(layout.header)["rgd"] > 2 + 128 * 4
    vmdk = tmp_path / "big.vmdk"
    export(layout, raw, vmdk)
    assert qemu_img.check(vmdk, "vmdk").clean
    assert qemu_img.info(vmdk, "vmdk").virtual_size == size
    assert qemu_img.compare(raw, vmdk, a_format="raw", b_format="vmdk")
    assert set(mapped_grains(vmdk)) == set(layout.grains) and len(layout.grains) == 6

    reader = SparseVmdkStreamReader()
    out = tmp_path / "imported.raw"
    with open(out, "wb") as f, open(vmdk, "rb") as src:
        while chunk := src.read(MIB):
            for offset, piece in reader.feed(chunk):
                os.pwrite(f.fileno(), piece, offset)
        reader.finish()
        f.truncate(size)
    assert qemu_img.compare(raw, out, a_format="raw", b_format="raw")


def test_descriptor_names_and_cid(tmp_path: Path) -> None:
    a = SparseVmdkLayout(MIB, [(0, 10)], name="vm 1 disk.vmdk")
    assert 'RW 2048 SPARSE "vm 1 disk.vmdk"' in a.descriptor()
    assert a.header == SparseVmdkLayout(MIB, [(0, 10)], name="vm 1 disk.vmdk").header
    assert a.cid != SparseVmdkLayout(MIB, [(0, 10 + GRAIN_SIZE)], name="vm 1 disk.vmdk").cid
    b = SparseVmdkLayout(MIB, [], cid=0xABCD)
    assert b"\nCID=0000abcd\nparentCID=ffffffff\n" in b.header
    vmdk = tmp_path / "stored-elsewhere.vmdk"
    vmdk.write_bytes(b"".join(stream_sparse_vmdk(a, lambda off, n: b"Z" * n)))
    assert qemu_img.info(vmdk, "vmdk").virtual_size == MIB
    assert qemu_raw(vmdk, tmp_path) == b"Z" * GRAIN_SIZE + bytes(MIB - GRAIN_SIZE)


@pytest.mark.parametrize(
    ("size", "ranges", "kwargs"),
    [
        (0, [], {}),
        (-512, [], {}),
        (65 * 1024 * GIB, [], {}),
        (MIB, [(0, MIB + 1)], {}),
        (MIB, [(-1, 5)], {}),
        (MIB, [(10, 5)], {}),
        (MIB, [], {"name": 'a"b.vmdk'}),
        (MIB, [], {"name": "dir/a.vmdk"}),
        (MIB, [], {"name": ""}),
        (MIB, [], {"cid": 0xFFFFFFFF}),
        (3 * 1024 * GIB, [(0, 3 * 1024 * GIB)], {}),  # > 2 TiB of grains
    ],
)
def test_layout_rejects_bad_input(
    size: int, ranges: list[tuple[int, int]], kwargs: dict[str, object]
) -> None:
    with pytest.raises(InvalidArgument):
        SparseVmdkLayout(size, ranges, **kwargs)  # type: ignore[arg-type]


def test_short_source_read_is_reported() -> None:
    layout = SparseVmdkLayout(MIB, [(0, 3 * GRAIN_SIZE)])
    with pytest.raises(ChecksumMismatch, match="shrink"):
        list(stream_sparse_vmdk(layout, lambda off, n: bytes(n - 1)))


def test_stream_batches_consecutive_grains() -> None:
    layout = SparseVmdkLayout(16 * MIB, [(0, 5 * MIB), (8 * MIB, 8 * MIB + 1)])
    calls: list[tuple[int, int]] = []

    def read(offset: int, length: int) -> bytes:
        calls.append((offset, length))
        return bytes(length)

    pieces = list(stream_sparse_vmdk(layout, read))
    assert calls == [(0, 4 * MIB), (4 * MIB, MIB), (8 * MIB, GRAIN_SIZE)]
    assert sum(map(len, pieces)) == layout.object_size


# ---------------------------------------------------------------- parser

SOURCE_SIZE = 24 * MIB + 1536
SOURCE_WRITES = (*random_writes(11, SOURCE_SIZE, 30), (SOURCE_SIZE - 5, b"tail!"))
TINY_SIZE = 2 * MIB
TINY_WRITES = ((0, b"boot"), (700_000, random.Random(5).randbytes(150_000)), (TINY_SIZE - 2, b"ok"))


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, bytes]]:
    """name -> (vmdk, expected guest bytes): made by qemu-img and by our writer."""
    root = tmp_path_factory.mktemp("vmdkstream")
    made = {}
    for label, size, writes in (
        ("", SOURCE_SIZE, SOURCE_WRITES),
        ("tiny-", TINY_SIZE, TINY_WRITES),
    ):
        raw = root / f"{label}src.raw"
        write_raw(raw, size, writes)
        qemu = root / f"{label}qemu.vmdk"
        qemu_img.convert(raw, qemu, src_format="raw", dst_format="vmdk")
        ours = root / f"{label}ours.vmdk"
        export(SparseVmdkLayout(size, data_ranges(raw)), raw, ours)
        made[f"{label}qemu"] = (qemu, reference(size, writes))
        made[f"{label}ours"] = (ours, reference(size, writes))
    return made


@pytest.mark.parametrize("source", ["qemu", "ours"])
@pytest.mark.parametrize("chunk", [4096, 100_000, MIB, 0])
def test_parse_in_chunks(sources: dict[str, tuple[Path, bytes]], source: str, chunk: int) -> None:
    path, expected = sources[source]
    data = path.read_bytes()
    disk, reader = parse(data, chunk or len(data))
    assert sha(disk) == sha(expected)
    assert reader.virtual_size == len(expected)
    assert reader.data_bytes == len(mapped_grains(path)) * GRAIN_SIZE > 0


@pytest.mark.parametrize("source", ["tiny-qemu", "tiny-ours"])
def test_parse_byte_by_byte(sources: dict[str, tuple[Path, bytes]], source: str) -> None:
    path, expected = sources[source]
    disk, reader = parse(path.read_bytes(), 1)
    assert sha(disk) == sha(expected)
    assert reader.grains_ascending is True


def test_stream_optimized_is_not_streamable(tmp_path: Path) -> None:
    raw = tmp_path / "src.raw"
    write_raw(raw, 4 * MIB, ((0, b"x" * 100_000),))
    vmdk = tmp_path / "so.vmdk"
    qemu_img.convert(raw, vmdk, src_format="raw", dst_format="vmdk", subformat="streamOptimized")
    data = vmdk.read_bytes()
    reader = SparseVmdkStreamReader()
    fed = 0
    with pytest.raises(NotStreamable, match="streamOptimized") as caught:
        for fed in range(300, len(data) + 300, 300):
            list(reader.feed(data[fed - 300 : fed]))
    assert fed == 600 and caught.value.consumed == data[:600]
    with pytest.raises(InternalError):
        reader.feed(data[600:900])


def test_delta_disk_is_refused(tmp_path: Path) -> None:
    qemu_img.create(tmp_path / "base.vmdk", "vmdk", 10 * MIB)
    child = tmp_path / "child.vmdk"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk", str(child)],
        check=True,
        cwd=tmp_path,
    )
    with pytest.raises(InvalidArgument, match="parent") as caught:
        parse(child.read_bytes(), 4096)
    assert not isinstance(caught.value, NotStreamable)


@pytest.mark.parametrize("keep", [3, 511, 5000, -1000, -1])
def test_truncated_stream(sources: dict[str, tuple[Path, bytes]], keep: int) -> None:
    data = sources["qemu"][0].read_bytes()
    reader = SparseVmdkStreamReader()
    list(reader.feed(data[:keep]))
    with pytest.raises(ChecksumMismatch, match="truncated"):
        reader.finish()


def crafted(
    sources: dict[str, tuple[Path, bytes]], tmp_path: Path, edit: Callable[[bytearray], None]
) -> tuple[bytes, Path]:
    data = bytearray(sources["qemu"][0].read_bytes())
    edit(data)
    path = tmp_path / "crafted.vmdk"
    path.write_bytes(data)
    return bytes(data), path


def put(data: bytearray, offset: int, value: int) -> None:
    struct.pack_into("<I", data, offset, value)


@pytest.mark.parametrize(
    ("what", "match"),
    [
        ("into-header", "points into the metadata"),
        ("duplicate", "the same grain"),
        ("overlap", "overlapping grains"),
        ("table-past-overhead", "past overHead"),
    ],
)
def test_crafted_tables_are_refused(
    sources: dict[str, tuple[Path, bytes]], tmp_path: Path, what: str, match: str
) -> None:
    def edit(data: bytearray) -> None:
        (g1, s1), (g2, _) = allocated(data, 2)
        if what == "into-header":
            put(data, gte_offset(data, g1), 5)  # inside the descriptor
        elif what == "duplicate":
            put(data, gte_offset(data, g2), s1)
        elif what == "overlap":
            put(data, gte_offset(data, g2), s1 + 64)
        else:
            put(data, fields(data)["gd"] * 512, fields(data)["overhead"])

    data, _ = crafted(sources, tmp_path, edit)
    with pytest.raises(NotStreamable, match=match) as caught:
        parse(data, 4096)
    assert caught.value.consumed == data[: len(caught.value.consumed)]
    assert len(caught.value.consumed) % 4096 == 0


def test_zeroed_grain_entry_reads_as_zeros(
    sources: dict[str, tuple[Path, bytes]], tmp_path: Path
) -> None:
    def edit(data: bytearray) -> None:
        grain, _ = allocated(data, 1)[0]
        put(data, 4, 2)  # version 2, flags |= zeroed-grain
        put(data, 8, fields(data)["flags"] | 4)
        put(data, gte_offset(data, grain), 1)

    data, path = crafted(sources, tmp_path, edit)
    disk, reader = parse(data, 65536)
    assert reader.zeroed_grains == 1
    expected = qemu_raw(path, tmp_path)
    assert disk == expected != sources["qemu"][1]


def test_grains_in_any_host_order(sources: dict[str, tuple[Path, bytes]], tmp_path: Path) -> None:
    def edit(data: bytearray) -> None:
        (g1, s1), (g2, s2) = allocated(data, 2)
        put(data, gte_offset(data, g1), s2)
        put(data, gte_offset(data, g2), s1)

    data, path = crafted(sources, tmp_path, edit)
    disk, reader = parse(data, 10_000)
    assert reader.grains_ascending is False
    assert disk == qemu_raw(path, tmp_path) != sources["qemu"][1]


def test_refusals_of_other_files(tmp_path: Path) -> None:
    def first_error(data: bytes) -> VirtrigaudError:
        with pytest.raises(VirtrigaudError) as caught:
            parse(data, 4096)
        return caught.value

    garbage = random.Random(9).randbytes(200_000)
    assert isinstance(first_error(garbage), InvalidArgument)
    assert isinstance(first_error(b"COWD" + garbage), NotStreamable)

    qemu_img.create(tmp_path / "flat.vmdk", "vmdk", MIB, subformat="monolithicFlat")
    qemu_img.create(tmp_path / "split.vmdk", "vmdk", MIB, subformat="twoGbMaxExtentSparse")
    descriptor = first_error((tmp_path / "flat.vmdk").read_bytes())
    assert isinstance(descriptor, NotStreamable) and "descriptor" in str(descriptor)
    assert isinstance(first_error((tmp_path / "split.vmdk").read_bytes()), NotStreamable)
    extent = first_error((tmp_path / "split-s001.vmdk").read_bytes())  # no embedded descriptor
    assert isinstance(extent, InvalidArgument) and not isinstance(extent, NotStreamable)


@pytest.mark.parametrize(
    ("offset", "value", "error"),
    [
        (4, 4, NotStreamable),  # version 4
        (20, 64, NotStreamable),  # 32 KiB grains
        (44, 0, InvalidArgument),  # no entries per grain table
        (44, 1024, InvalidArgument),
        (12, 0, InvalidArgument),  # capacity 0
        (12, 2048 + 1, InvalidArgument),  # the descriptor disagrees
        (73, 0x0A0A, ChecksumMismatch),  # damaged newline check bytes
    ],
)
def test_refused_headers(offset: int, value: int, error: type[VirtrigaudError]) -> None:
    data = bytearray(SparseVmdkLayout(MIB, [(0, 10)]).header + bytes(GRAIN_SIZE))
    struct.pack_into("<H" if offset == 73 else "<I", data, offset, value)
    with pytest.raises(error) as caught:
        parse(bytes(data), 4096)
    assert type(caught.value) is error


def test_metadata_limit(sources: dict[str, tuple[Path, bytes]]) -> None:
    data = sources["qemu"][0].read_bytes()
    with pytest.raises(NotStreamable, match="too large"):
        parse(data, 4096, SparseVmdkStreamReader(max_metadata=4096))


def test_fuzz_lite_metadata_flips(sources: dict[str, tuple[Path, bytes]], tmp_path: Path) -> None:
    """Damaged metadata: a virtrigaud error or data -- and then qemu's data when qemu reads it."""
    original = sources["tiny-qemu"][0].read_bytes()
    f = fields(original)
    desc_len = original.index(b"\0", 512) - 512
    tables = (f["rgd"] * 512, f["overhead"] * 512)
    rng = random.Random(2024)
    outcomes = {"error": 0, "same-as-qemu": 0, "qemu-refuses": 0}
    for _ in range(100):
        data = bytearray(original)
        for _ in range(rng.randrange(1, 4)):
            region = rng.choice(((0, 80), (512, 512 + desc_len), tables))
            data[rng.randrange(*region)] ^= rng.randrange(1, 256)
        try:
            disk, _ = parse(bytes(data), 8192)
        except VirtrigaudError:
            outcomes["error"] += 1
            continue
        path = tmp_path / "flipped.vmdk"
        path.write_bytes(data)
        try:
            theirs = qemu_raw(path, tmp_path)
        except VirtrigaudError:
            outcomes["qemu-refuses"] += 1
            continue
        assert disk == theirs
        outcomes["same-as-qemu"] += 1
    assert outcomes["error"] > 0 and outcomes["same-as-qemu"] > 0
