"""Export -> object -> import round trips and every failure path, on real images."""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from providers.common import digest, pipeline, qemu_img
from virtrigaud.errors import (
    AlreadyExists,
    Cancelled,
    ChecksumMismatch,
    InvalidArgument,
    OutOfSpace,
    Unavailable,
)

from .helpers import (
    BY_NAME,
    MIB,
    VARIANT_NAMES,
    VIRTUAL_SIZE,
    ImageSet,
    listing,
    random_raw,
    write_raw,
)

# Object formats: every variant that is a single file (a flat vmdk is two files).
OBJECTS = [name for name in VARIANT_NAMES if name != "vmdk-flat"]


class MemorySink:
    """A storage writer in memory (write/commit/abort)."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.data = bytearray()
        self.state = "open"
        self.fail_after = fail_after
        self.resumable = False

    def write(self, data: bytes) -> None:
        assert self.state == "open"
        if self.fail_after is not None and len(self.data) + len(data) > self.fail_after:
            raise Unavailable("storage went away")
        self.data += data

    def commit(self) -> None:
        self.state = "committed"

    def abort(self) -> None:
        self.state = "aborted"

    def chunks(self, size: int = 256 * 1024) -> Iterator[bytes]:
        for start in range(0, len(self.data), size):
            yield bytes(self.data[start : start + size])


class FileSink:
    """A storage writer to a file: temporary name, renamed on commit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.partial = path.with_name(path.name + ".partial")
        self.file = open(self.partial, "wb")  # noqa: SIM115 - closed by commit/abort

    def write(self, data: bytes) -> None:
        self.file.write(data)

    def commit(self) -> None:
        self.file.close()
        os.replace(self.partial, self.path)

    def abort(self) -> None:
        self.file.close()
        self.partial.unlink(missing_ok=True)


def export_to_memory(
    images: ImageSet, source: str, obj: str, scratch: Path
) -> tuple[MemorySink, pipeline.ExportOutcome]:
    src, target = BY_NAME[source], BY_NAME[obj]
    sink = MemorySink()
    outcome = pipeline.export_image(
        images.path(source),
        src.format,
        target.format,
        sink,
        subformat=target.subformat,
        compress=target.compress,
        scratch_dir=scratch,
    )
    return sink, outcome


@pytest.mark.parametrize("obj", OBJECTS)
@pytest.mark.parametrize("source", VARIANT_NAMES)
def test_round_trip(
    images: ImageSet, source: str, obj: str, scratch_dir: Path, tmp_path: Path
) -> None:
    """Source format -> object format -> back to the source's format, data unchanged."""
    sink, exported = export_to_memory(images, source, obj, scratch_dir)
    assert sink.state == "committed"
    assert listing(scratch_dir) == []
    assert exported.size == len(sink.data)
    assert exported.sha256 == hashlib.sha256(sink.data).hexdigest()
    assert exported.content_sha256 == images.reference
    assert exported.virtual_size == VIRTUAL_SIZE
    object_path = tmp_path / f"object.{BY_NAME[obj].format}"
    object_path.write_bytes(sink.data)
    assert qemu_img.compare(images.base, object_path, a_format="raw", b_format=exported.format)
    if BY_NAME[obj].format == "vmdk":
        assert exported.subformat == (BY_NAME[obj].subformat or "monolithicSparse")

    target = BY_NAME[source]
    dest = tmp_path / "out" / f"disk.{target.format}"
    dest.parent.mkdir()
    imported = pipeline.import_image(
        sink.chunks(),
        exported.format,
        target.format,
        dest,
        expected_sha256=exported.sha256,
        expected_content_sha256=exported.content_sha256,
        size=exported.size,
        subformat=target.subformat if target.subformat != "monolithicSparse" else None,
        compress=target.compress,
        scratch_dir=scratch_dir,
    )
    assert listing(scratch_dir) == []
    assert imported.path == str(dest)
    assert imported.sha256 == exported.sha256
    assert imported.content_sha256 == images.reference
    assert qemu_img.compare(images.base, dest, a_format="raw", b_format=target.format)
    assert digest.content_digest(dest, target.format, scratch_dir=scratch_dir) == images.reference
    info = qemu_img.info(dest, target.format)
    assert info.virtual_size == VIRTUAL_SIZE
    if target.format == "vmdk" and target.subformat != "monolithicSparse":
        assert info.create_type == target.subformat
    expected_files = ["disk-flat.vmdk", "disk.vmdk"] if source == "vmdk-flat" else [dest.name]
    assert listing(dest.parent) == expected_files  # no staging directory left


