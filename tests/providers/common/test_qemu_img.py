"""The qemu-img wrapper against the real qemu-img binary."""

from __future__ import annotations

import itertools
import os
import subprocess
import threading
from pathlib import Path

import pytest

from providers.common import qemu_img
from virtrigaud.errors import (
    AlreadyExists,
    Cancelled,
    FailedPrecondition,
    InternalError,
    InvalidArgument,
    NotFound,
    OutOfSpace,
    PermissionDenied,
)

from .helpers import (
    BY_NAME,
    MIB,
    VARIANT_NAMES,
    VIRTUAL_SIZE,
    WRITES,
    ImageSet,
    random_raw,
    write_raw,
)


@pytest.mark.parametrize("name", VARIANT_NAMES)
def test_info_parses_every_format(images: ImageSet, name: str) -> None:
    variant = BY_NAME[name]
    info = qemu_img.info(images.path(name))
    assert info.format == variant.format
    assert info.virtual_size == VIRTUAL_SIZE
    assert info.filename == str(images.path(name))
    assert info.actual_size is not None and info.actual_size > 0
    assert not info.dirty and not info.corrupt and not info.encrypted
    assert info.backing_filename is None and info.backing_chain == ()
    if variant.format == "vmdk":
        assert info.create_type == variant.subformat
        assert len(info.extents) == 1
        assert info.extents[0].compressed == (variant.subformat == "streamOptimized")
        expected = (
            str(images.path(name)).removesuffix(".vmdk") + "-flat.vmdk"
            if variant.subformat == "monolithicFlat"
            else str(images.path(name))
        )
        assert info.extents[0].filename == expected
    if variant.format == "qcow2":
        assert info.cluster_size == 65536
        assert info.compat == "1.1"


def test_info_backing_chain(images: ImageSet, tmp_path: Path) -> None:
    base = images.path("qcow2")
    top = tmp_path / "top.qcow2"
    qemu_img.create(
        top, "qcow2", VIRTUAL_SIZE, options={"backing_file": str(base), "backing_fmt": "qcow2"}
    )
    info = qemu_img.info(top)
    assert info.backing_filename == str(base)
    assert info.backing_format == "qcow2"
    assert [layer.filename for layer in info.layers] == [str(top), str(base)]
    assert info.backing_chain[0].backing_filename is None
    # Without --backing-chain only the top layer is described.
    assert qemu_img.info(top, backing_chain=False).backing_chain == ()


def test_map_reports_data_holes_and_offsets(images: ImageSet) -> None:
    extents = qemu_img.map(images.path("qcow2"), "qcow2")
    assert extents[0].start == 0
    assert extents[-1].end == VIRTUAL_SIZE
    assert all(a.end == b.start for a, b in itertools.pairwise(extents))
    data = [e for e in extents if e.data]
    for offset, payload in WRITES:
        if any(payload):
            assert any(e.start <= offset < e.end for e in data), offset
    holes = [e for e in extents if e.zero and not e.present]
    assert sum(e.length for e in holes) > VIRTUAL_SIZE // 2
    assert all(e.offset is not None for e in data)  # uncompressed qcow2: raw mapping
    compressed = [e for e in qemu_img.map(images.path("qcow2-compressed")) if e.data]
    assert compressed and any(e.offset is None for e in compressed)


def test_map_of_raw_uses_file_offsets(images: ImageSet) -> None:
    extents = qemu_img.map(images.path("raw"), "raw")
    assert all(e.offset == e.start for e in extents if e.offset is not None)
    assert any(e.zero for e in extents) and any(e.data for e in extents)


@pytest.mark.parametrize("name", ["qcow2", "vmdk-sparse", "vdi", "vhdx"])
def test_check_clean_image(images: ImageSet, name: str) -> None:
    result = qemu_img.check(images.path(name), BY_NAME[name].format)
    assert result.supported and result.clean
    assert result.format == BY_NAME[name].format


def test_check_reports_corruption_instead_of_failing(images: ImageSet, tmp_path: Path) -> None:
    truncated = tmp_path / "trunc.qcow2"
    truncated.write_bytes(images.path("qcow2").read_bytes()[:100_000])
    result = qemu_img.check(truncated, "qcow2")
    assert result.supported
    assert result.corruptions > 0
    assert not result.clean


