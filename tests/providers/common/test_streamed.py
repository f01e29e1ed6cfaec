"""Conversions done in the stream (providers.common.streamed) through the pipeline.

The round trips of every format pair (test_pipeline.test_round_trip) go through these
paths too; here: that they really run without scratch, what they leave on failure, and
the fallbacks.
"""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from providers.common import digest, pipeline, qcow2stream, qemu_img
from virtrigaud.errors import Cancelled, ChecksumMismatch, InvalidArgument

from .helpers import MIB, VIRTUAL_SIZE, ImageSet, listing, write_raw
from .test_pipeline import MemorySink

SECTOR = 512


def _export(
    src: Path, fmt: str, scratch: Path, *, target: str = "vmdk", **kwargs: Any
) -> tuple[bytes, pipeline.ExportOutcome]:
    sink = MemorySink()
    out = pipeline.export_image(src, fmt, target, sink, scratch_dir=scratch, **kwargs)
    assert sink.state == "committed"
    return bytes(sink.data), out


def _import(
    data: bytes,
    src_format: str,
    target: str,
    dest: Path,
    scratch: Path,
    *,
    piece: int = 1 << 20,
    **kwargs: Any,
) -> pipeline.ImportOutcome:
    chunks = (data[i : i + piece] for i in range(0, len(data), piece))
    return pipeline.import_image(
        chunks,
        src_format,
        target,
        dest,
        expected_sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        scratch_dir=scratch,
        **kwargs,
    )


@pytest.mark.parametrize(
    "case", ["raw:vmdk", "qcow2:vmdk", "vdi:vmdk", "vmdk-sparse:qcow2", "raw:qcow2", "vpc:qcow2"]
)
def test_export_is_streamed_without_scratch(
    images: ImageSet, case: str, scratch_dir: Path, tmp_path: Path
) -> None:
    source, target = case.split(":")
    stages: list[str] = []
    seen: list[tuple[int, int]] = []
    data, out = _export(
        images.path(source),
        qemu_img.info(images.path(source)).format,
        scratch_dir,
        target=target,
        scratch_limit=0,  # no scratch at all
        on_stage=stages.append,
        progress=lambda done, total: seen.append((done, total)),
    )
    subformat = "monolithicSparse" if target == "vmdk" else None
    assert (out.conversion, out.scratch_reserved, out.subformat) == ("stream", 0, subformat)
    assert stages == [pipeline.STAGE_UPLOADING]
    assert seen[-1] == (len(data), len(data))
    assert out.sha256 == hashlib.sha256(data).hexdigest()
    assert out.content_sha256 == images.reference
    obj = tmp_path / f"object.{target}"
    obj.write_bytes(data)
    assert qemu_img.check(obj, target).clean
    info = qemu_img.info(obj, target)
    assert (info.create_type, info.virtual_size) == (subformat, VIRTUAL_SIZE)
    assert qemu_img.compare(images.base, obj, a_format="raw", b_format=target)
    # Only data crosses the wire: 64 KiB units around the data, plus metadata.
    assert len(data) <= digest.data_layout(images.path(source)).data_bytes + 2 * MIB


@pytest.mark.parametrize("target", ["vmdk", "qcow2"])
def test_streamed_export_is_deterministic(images: ImageSet, target: str, scratch_dir: Path) -> None:
    """A resumed S3 upload replays the stream and checks the parts already sent."""
    first, _ = _export(images.path("raw"), "raw", scratch_dir, target=target)
    second, _ = _export(images.path("raw"), "raw", scratch_dir, target=target)
    assert first == second


def test_export_of_a_compressed_source_still_converts_in_scratch(
    images: ImageSet, scratch_dir: Path
) -> None:
    _, out = _export(images.path("qcow2-compressed"), "qcow2", scratch_dir)
    assert out.conversion == "scratch"  # compressed clusters cannot be read directly
    assert out.content_sha256 == images.reference


def test_cancel_during_streamed_export(tmp_path: Path, scratch_dir: Path) -> None:
    src = tmp_path / "dense.raw"
    write_raw(src, 64 * MIB, ((0, os.urandom(64 * MIB)),))
    cancel = threading.Event()
    sink = MemorySink()

    def on_progress(done: int, _total: int) -> None:
        if done >= 8 * MIB:
            cancel.set()

    with pytest.raises(Cancelled):
        pipeline.export_image(
            src, "raw", "vmdk", sink, scratch_dir=scratch_dir, progress=on_progress, cancel=cancel
        )
    assert sink.state == "aborted"
    assert 8 * MIB <= len(sink.data) < 64 * MIB
    assert listing(scratch_dir) == []


