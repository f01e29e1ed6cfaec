"""The pipeline fed by / feeding real storage objects, and the faster verification paths.

- One SHA256 pass per direction: a storage Reader (from byte 0) or Writer already hashes
  every byte, so the pipeline takes their digest instead of computing it again -- and
  still hashes itself whenever the stream is anything else.
- Writing behind the receiving thread: errors of the writing thread surface promptly.
- The content digest hashed by several threads equals the definition.
- SparseWriter: blocks that start with a zero byte, and no fsync for scratch copies.
"""

from __future__ import annotations

import hashlib
import os
import random
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from providers.common import digest, pipeline, qemu_img, sparsefile
from providers.common.sparsefile import SparseWriter
from storage import BackendOptions, open_backend
from storage.nfs import NFSBackend
from tests.servers.seaweedfs import SeaweedFS
from virtrigaud.errors import ChecksumMismatch, OutOfSpace, Unavailable

from .helpers import (
    BY_NAME,
    MIB,
    VARIANT_NAMES,
    ImageSet,
    listing,
    random_raw,
    reference_digest,
    write_raw,
)

KEY = "virtrigaud/ns/vm-5eed/vda.vmdk"


class _NoHashHere(digest.TransportHasher):
    """Stands in for the pipeline's own transport hasher: fails if it is ever used."""

    def __init__(self) -> None:
        raise AssertionError("the pipeline hashed the object a second time")


@pytest.fixture
def nfs(tmp_path: Path) -> NFSBackend:
    root = tmp_path / "share"
    root.mkdir()
    return NFSBackend(str(root), options=BackendOptions(chunk_size=256 * 1024))


@pytest.fixture
def exported(images: ImageSet, nfs: NFSBackend, scratch_dir: Path) -> pipeline.ExportOutcome:
    """A vmdk object of the test disk in NFS storage, written by the pipeline."""
    with nfs.open_writer(KEY) as writer:
        return pipeline.export_image(
            images.path("qcow2"), "qcow2", "vmdk", writer, scratch_dir=scratch_dir
        )


def stored_sha256(nfs: NFSBackend, key: str) -> str:
    return hashlib.sha256(Path(nfs.root, key).read_bytes()).hexdigest()


@pytest.mark.parametrize("target", ["vmdk", "raw"])
def test_export_to_a_storage_writer_reports_the_committed_digest(
    images: ImageSet,
    nfs: NFSBackend,
    scratch_dir: Path,
    target: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pipeline, "TransportHasher", _NoHashHere)
    key = f"disk.{target}"
    with nfs.open_writer(key) as writer:
        outcome = pipeline.export_image(
            images.path("qcow2"), "qcow2", target, writer, scratch_dir=scratch_dir
        )
    assert outcome.sha256 == nfs.stat(key).sha256 == stored_sha256(nfs, key)
    assert outcome.size == nfs.stat(key).size
    assert outcome.content_sha256 == images.reference


def test_export_to_another_sink_hashes_itself(images: ImageSet, scratch_dir: Path) -> None:
    class ListSink:
        def __init__(self) -> None:
            self.data = bytearray()

        def write(self, data: bytes) -> None:
            self.data += data

        def commit(self) -> None: ...

        def abort(self) -> None: ...

    sink = ListSink()
    outcome = pipeline.export_image(
        images.path("qcow2"), "qcow2", "vmdk", sink, scratch_dir=scratch_dir
    )
    assert outcome.sha256 == hashlib.sha256(sink.data).hexdigest()


def test_import_from_a_storage_reader_takes_its_digest(
    exported: pipeline.ExportOutcome,
    images: ImageSet,
    nfs: NFSBackend,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scratch_dir = tmp_path / "scratch"  # the one the exported fixture used
    monkeypatch.setattr(pipeline, "TransportHasher", _NoHashHere)
    reader = nfs.open_reader(KEY, expected_sha256=exported.sha256)
    outcome = pipeline.import_image(
        reader,
        "vmdk",
        "qcow2",
        tmp_path / "disk.qcow2",
        expected_sha256=exported.sha256,
        expected_content_sha256=exported.content_sha256,
        size=exported.size,
        scratch_dir=scratch_dir,
    )
    assert reader.verified
    assert outcome.sha256 == exported.sha256 and outcome.size == exported.size
    assert outcome.content_sha256 == images.reference
    assert qemu_img.compare(images.base, tmp_path / "disk.qcow2", a_format="raw", b_format="qcow2")
    assert listing(scratch_dir) == []


def test_a_corrupted_object_read_from_storage_leaves_nothing(
    exported: pipeline.ExportOutcome, nfs: NFSBackend, scratch_dir: Path, tmp_path: Path
) -> None:
    path = Path(nfs.root, KEY)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))  # the stored digest (sidecar) stays the original one
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ChecksumMismatch):
        pipeline.import_image(
            nfs.open_reader(KEY, expected_sha256=exported.sha256),
            "vmdk",
            "qcow2",
            out / "disk.qcow2",
            expected_sha256=exported.sha256,
            size=exported.size,
            scratch_dir=scratch_dir,
        )
    assert listing(out) == []
    assert listing(scratch_dir) == []