def test_check_unsupported_format(images: ImageSet) -> None:
    result = qemu_img.check(images.path("raw"), "raw")
    assert not result.supported
    assert result.format == "raw"


def test_compare(images: ImageSet, tmp_path: Path) -> None:
    for name in VARIANT_NAMES:
        assert qemu_img.compare(images.base, images.path(name), a_format="raw")
    changed = tmp_path / "changed.raw"
    write_raw(changed, VIRTUAL_SIZE, (*WRITES, (20 * MIB, b"x")))
    assert not qemu_img.compare(changed, images.path("qcow2"), a_format="raw", b_format="qcow2")
    with pytest.raises(NotFound):
        qemu_img.compare(tmp_path / "missing.qcow2", images.path("qcow2"))


def test_create_and_vpc_force_size(tmp_path: Path) -> None:
    odd = 10 * MIB + 512
    qemu_img.create(tmp_path / "a.qcow2", "qcow2", odd)
    assert qemu_img.info(tmp_path / "a.qcow2").virtual_size == odd
    qemu_img.create(tmp_path / "a.vpc", "vpc", odd)
    assert qemu_img.info(tmp_path / "a.vpc").virtual_size == odd


def test_convert_to_vpc_keeps_the_virtual_size(images: ImageSet, tmp_path: Path) -> None:
    out = tmp_path / "x.vpc"
    qemu_img.convert(images.base, out, src_format="raw", dst_format="vpc")
    assert qemu_img.info(out).virtual_size == VIRTUAL_SIZE
    # What force_size=on prevents: qemu-img's own default rounds to a CHS geometry.
    plain = tmp_path / "plain.vpc"
    subprocess.run(["qemu-img", "convert", "-O", "vpc", str(images.base), str(plain)], check=True)
    assert qemu_img.info(plain).virtual_size != VIRTUAL_SIZE


def test_convert_sparse_and_fully_allocated(images: ImageSet, tmp_path: Path) -> None:
    sparse, full = tmp_path / "sparse.raw", tmp_path / "full.raw"
    qemu_img.convert(images.path("qcow2"), sparse, src_format="qcow2", dst_format="raw")
    qemu_img.convert(images.path("qcow2"), full, src_format="qcow2", dst_format="raw", sparse=False)
    assert sparse.stat().st_blocks * 512 < VIRTUAL_SIZE // 2
    assert full.stat().st_blocks * 512 >= VIRTUAL_SIZE
    assert sparse.read_bytes() == full.read_bytes() == images.base.read_bytes()


def test_convert_progress_increases_to_one(tmp_path: Path) -> None:
    src = random_raw(tmp_path / "dense.raw", 32 * MIB)
    fractions: list[float] = []
    qemu_img.convert(
        src, tmp_path / "out.qcow2", src_format="raw", dst_format="qcow2", progress=fractions.append
    )
    assert len(fractions) >= 5
    assert fractions == sorted(set(fractions))
    assert fractions[0] < 0.5
    assert fractions[-1] == 1.0
    assert qemu_img.compare(src, tmp_path / "out.qcow2", a_format="raw")


@pytest.mark.parametrize(
    ("fmt", "subformat"), [("vmdk", "streamOptimized"), ("vmdk", "monolithicFlat")]
)
def test_convert_cancel_kills_and_removes_output(tmp_path: Path, fmt: str, subformat: str) -> None:
    src = random_raw(tmp_path / "big.raw", 160 * MIB)
    out = tmp_path / "out.vmdk"
    cancel = threading.Event()
    seen: list[float] = []

    def on_progress(fraction: float) -> None:
        seen.append(fraction)
        if fraction > 0:
            cancel.set()

    with pytest.raises(Cancelled):
        qemu_img.convert(
            src,
            out,
            src_format="raw",
            dst_format=fmt,
            subformat=subformat,
            progress=on_progress,
            cancel=cancel,
        )
    assert seen and seen[-1] < 1.0  # stopped midway, not at the end
    assert sorted(os.listdir(tmp_path)) == ["big.raw"]  # no output, no extent file


def test_convert_refuses_existing_output(images: ImageSet, tmp_path: Path) -> None:
    out = tmp_path / "exists.qcow2"
    out.write_bytes(b"keep me")
    with pytest.raises(AlreadyExists):
        qemu_img.convert(images.base, out, src_format="raw", dst_format="qcow2")
    assert out.read_bytes() == b"keep me"