@pytest.mark.parametrize(
    "case",
    [
        (m, t, p)
        for m in ("ours", "qemu-img")
        for t in ("qcow2", "raw")
        for p in (4096, 100_000, 1 << 20)
    ],
    ids=lambda case: "-".join(map(str, case)),
)
def test_vmdk_import_is_streamed_without_scratch(
    images: ImageSet, case: tuple[str, str, int], scratch_dir: Path, tmp_path: Path
) -> None:
    maker, target, piece = case
    if maker == "ours":
        data, _ = _export(images.path("qcow2"), "qcow2", scratch_dir)
    else:
        data = images.path("vmdk-sparse").read_bytes()
    stages: list[str] = []
    dest = tmp_path / "out" / f"disk.{target}"
    dest.parent.mkdir()
    out = _import(
        data,
        "vmdk",
        target,
        dest,
        scratch_dir,
        piece=piece,
        scratch_limit=0,
        on_stage=stages.append,
        expected_content_sha256=images.reference,
    )
    assert (out.conversion, out.scratch_reserved) == ("stream", 0)
    assert stages == [pipeline.STAGE_DOWNLOADING, pipeline.STAGE_VERIFYING]
    assert out.content_sha256 == images.reference
    assert out.virtual_size == VIRTUAL_SIZE
    assert qemu_img.compare(images.base, dest, a_format="raw", b_format=target)
    assert digest.content_digest(dest, target) == images.reference
    if target == "qcow2":
        assert qemu_img.check(dest, "qcow2").clean
    assert listing(dest.parent) == [dest.name]
    assert oct(dest.stat().st_mode & 0o777) == "0o600"


def test_raw_object_import_into_qcow2_is_streamed(
    images: ImageSet, scratch_dir: Path, tmp_path: Path
) -> None:
    data = images.base.read_bytes()
    dest = tmp_path / "disk.qcow2"
    out = _import(data, "raw", "qcow2", dest, scratch_dir, piece=333_333, scratch_limit=0)
    assert (out.conversion, out.content_sha256) == ("stream", images.reference)
    assert qemu_img.compare(images.base, dest, a_format="raw", b_format="qcow2")
    assert qemu_img.check(dest, "qcow2").clean


def test_stream_optimized_vmdk_falls_back_to_scratch(
    images: ImageSet, scratch_dir: Path, tmp_path: Path
) -> None:
    """Not decodable in the stream: every byte already received goes to scratch."""
    data = images.path("vmdk-stream").read_bytes()
    dest = tmp_path / "disk.qcow2"
    out = _import(data, "vmdk", "qcow2", dest, scratch_dir, piece=4096)
    assert out.conversion == "scratch"
    assert out.content_sha256 == images.reference
    assert qemu_img.compare(images.base, dest, a_format="raw", b_format="qcow2")
    assert listing(scratch_dir) == []


def _gd_and_gt(data: bytearray) -> tuple[int, int, int]:
    """(grain table offset, entries per GT, grain size) of a monolithicSparse vmdk."""
    grain = struct.unpack_from("<Q", data, 20)[0] * SECTOR
    per_gt = struct.unpack_from("<I", data, 44)[0]
    gd = struct.unpack_from("<Q", data, 56)[0] * SECTOR
    return struct.unpack_from("<I", data, gd)[0] * SECTOR, per_gt, grain


def _swap_first_and_last_grain(data: bytearray) -> None:
    """Same guest data, but the grains stored in reverse guest order (still valid)."""
    gt, per_gt, grain = _gd_and_gt(data)
    entries = [(i, struct.unpack_from("<I", data, gt + 4 * i)[0]) for i in range(per_gt)]
    used = [(i, sector) for i, sector in entries if sector > 1]
    (i_a, s_a), (i_b, s_b) = used[0], used[-1]
    a, b = s_a * SECTOR, s_b * SECTOR
    data[a : a + grain], data[b : b + grain] = data[b : b + grain], data[a : a + grain]
    struct.pack_into("<I", data, gt + 4 * i_a, s_b)
    struct.pack_into("<I", data, gt + 4 * i_b, s_a)
    rgd = struct.unpack_from("<Q", data, 48)[0] * SECTOR  # the redundant copy agrees
    rgt = struct.unpack_from("<I", data, rgd)[0] * SECTOR
    struct.pack_into("<I", data, rgt + 4 * i_a, s_b)
    struct.pack_into("<I", data, rgt + 4 * i_b, s_a)


@pytest.mark.parametrize("target", ["qcow2", "raw"])
def test_grains_out_of_guest_order(
    images: ImageSet, target: str, scratch_dir: Path, tmp_path: Path
) -> None:
    data = bytearray(images.path("vmdk-sparse").read_bytes())
    _swap_first_and_last_grain(data)
    crafted = tmp_path / "crafted.vmdk"
    crafted.write_bytes(data)
    assert qemu_img.compare(images.base, crafted, a_format="raw", b_format="vmdk")
    dest = tmp_path / f"disk.{target}"
    out = _import(bytes(data), "vmdk", target, dest, scratch_dir)
    assert out.content_sha256 == images.reference  # from the written image
    assert qemu_img.compare(images.base, dest, a_format="raw", b_format=target)