def test_a_reader_from_an_offset_is_hashed_by_the_pipeline(
    exported: pipeline.ExportOutcome, nfs: NFSBackend, scratch_dir: Path, tmp_path: Path
) -> None:
    """Its digest does not cover the object: the pipeline hashes what it received."""
    reader = nfs.open_reader(KEY, offset=4096)
    assert reader.sha256 is None
    with pytest.raises(ChecksumMismatch, match="object SHA256 is"):
        pipeline.import_image(
            reader,
            "vmdk",
            "qcow2",
            tmp_path / "disk.qcow2",
            expected_sha256=exported.sha256,
            scratch_dir=scratch_dir,
        )
    assert listing(scratch_dir) == []


def test_a_write_error_stops_the_download_promptly(scratch_dir: Path, tmp_path: Path) -> None:
    """Scratch runs out in the writing thread; the receiving thread stops pulling."""
    data = random_raw(tmp_path / "dense.raw", 96 * MIB).read_bytes()
    pulled = 0

    def source() -> Iterator[bytes]:
        nonlocal pulled
        for start in range(0, len(data), MIB):
            pulled += 1
            yield data[start : start + MIB]

    with pytest.raises(OutOfSpace):
        pipeline.import_image(
            source(),
            "raw",
            "qcow2",
            tmp_path / "disk.qcow2",
            expected_sha256=hashlib.sha256(data).hexdigest(),
            scratch_dir=scratch_dir,
            scratch_limit=MIB,  # the stream's first allocation (64 MiB) is refused
        )
    assert pulled < 96 // 2
    assert listing(scratch_dir) == []
    assert not (tmp_path / "disk.qcow2").exists()


# ---------------------------------------------------------------- content digest threads


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("name", VARIANT_NAMES)
def test_threaded_content_digest_is_the_definition(
    images: ImageSet, name: str, threads: int, scratch_dir: Path
) -> None:
    value = digest.content_digest(
        images.path(name), BY_NAME[name].format, scratch_dir=scratch_dir, threads=threads
    )
    assert value == images.reference


class PreadOnly:
    """A RangeReader without readinto: the digest copies what pread returns."""

    def __init__(self) -> None:
        self.inner = digest.FileRangeReader()
        self.bytes_read = 0

    def pread(self, path: str, offset: int, length: int) -> bytes:
        data = self.inner.pread(path, offset, length)
        self.bytes_read += len(data)
        return data


@pytest.mark.parametrize("threads", [1, 2, 4])
@pytest.mark.parametrize("readinto", [True, False])
def test_reused_buffers_never_leak_bytes_between_chunks(
    tmp_path: Path, threads: int, readinto: bool
) -> None:
    """Many chunks, each with data at other places: a buffer reused without clearing
    the gaps, or handed out while still being hashed, changes the digest."""
    rng = random.Random(11)
    chunk = digest.CHUNK_SIZE
    size = 23 * chunk + 4096
    writes: list[tuple[int, bytes]] = []
    for i in range(23):
        kind = i % 4
        if kind == 0:
            writes.append((i * chunk, rng.randbytes(chunk)))  # full chunk
        elif kind == 1:
            writes.append((i * chunk + 65536 * rng.randrange(1, 30), rng.randbytes(65536)))
        elif kind == 2:
            writes.append((i * chunk + chunk - 131072, rng.randbytes(131072)))  # at its end
        # kind 3: a hole
    writes.append((size - 512, rng.randbytes(512)))
    raw = tmp_path / "pattern.raw"
    write_raw(raw, size, tuple(writes))
    qcow2 = tmp_path / "pattern.qcow2"
    qemu_img.convert(raw, qcow2, src_format="raw", dst_format="qcow2")
    expected = reference_digest(raw)
    for path, fmt in ((raw, "raw"), (qcow2, "qcow2")):
        reader: Any = digest.FileRangeReader() if readinto else PreadOnly()
        assert digest.content_digest(path, fmt, reader=reader, threads=threads) == expected
    if isinstance(reader, PreadOnly):
        assert reader.bytes_read <= sum(len(p) for _, p in writes) + 23 * 65536