def test_export_to_a_file_sink_and_conversion_choice(
    images: ImageSet, scratch_dir: Path, tmp_path: Path
) -> None:
    sink = FileSink(tmp_path / "obj.qcow2")
    outcome = pipeline.export_image(
        images.path("qcow2"), "qcow2", "qcow2", sink, scratch_dir=scratch_dir
    )
    assert outcome.conversion == "none"  # a self-contained qcow2 is sent as it is
    assert outcome.scratch_reserved == 0
    assert (tmp_path / "obj.qcow2").read_bytes() == images.path("qcow2").read_bytes()
    raw = pipeline.export_image(
        images.path("raw"), "raw", "raw", MemorySink(), scratch_dir=scratch_dir
    )
    assert (raw.conversion, raw.scratch_reserved) == ("raw-stream", 0)
    converted = pipeline.export_image(
        images.path("raw"), "raw", "vdi", MemorySink(), scratch_dir=scratch_dir
    )
    assert converted.conversion == "scratch"
    assert 0 < converted.scratch_reserved < VIRTUAL_SIZE + 17 * MIB


def test_export_flattens_a_backing_chain(
    images: ImageSet, scratch_dir: Path, tmp_path: Path
) -> None:
    top = tmp_path / "top.qcow2"
    qemu_img.create(
        top,
        "qcow2",
        VIRTUAL_SIZE,
        options={"backing_file": str(images.path("qcow2")), "backing_fmt": "qcow2"},
    )
    sink = MemorySink()
    outcome = pipeline.export_image(top, "qcow2", "qcow2", sink, scratch_dir=scratch_dir)
    assert outcome.conversion == "stream"  # flattened while it is sent
    assert outcome.content_sha256 == images.reference
    obj = tmp_path / "obj.qcow2"
    obj.write_bytes(sink.data)
    assert qemu_img.info(obj).backing_filename is None


def test_export_progress_and_stages(images: ImageSet, scratch_dir: Path) -> None:
    stages: list[str] = []
    seen: list[tuple[int, int]] = []
    outcome = pipeline.export_image(
        images.path("qcow2"),
        "qcow2",
        "vhdx",
        MemorySink(),
        scratch_dir=scratch_dir,
        progress=lambda done, total: seen.append((done, total)),
        on_stage=stages.append,
    )
    assert stages == [pipeline.STAGE_CONVERTING, pipeline.STAGE_UPLOADING]
    assert seen[-1] == (outcome.size, outcome.size)
    assert (VIRTUAL_SIZE, VIRTUAL_SIZE) in seen  # conversion reached 100 %