@pytest.mark.parametrize("target", ["qcow2", "raw"])
def test_a_tampered_grain_leaves_nothing(
    images: ImageSet, target: str, scratch_dir: Path, tmp_path: Path
) -> None:
    data = images.path("vmdk-sparse").read_bytes()
    expected = hashlib.sha256(data).hexdigest()
    tampered = bytearray(data)
    tampered[-100] ^= 0x01  # inside the last grain
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ChecksumMismatch, match="SHA256"):
        pipeline.import_image(
            iter([bytes(tampered)]),
            "vmdk",
            target,
            out / f"disk.{target}",
            expected_sha256=expected,
            size=len(data),
            scratch_dir=scratch_dir,
        )
    assert listing(out) == []
    assert listing(scratch_dir) == []


def test_truncated_and_cancelled_streamed_imports_leave_nothing(
    images: ImageSet, scratch_dir: Path, tmp_path: Path
) -> None:
    data = images.path("vmdk-sparse").read_bytes()
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ChecksumMismatch, match="truncated"):
        _import(data[: len(data) // 2], "vmdk", "qcow2", out / "a.qcow2", scratch_dir)
    cancel = threading.Event()

    def on_progress(done: int, _total: int) -> None:
        if done >= MIB:
            cancel.set()

    with pytest.raises(Cancelled):
        _import(
            data,
            "vmdk",
            "qcow2",
            out / "b.qcow2",
            scratch_dir,
            piece=65536,
            progress=on_progress,
            cancel=cancel,
        )
    assert listing(out) == []
    assert listing(scratch_dir) == []


def test_a_vmdk_with_a_parent_is_refused(scratch_dir: Path, tmp_path: Path) -> None:
    base = tmp_path / "base.vmdk"
    qemu_img.create(base, "vmdk", 8 * MIB)
    child = tmp_path / "child.vmdk"
    qemu_img.create(
        child, "vmdk", 8 * MIB, options={"backing_file": str(base), "backing_fmt": "vmdk"}
    )
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InvalidArgument):
        _import(child.read_bytes(), "vmdk", "qcow2", out / "disk.qcow2", scratch_dir)
    assert listing(out) == []
    assert listing(scratch_dir) == []


def test_a_large_sparse_disk_round_trip(scratch_dir: Path, tmp_path: Path) -> None:
    """6 GiB virtual, data spread out: several grain tables, L2 tables and GD sectors."""
    size = 6 * 1024 * MIB + 7 * SECTOR
    raw = tmp_path / "big.raw"
    writes = tuple((off, os.urandom(100_000)) for off in range(MIB - 77, size - 200_000, 700 * MIB))
    write_raw(raw, size, (*writes, (size - 5, b"tail!")))
    data, exported = _export(raw, "raw", scratch_dir)
    assert len(data) < 16 * MIB
    for target in ("qcow2", "raw"):
        dest = tmp_path / f"disk.{target}"
        out = _import(
            data,
            "vmdk",
            target,
            dest,
            scratch_dir,
            expected_content_sha256=exported.content_sha256,
        )
        assert (out.conversion, out.virtual_size) == ("stream", size)
        assert qemu_img.compare(raw, dest, a_format="raw", b_format=target)


def test_a_written_image_that_does_not_map_as_written_is_caught(
    images: ImageSet, scratch_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The streamed qcow2 is checked by qemu-img, not trusted to our writer."""
    real_close = qcow2stream.Qcow2StreamWriter.close

    def faulty_close(self: qcow2stream.Qcow2StreamWriter) -> None:
        real_close(self)
        # Data where the stream had a hole, as a faulty writer would leave it.
        subprocess.run(
            ["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a {20 * MIB} 512", self.path],
            check=True,
            capture_output=True,
        )

    monkeypatch.setattr(qcow2stream.Qcow2StreamWriter, "close", faulty_close)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ChecksumMismatch, match="does not map as written"):
        _import(
            images.path("vmdk-sparse").read_bytes(), "vmdk", "qcow2", out / "d.qcow2", scratch_dir
        )
    assert listing(out) == []
    assert listing(scratch_dir) == []


def test_vmdk_export_flattens_a_backing_chain_in_the_stream(
    images: ImageSet, scratch_dir: Path, tmp_path: Path
) -> None:
    top = tmp_path / "top.qcow2"
    qemu_img.create(
        top,
        "qcow2",
        VIRTUAL_SIZE,
        options={"backing_file": str(images.path("qcow2")), "backing_fmt": "qcow2"},
    )
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -P 0x33 {3 * MIB} 100000", str(top)],
        check=True,
        capture_output=True,
    )
    expected = tmp_path / "expected.raw"
    qemu_img.convert(top, expected, src_format="qcow2", dst_format="raw")
    data, out = _export(top, "qcow2", scratch_dir, scratch_limit=0)
    assert out.conversion == "stream"
    obj = tmp_path / "object.vmdk"
    obj.write_bytes(data)
    assert qemu_img.info(obj, "vmdk").backing_filename is None
    assert qemu_img.compare(expected, obj, a_format="raw", b_format="vmdk")
    assert out.content_sha256 == digest.content_digest(expected, "raw")
