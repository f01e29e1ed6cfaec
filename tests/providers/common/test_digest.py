"""Transport and content digests, against a plain reference implementation."""

from __future__ import annotations

import hashlib
import random
import subprocess
import threading
from pathlib import Path

import pytest

from providers.common import digest, qemu_img
from providers.common.digest import CHUNK_SIZE, ContentHasher, FileRangeReader, TransportHasher
from virtrigaud.errors import Cancelled, OutOfSpace

from .helpers import (
    MIB,
    VARIANT_NAMES,
    VIRTUAL_SIZE,
    WRITES,
    ImageSet,
    listing,
    reference_digest,
    write_raw,
)

GIB = 1024 * MIB


class CountingReader:
    """Wraps the real reader and counts every byte read from host files."""

    def __init__(self) -> None:
        self.inner = FileRangeReader()
        self.bytes_read = 0
        self.calls = 0

    def pread(self, path: str, offset: int, length: int) -> bytes:
        data = self.inner.pread(path, offset, length)
        self.bytes_read += len(data)
        self.calls += 1
        return data


def test_documented_constants() -> None:
    assert CHUNK_SIZE == 4 * MIB
    assert digest.ZERO_CHUNK_SHA256.hex() == (
        "bb9f8df61474d25e71fa00722318cd387396ca1736605e1248821cc0de3d3af8"
    )
    assert ContentHasher(0).hexdigest() == (
        "af5570f5a1810b7af78caf4bc70a660f0df51e42baf91d4de5b2328de0e83dfc"
    )


@pytest.mark.parametrize("name", VARIANT_NAMES)
def test_content_digest_is_equal_in_every_format(
    images: ImageSet, name: str, scratch_dir: Path
) -> None:
    assert digest.content_digest(images.path(name), scratch_dir=scratch_dir) == images.reference
    assert listing(scratch_dir) == []


def test_direct_and_fallback_paths_per_format(images: ImageSet) -> None:
    direct = {name: digest.data_layout(images.path(name)).direct for name in VARIANT_NAMES}
    assert direct == {
        "raw": True,
        "qcow2": True,
        "qcow2-compressed": False,
        "vmdk-sparse": True,
        "vmdk-stream": False,
        "vmdk-flat": True,
        "vdi": True,
        "vpc": True,
        "vhdx": False,
    }


def test_one_changed_byte_changes_the_digest(images: ImageSet, tmp_path: Path) -> None:
    digests = {images.reference}
    for offset in (0, 13 * MIB + 5, 20 * MIB, VIRTUAL_SIZE - 1):  # data, data, hole, tail
        changed = tmp_path / f"changed-{offset}.raw"
        write_raw(changed, VIRTUAL_SIZE, (*WRITES, (offset, b"\x01")))
        value = digest.content_digest(changed, "raw")
        assert value == reference_digest(changed)
        converted = tmp_path / f"changed-{offset}.qcow2"
        qemu_img.convert(changed, converted, src_format="raw", dst_format="qcow2", compress=True)
        assert digest.content_digest(converted, "qcow2") == value
        digests.add(value)
    assert len(digests) == 5


def test_virtual_size_is_part_of_the_digest(tmp_path: Path) -> None:
    small, large = tmp_path / "small.raw", tmp_path / "large.raw"
    write_raw(small, 8 * MIB, ())
    write_raw(large, 8 * MIB + 512, ())
    assert digest.content_digest(small, "raw") != digest.content_digest(large, "raw")
    assert digest.content_digest(large, "raw") == reference_digest(large)


def test_raw_file_not_a_whole_number_of_sectors(tmp_path: Path) -> None:
    odd = tmp_path / "odd.raw"
    odd.write_bytes(b"\x07" * 1000)
    value = digest.content_digest(odd, "raw")
    assert value == reference_digest(odd, virtual_size=1024)  # qemu pads to 2 sectors
    qcow2 = tmp_path / "odd.qcow2"
    qemu_img.convert(odd, qcow2, src_format="raw", dst_format="qcow2")
    assert digest.content_digest(qcow2, "qcow2") == value


def test_streaming_hasher_matches_reference_in_any_pieces(images: ImageSet) -> None:
    data = images.base.read_bytes()
    rng = random.Random(3)
    hasher = ContentHasher(len(data))
    pos = 0
    while pos < len(data):
        n = rng.choice([1, 511, 4096, 65537, MIB, 5 * MIB])
        hasher.update(data[pos : pos + n])
        pos += n
    assert hasher.hexdigest() == images.reference
    # Zeros announced as zeros hash the same as zeros passed as bytes.
    announced = ContentHasher()
    announced.update(data[: 5 * MIB + 4096])
    announced.update_zeros(0)
    pos = 5 * MIB + 4096
    for offset, payload in WRITES[1:]:
        announced.update_zeros(offset - pos)
        announced.update(payload)
        pos = offset + len(payload)
    assert pos == len(data)
    assert announced.hexdigest() == images.reference