def test_export_refuses_multi_file_objects_and_bad_sources(
    images: ImageSet, scratch_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(InvalidArgument, match="one file"):
        pipeline.export_image(images.base, "raw", "vmdk", MemorySink(), subformat="monolithicFlat")
    text = tmp_path / "notes.txt"
    text.write_text("not a disk\n")
    sink = MemorySink()
    with pytest.raises(InvalidArgument, match="not in qcow2 format"):
        pipeline.export_image(text, "qcow2", "raw", sink, scratch_dir=scratch_dir)
    assert sink.state == "aborted"
    assert listing(scratch_dir) == []


def test_export_scratch_limit_is_enforced(images: ImageSet, scratch_dir: Path) -> None:
    sink = MemorySink()
    with pytest.raises(OutOfSpace, match="scratch limit"):
        pipeline.export_image(
            images.path("qcow2"), "qcow2", "vdi", sink, scratch_dir=scratch_dir, scratch_limit=MIB
        )
    assert sink.state == "aborted" and sink.data == bytearray()
    assert listing(scratch_dir) == []


def test_export_sink_failure_cleans_scratch(images: ImageSet, scratch_dir: Path) -> None:
    sink = MemorySink(fail_after=MIB)
    with pytest.raises(Unavailable):
        pipeline.export_image(images.path("vhdx"), "vhdx", "qcow2", sink, scratch_dir=scratch_dir)
    assert sink.state == "aborted"
    assert listing(scratch_dir) == []


def test_resumable_sink_is_left_to_its_owner_on_a_transient_error(
    images: ImageSet, scratch_dir: Path
) -> None:
    sink = MemorySink(fail_after=MIB)
    sink.resumable = True
    with pytest.raises(Unavailable):
        pipeline.export_image(images.path("raw"), "raw", "raw", sink, scratch_dir=scratch_dir)
    assert sink.state == "open"  # not aborted: the owner may detach and resume
    assert listing(scratch_dir) == []


def test_export_cancel_during_upload(images: ImageSet, scratch_dir: Path) -> None:
    cancel = threading.Event()
    sink = MemorySink()
    stages: list[str] = []

    def on_progress(done: int, total: int) -> None:
        if stages[-1] == pipeline.STAGE_UPLOADING and done >= 2 * MIB:
            cancel.set()

    with pytest.raises(Cancelled):
        pipeline.export_image(
            images.path("qcow2-compressed"),
            "qcow2",
            "raw",
            sink,
            scratch_dir=scratch_dir,
            progress=on_progress,
            on_stage=stages.append,
            cancel=cancel,
        )
    assert stages == [pipeline.STAGE_CONVERTING, pipeline.STAGE_UPLOADING]
    assert sink.state == "aborted"
    assert 2 * MIB <= len(sink.data) < VIRTUAL_SIZE
    assert listing(scratch_dir) == []


def test_export_cancel_during_conversion(tmp_path: Path, scratch_dir: Path) -> None:
    src = random_raw(tmp_path / "dense.raw", 128 * MIB)
    cancel = threading.Event()
    stages: list[str] = []
    sink = MemorySink()

    def on_progress(done: int, total: int) -> None:
        if stages[-1] == pipeline.STAGE_CONVERTING and done > 0:
            cancel.set()

    with pytest.raises(Cancelled):
        pipeline.export_image(
            src,
            "raw",
            "vmdk",
            sink,
            subformat="streamOptimized",
            scratch_dir=scratch_dir,
            progress=on_progress,
            on_stage=stages.append,
            cancel=cancel,
        )
    assert stages == [pipeline.STAGE_CONVERTING]
    assert sink.state == "aborted" and not sink.data
    assert listing(scratch_dir) == []


# ---------------------------------------------------------------- import failures


@pytest.fixture
def qcow2_object(images: ImageSet, scratch_dir: Path) -> tuple[MemorySink, pipeline.ExportOutcome]:
    return export_to_memory(images, "raw", "qcow2", scratch_dir)


@pytest.mark.parametrize("target", ["qcow2", "raw", "vmdk"])
def test_transport_mismatch_leaves_nothing(
    qcow2_object: tuple[MemorySink, pipeline.ExportOutcome],
    scratch_dir: Path,
    tmp_path: Path,
    target: str,
) -> None:
    sink, exported = qcow2_object
    corrupted = bytearray(sink.data)
    corrupted[len(corrupted) // 2] ^= 0xFF
    dest = tmp_path / "out" / "disk.img"
    dest.parent.mkdir()
    with pytest.raises(ChecksumMismatch, match="SHA256"):
        pipeline.import_image(
            iter([bytes(corrupted)]),
            "qcow2",
            target,
            dest,
            expected_sha256=exported.sha256,
            scratch_dir=scratch_dir,
        )
    assert listing(dest.parent) == []
    assert listing(scratch_dir) == []


def test_truncated_stream_is_detected(
    qcow2_object: tuple[MemorySink, pipeline.ExportOutcome], scratch_dir: Path, tmp_path: Path
) -> None:
    sink, exported = qcow2_object
    with pytest.raises(ChecksumMismatch, match="truncated"):
        pipeline.import_image(
            iter([bytes(sink.data[:-4096])]),
            "qcow2",
            "qcow2",
            tmp_path / "disk.qcow2",
            expected_sha256=exported.sha256,
            size=exported.size,
            scratch_dir=scratch_dir,
        )
    assert listing(tmp_path) == ["scratch"]
    assert listing(scratch_dir) == []


def test_content_mismatch_leaves_nothing(
    qcow2_object: tuple[MemorySink, pipeline.ExportOutcome], scratch_dir: Path, tmp_path: Path
) -> None:
    sink, exported = qcow2_object
    with pytest.raises(ChecksumMismatch, match="content digest"):
        pipeline.import_image(
            sink.chunks(),
            "qcow2",
            "vdi",
            tmp_path / "disk.vdi",
            expected_sha256=exported.sha256,
            expected_content_sha256="0" * 64,
            scratch_dir=scratch_dir,
        )
    assert listing(tmp_path) == ["scratch"]
    assert listing(scratch_dir) == []


@pytest.mark.parametrize(
    "case",
    [
        # Both images readable directly: compared byte for byte.
        ("qcow2", "raw", "differs from the received object at virtual offset"),
        ("raw", "qcow2", "differs from the received object at virtual offset"),
        ("vmdk-sparse", "vdi", "differs from the received object at virtual offset"),
        # vhdx cannot be read directly: its digest is compared with the object's.
        ("qcow2", "vhdx", "differs from the received data"),
    ],
)
def test_a_conversion_that_alters_the_disk_is_caught(
    images: ImageSet,
    scratch_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    case: tuple[str, str, str],
) -> None:
    """The written image is verified against the object, not trusted to qemu-img."""
    obj, target, message = case
    sink, exported = export_to_memory(images, "raw", obj, scratch_dir)
    real_convert = qemu_img.convert

    def altering_convert(src: str, dst: str, **kwargs: object) -> None:
        real_convert(src, dst, **kwargs)  # type: ignore[arg-type]
        fmt = str(kwargs["dst_format"])
        # One guest byte changed inside data, as a faulty conversion or disk would.
        subprocess.run(
            ["qemu-io", "-f", fmt, "-c", f"write -P 0x5a {VIRTUAL_SIZE // 2} 512", dst],
            check=True,
            capture_output=True,
        )

    monkeypatch.setattr(qemu_img, "convert", altering_convert)
    dest = tmp_path / "out" / f"disk.{target}"
    dest.parent.mkdir()
    with pytest.raises(ChecksumMismatch, match=message):
        pipeline.import_image(
            sink.chunks(),
            exported.format,
            target,
            dest,
            expected_sha256=exported.sha256,
            scratch_dir=scratch_dir,
        )
    assert listing(dest.parent) == []
    assert listing(scratch_dir) == []


def test_import_cancel_leaves_nothing(
    qcow2_object: tuple[MemorySink, pipeline.ExportOutcome], scratch_dir: Path, tmp_path: Path
) -> None:
    sink, exported = qcow2_object
    cancel = threading.Event()
    received: list[int] = []

    def on_progress(done: int, total: int) -> None:
        received.append(done)
        cancel.set()

    with pytest.raises(Cancelled):
        pipeline.import_image(
            sink.chunks(64 * 1024),
            "qcow2",
            "raw",
            tmp_path / "disk.raw",
            expected_sha256=exported.sha256,
            scratch_dir=scratch_dir,
            progress=on_progress,
            cancel=cancel,
        )
    assert received == [64 * 1024]
    assert listing(tmp_path) == ["scratch"]
    assert listing(scratch_dir) == []


def test_import_refuses_an_object_with_a_backing_file(
    images: ImageSet, scratch_dir: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "host-secret.raw"
    secret.write_bytes(b"host data " * 1000)
    crafted = tmp_path / "crafted.qcow2"
    qemu_img.create(
        crafted, "qcow2", MIB, options={"backing_file": str(secret), "backing_fmt": "raw"}
    )
    data = crafted.read_bytes()
    out = tmp_path / "out"
    out.mkdir()
    for target in ("qcow2", "raw"):
        with pytest.raises(InvalidArgument, match="refers to other files"):
            pipeline.import_image(
                iter([data]),
                "qcow2",
                target,
                out / f"disk.{target}",
                expected_sha256=hashlib.sha256(data).hexdigest(),
                scratch_dir=scratch_dir,
            )
    assert listing(out) == []
    assert listing(scratch_dir) == []


def test_import_refuses_a_corrupt_object(
    qcow2_object: tuple[MemorySink, pipeline.ExportOutcome], scratch_dir: Path, tmp_path: Path
) -> None:
    sink, _ = qcow2_object
    truncated = bytes(sink.data[:100_000])  # qemu-img would read the lost clusters as zeros
    with pytest.raises(InvalidArgument, match="corruptions"):
        pipeline.import_image(
            iter([truncated]),
            "qcow2",
            "raw",
            tmp_path / "disk.raw",
            expected_sha256=hashlib.sha256(truncated).hexdigest(),
            scratch_dir=scratch_dir,
        )
    assert listing(tmp_path) == ["scratch"]
    assert listing(scratch_dir) == []


@pytest.mark.parametrize(
    ("fmt", "message"), [("qcow2", "not in qcow2 format"), ("vdi", "Unsupported VDI image size")]
)
def test_import_refuses_a_non_image(
    scratch_dir: Path, tmp_path: Path, fmt: str, message: str
) -> None:
    data = b"this is not an image\n" * 100
    with pytest.raises(InvalidArgument, match=message):
        pipeline.import_image(
            iter([data]),
            fmt,
            "raw",
            tmp_path / "disk.img",
            expected_sha256=hashlib.sha256(data).hexdigest(),
            scratch_dir=scratch_dir,
        )
    assert listing(tmp_path) == ["scratch"]
    assert listing(scratch_dir) == []


def test_import_refuses_an_existing_destination_and_bad_digests(
    qcow2_object: tuple[MemorySink, pipeline.ExportOutcome], scratch_dir: Path, tmp_path: Path
) -> None:
    sink, exported = qcow2_object
    dest = tmp_path / "disk.qcow2"
    dest.write_bytes(b"keep")
    with pytest.raises(AlreadyExists):
        pipeline.import_image(
            sink.chunks(), "qcow2", "qcow2", dest, expected_sha256=exported.sha256
        )
    assert dest.read_bytes() == b"keep"
    with pytest.raises(InvalidArgument, match="expected_sha256"):
        pipeline.import_image(
            sink.chunks(), "qcow2", "qcow2", tmp_path / "new.qcow2", expected_sha256="ABC"
        )


def test_import_scratch_limit(
    qcow2_object: tuple[MemorySink, pipeline.ExportOutcome], scratch_dir: Path, tmp_path: Path
) -> None:
    sink, exported = qcow2_object
    with pytest.raises(OutOfSpace):
        pipeline.import_image(
            sink.chunks(),
            "qcow2",
            "raw",
            tmp_path / "disk.raw",
            expected_sha256=exported.sha256,
            size=exported.size,
            scratch_dir=scratch_dir,
            scratch_limit=exported.size - 1,
        )
    assert listing(tmp_path) == ["scratch"]
    assert listing(scratch_dir) == []


def test_sparse_raw_stream_is_not_written_twice(scratch_dir: Path, tmp_path: Path) -> None:
    """A 320 MiB raw object with 2 MiB of data: zeros never reach scratch or the disk."""
    size = 320 * MIB
    raw = tmp_path / "sparse.raw"
    write_raw(raw, size, ((7 * MIB, os.urandom(MIB)), (300 * MIB, os.urandom(MIB))))
    sink = MemorySink()
    exported = pipeline.export_image(raw, "raw", "raw", sink, scratch_dir=scratch_dir)
    assert exported.size == size
    out = tmp_path / "out"
    out.mkdir()
    to_qcow2 = pipeline.import_image(
        sink.chunks(4 * MIB),
        "raw",
        "qcow2",
        out / "disk.qcow2",
        expected_sha256=exported.sha256,
        expected_content_sha256=exported.content_sha256,
        scratch_dir=scratch_dir,
    )
    # Streamed to scratch without a size: the budget grew by one 64 MiB step only.
    assert to_qcow2.scratch_reserved <= 64 * MIB
    to_raw = pipeline.import_image(
        sink.chunks(4 * MIB),
        "raw",
        "raw",
        out / "disk.raw",
        expected_sha256=exported.sha256,
        expected_content_sha256=exported.content_sha256,
        scratch_dir=scratch_dir,
    )
    assert to_raw.conversion == "none" and to_raw.scratch_reserved == 0
    assert os.stat(out / "disk.raw").st_blocks * 512 <= 4 * MIB
    assert os.stat(out / "disk.raw").st_size == size
    assert qemu_img.compare(raw, out / "disk.qcow2", a_format="raw", b_format="qcow2")
    assert qemu_img.compare(raw, out / "disk.raw", a_format="raw", b_format="raw")
    assert listing(scratch_dir) == []