def test_corrupt_qcow2_is_invalid_argument(images: ImageSet, tmp_path: Path) -> None:
    good = images.path("qcow2").read_bytes()
    bad_magic = tmp_path / "magic.qcow2"
    bad_magic.write_bytes(b"XXXX" + good[4:])
    with pytest.raises(InvalidArgument, match="not in qcow2 format"):
        qemu_img.info(bad_magic, "qcow2")
    bad_l1 = tmp_path / "l1.qcow2"
    bad_l1.write_bytes(good[:40] + b"\xff" * 8 + good[48:])  # L1 table offset
    with pytest.raises(InvalidArgument, match="L1 table"):
        qemu_img.info(bad_l1)
    with pytest.raises(InvalidArgument):
        qemu_img.convert(bad_l1, tmp_path / "out.raw", src_format="qcow2", dst_format="raw")
    assert not (tmp_path / "out.raw").exists()


def test_non_image_is_raw_when_probed_and_refused_as_qcow2(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a disk image\n")
    probed = qemu_img.info(text)
    assert probed.format == "raw"
    assert probed.virtual_size == 512  # qemu rounds a raw file up to a whole sector
    with pytest.raises(InvalidArgument, match="not in qcow2 format"):
        qemu_img.info(text, "qcow2")
    with pytest.raises(InvalidArgument):
        qemu_img.convert(text, tmp_path / "o.raw", src_format="vmdk", dst_format="raw")


def test_unknown_format_rejected_before_running(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="unsupported image format"):
        qemu_img.info(tmp_path / "x", "bogus")
    with pytest.raises(InvalidArgument, match="subformat"):
        qemu_img.create(tmp_path / "x.vmdk", "vmdk", MIB, subformat="nope")
    with pytest.raises(InvalidArgument, match="option name"):
        qemu_img.create(tmp_path / "x.qcow2", "qcow2", MIB, options={"a,b": "1"})
    with pytest.raises(InvalidArgument, match="compress"):
        qemu_img.convert(
            tmp_path / "x", tmp_path / "y", src_format="raw", dst_format="vdi", compress=True
        )


def test_missing_binary_is_internal_error(
    images: ImageSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(qemu_img.BINARY_ENV, "/nonexistent/qemu-img")
    with pytest.raises(InternalError, match="qemu-img not found"):
        qemu_img.info(images.base)


def test_missing_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        qemu_img.info(tmp_path / "nope.qcow2")


def test_path_starting_with_dash_is_a_file(
    images: ImageSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    qemu_img.create("-h.qcow2", "qcow2", MIB)
    assert (tmp_path / "-h.qcow2").exists()
    assert qemu_img.info("-h.qcow2").format == "qcow2"
    qemu_img.convert(images.base, "--help", src_format="raw", dst_format="qcow2")
    assert qemu_img.compare(images.base, "--help", a_format="raw", b_format="qcow2")
    assert qemu_img.safe_path("json:{}") == str(tmp_path / "json:{}")


def test_out_of_space_on_a_small_filesystem(tmp_path: Path) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        src = random_raw(tmp_path / "dense.raw", 16 * MIB)
        with pytest.raises(OutOfSpace):
            qemu_img.convert(src, mnt / "out.qcow2", src_format="raw", dst_format="qcow2")
        assert os.listdir(mnt) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@pytest.mark.parametrize(
    ("stderr", "error"),
    [
        ("qemu-img: error while writing at byte 0: No space left on device", OutOfSpace),
        ("qemu-img: Could not open 'x': Could not open 'x': Permission denied", PermissionDenied),
        (
            "qemu-img: Could not open 'x': Failed to get shared \"write\" lock\n"
            "Is another process using the image [x]?",
            FailedPrecondition,
        ),
        ("qemu-img: Could not open 'x': Image is not in qcow2 format", InvalidArgument),
        ("qemu-img: error while reading at byte 0: Input/output error", InternalError),
        ("", InternalError),
    ],
)
def test_error_translation(stderr: str, error: type[Exception]) -> None:
    translated = qemu_img._error_from(stderr, "convert", 1)
    assert type(translated) is error
    assert translated.message.startswith("qemu-img convert: ")