# ---------------------------------------------------------------- SparseWriter


def test_blocks_starting_with_zero_are_still_written(tmp_path: Path) -> None:
    block = sparsefile.ZERO_BLOCK
    data = bytearray(4 * block)
    data[block + block - 1] = 7  # block 1: zero first byte, data at its end
    data[3 * block] = 9  # block 3: data at its first byte
    path = tmp_path / "f"
    writer = SparseWriter(str(path))
    writer.write(bytes(data[:1000]))  # unaligned pieces as well
    writer.write(bytes(data[1000:]))
    writer.close()
    assert path.read_bytes() == bytes(data)
    assert writer.allocated == 2 * block  # blocks 0 and 2 stayed holes


def test_only_durable_files_are_flushed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    for durable in (True, False):
        writer = SparseWriter(str(tmp_path / f"f-{durable}"), durable=durable)
        writer.write(b"x" * 10000)
        writer.close()
    assert len(synced) == 1  # the durable one only
    assert (tmp_path / "f-False").read_bytes() == b"x" * 10000


@pytest.mark.parametrize("case", ["vmdk-sparse:qcow2", "vmdk-sparse:vdi", "qcow2:qcow2"])
def test_durable_imports_flush_the_image_and_others_do_not(
    images: ImageSet,
    case: str,
    scratch_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Streamed, converted by qemu-img (which does not flush) or passed through."""
    obj, target = case.split(":")
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    data = images.path(obj).read_bytes()
    for durable in (True, False):
        synced.clear()
        dest = tmp_path / f"{durable}" / f"disk.{target}"
        dest.parent.mkdir()
        pipeline.import_image(
            iter([data]),
            "vmdk" if obj.startswith("vmdk") else obj,
            target,
            dest,
            expected_sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
            scratch_dir=scratch_dir,
            durable=durable,
        )
        images_synced = [p for p in synced if p.endswith(f"disk.{target}")]
        assert bool(images_synced) is durable, synced
        assert qemu_img.compare(images.base, dest, a_format="raw", b_format=target)


@pytest.mark.parametrize("target", ["vmdk", "qcow2"])
def test_a_streamed_export_resumes_on_s3_from_its_uploaded_parts(
    seaweed: SeaweedFS, target: str, scratch_dir: Path, tmp_path: Path
) -> None:
    """The export breaks after 20 MiB (a transient error); the restarted export replays
    the same stream, the parts on the server are verified, not sent again, and the
    object is whole. A stream that differed in any byte would fail the replay."""
    bucket = seaweed.create_bucket(f"resume-{secrets.token_hex(3)}")
    source = tmp_path / "disk.raw"
    write_raw(source, 96 * MIB, ((0, os.urandom(40 * MIB)), (60 * MIB, os.urandom(20 * MIB))))
    key = f"virtrigaud/ns/vm-5eed/vda.{target}"

    def backend() -> Any:
        return open_backend(
            "s3",
            {"type": "s3", "bucket": bucket, "endpoint": seaweed.endpoint},
            seaweed.credentials(),
            BackendOptions(part_size=8 * MIB),
            allowed_hosts=["127.0.0.1"],
        )

    def breaks(done: int, _total: int) -> None:
        if done >= 20 * MIB:
            raise Unavailable("the exporting process lost its network")

    first = backend()
    writer = first.open_writer(key)
    with pytest.raises(Unavailable):
        pipeline.export_image(source, "raw", target, writer, progress=breaks)
    state = writer.detach()
    assert state is not None and state.parts  # parts on the server, not aborted

    second = backend()
    resume = second.recover_state(key)
    assert resume is not None and len(resume.parts) == len(state.parts)
    with second.open_writer(key, resume=resume) as resumed:
        out = pipeline.export_image(source, "raw", target, resumed, scratch_dir=scratch_dir)
        assert out.conversion == "stream"
        assert resumed.bytes_skipped >= 16 * MIB  # not sent again
    stored = tmp_path / f"object.{target}"
    with second.open_reader(key, expected_sha256=out.sha256) as reader, stored.open("wb") as f:
        for chunk in reader:
            f.write(chunk)
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == out.sha256
    assert qemu_img.compare(source, stored, a_format="raw", b_format=target)
    assert out.content_sha256 == reference_digest(source)