def test_zero_regions_are_not_read(tmp_path: Path) -> None:
    size = 6 * GIB + 512
    writes = (
        (0, random.Random(1).randbytes(MIB)),
        (3 * GIB + 12345, random.Random(2).randbytes(MIB)),  # unaligned, in one chunk
        (size - MIB, random.Random(3).randbytes(MIB)),  # in the short last chunk
    )
    raw = tmp_path / "big.raw"
    write_raw(raw, size, writes)
    qcow2 = tmp_path / "big.qcow2"
    qemu_img.convert(raw, qcow2, src_format="raw", dst_format="qcow2")

    # Independent expectation: the definition with every chunk that holds no write
    # hashed as 4 MiB of zeros, chunks with data read from the file.
    outer = hashlib.sha256(size.to_bytes(8, "big"))
    zero_chunk = hashlib.sha256(bytes(CHUNK_SIZE)).digest()
    with open(raw, "rb") as f:
        for start in range(0, size, CHUNK_SIZE):
            end = min(start + CHUNK_SIZE, size)
            if any(o < end and o + len(p) > start for o, p in writes):
                f.seek(start)
                outer.update(hashlib.sha256(f.read(end - start)).digest())
            else:
                assert end - start == CHUNK_SIZE
                outer.update(zero_chunk)
    expected = outer.hexdigest()

    for path, fmt, cluster in ((raw, "raw", 4096), (qcow2, "qcow2", 65536)):
        reader = CountingReader()
        assert digest.content_digest(path, fmt, reader=reader) == expected
        # Only the 3 MiB written (rounded out to allocation units) were read.
        assert 3 * MIB <= reader.bytes_read <= 3 * MIB + 4 * cluster, (fmt, reader.bytes_read)


def test_backing_chain_reads_each_layer(images: ImageSet, tmp_path: Path) -> None:
    top = tmp_path / "top.qcow2"
    base = images.path("qcow2")
    qemu_img.create(
        top, "qcow2", VIRTUAL_SIZE, options={"backing_file": str(base), "backing_fmt": "qcow2"}
    )
    assert digest.content_digest(top, "qcow2") == images.reference
    # Write into the overlay through qemu (qemu-io), then compare with a flattened copy.
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 1M 64k", str(top)],
        check=True,
        capture_output=True,
    )
    layout = digest.data_layout(top, "qcow2")
    assert layout.direct and set(layout.files or {}) == {0, 1}
    flat = tmp_path / "flat.raw"
    qemu_img.convert(top, flat, src_format="qcow2", dst_format="raw")
    assert digest.content_digest(top, "qcow2") == reference_digest(flat)
    assert digest.content_digest(top, "qcow2") != images.reference


def test_fallback_reserves_scratch_and_cleans_up(images: ImageSet, scratch_dir: Path) -> None:
    with pytest.raises(OutOfSpace, match="scratch limit"):
        digest.content_digest(
            images.path("vhdx"), "vhdx", scratch_dir=scratch_dir, scratch_limit=MIB
        )
    assert listing(scratch_dir) == []
    seen: list[tuple[int, int]] = []
    value = digest.content_digest(
        images.path("vmdk-stream"),
        "vmdk",
        scratch_dir=scratch_dir,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert value == images.reference
    assert listing(scratch_dir) == []
    assert seen[-1] == (VIRTUAL_SIZE, VIRTUAL_SIZE)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_progress_and_cancel(images: ImageSet) -> None:
    seen: list[tuple[int, int]] = []
    digest.content_digest(images.path("qcow2"), progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (VIRTUAL_SIZE, VIRTUAL_SIZE)
    assert len(seen) == -(-VIRTUAL_SIZE // CHUNK_SIZE)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        digest.content_digest(images.path("qcow2"), cancel=cancel)


def test_transport_hasher(tmp_path: Path) -> None:
    chunks = [b"abc", b"", b"def" * 1000]
    hasher = TransportHasher()
    assert list(hasher.wrap(chunks)) == chunks
    joined = b"".join(chunks)
    assert hasher.hexdigest() == hashlib.sha256(joined).hexdigest()
    assert hasher.size == len(joined)
    path = tmp_path / "obj"
    path.write_bytes(joined)
    assert digest.sha256_file(path) == hashlib.sha256(joined).hexdigest()


@pytest.mark.parametrize("threads", [1, 2])
def test_first_difference_finds_any_changed_byte(tmp_path: Path, threads: int) -> None:
    """Images with the same bytes compare equal whatever their layout; one changed byte,
    in data or in a hole of either side, is found in its chunk."""
    size = 6 * CHUNK_SIZE + 4096
    rng = random.Random(5)
    writes = ((0, rng.randbytes(65536)), (3 * CHUNK_SIZE + 100, rng.randbytes(5000)))
    raw = tmp_path / "a.raw"
    write_raw(raw, size, writes)
    qcow2 = tmp_path / "a.qcow2"
    qemu_img.convert(raw, qcow2, src_format="raw", dst_format="qcow2")
    same = digest.data_layout(qcow2, "qcow2")
    assert digest.first_difference(digest.data_layout(raw, "raw"), same, threads=threads) is None
    for offset in (3 * CHUNK_SIZE + 200, 5 * CHUNK_SIZE + 7, size - 1):  # data, hole, last
        changed = tmp_path / f"changed-{offset}.raw"
        write_raw(changed, size, (*writes, (offset, b"\x01")))
        found = digest.first_difference(same, digest.data_layout(changed, "raw"), threads=threads)
        assert found == offset // CHUNK_SIZE * CHUNK_SIZE
    shorter = tmp_path / "short.raw"
    write_raw(shorter, size - 4096, writes)
    assert digest.first_difference(same, digest.data_layout(shorter, "raw")) == 0
