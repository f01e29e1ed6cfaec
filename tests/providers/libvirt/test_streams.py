"""download_volume / upload_volume (the future ExportDisk / ImportDisk transport)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from providers.libvirt.client import Hole, LibvirtClient
from tests.providers.libvirt.helpers import Lab, MiB, SparseSink, write_pattern
from tests.servers.libvirtd import LibvirtEnv
from virtrigaud import errors

GiB = 1 << 30
DATA_AT = (0, 300 * MiB + 12345, GiB - MiB)  # where the sparse image holds data


@pytest.fixture
def lvc(env: LibvirtEnv) -> Iterator[LibvirtClient]:
    client = LibvirtClient(env.uri)
    yield client
    client.close()


def _sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(8 * MiB), b""):
            digest.update(block)
    return digest.hexdigest()


def _sparse_volume(env: LibvirtEnv, lv: Lab) -> str:
    path = lv.volume(env.name("sparse.img"), GiB, "raw")
    with open(path, "r+b") as handle:
        for offset in DATA_AT:
            handle.seek(offset)
            handle.write(os.urandom(1 * MiB))
    return path


def test_sparse_download_sends_only_data_and_reassembles_exactly(
    env: LibvirtEnv, lv: Lab, lvc: LibvirtClient, tmp_path: Path
) -> None:
    source = _sparse_volume(env, lv)
    allocated = os.stat(source).st_blocks * 512
    sink = SparseSink(tmp_path / "copy.img")
    stats = lvc.download_volume(source, sink.write, 0, 0, None, sink.hole)
    sink.close()
    assert stats.total == GiB
    assert stats.hole_bytes == sum(sink.holes)
    assert stats.data_bytes <= allocated  # only allocated extents travelled as data
    assert stats.data_bytes >= 3 * MiB
    assert stats.hole_bytes >= GiB - 8 * MiB
    assert os.path.getsize(tmp_path / "copy.img") == GiB
    assert _sha256(tmp_path / "copy.img") == _sha256(source)


def test_download_of_a_range_without_a_hole_sink_writes_zeros(
    env: LibvirtEnv, lv: Lab, lvc: LibvirtClient
) -> None:
    source = _sparse_volume(env, lv)
    offset, length = 300 * MiB - 512 * 1024, 2 * MiB
    received = bytearray()
    stats = lvc.download_volume(source, received.extend, offset, length)
    with open(source, "rb") as handle:
        handle.seek(offset)
        expected = handle.read(length)
    assert stats.total == length
    assert bytes(received) == expected
    assert expected[:4096] == bytes(4096)  # the range starts in a hole


def test_download_cancel_stops_and_the_connection_stays_usable(
    env: LibvirtEnv, lv: Lab, lvc: LibvirtClient
) -> None:
    source = lv.volume(env.name("cancel.img"), 16 * MiB, "raw")
    with open(source, "r+b") as handle:
        handle.write(os.urandom(16 * MiB))
    cancel = threading.Event()
    got: list[int] = []

    def sink(data: bytes) -> None:
        got.append(len(data))
        cancel.set()

    with pytest.raises(errors.Cancelled):
        lvc.download_volume(source, sink, 0, 0, cancel)
    assert 0 < sum(got) < 16 * MiB
    received = bytearray()
    lvc.download_volume(source, received.extend)
    assert hashlib.sha256(received).hexdigest() == _sha256(source)


def test_upload_round_trips_bytes_and_holes(env: LibvirtEnv, lv: Lab, lvc: LibvirtClient) -> None:
    head, tail = os.urandom(3 * MiB + 17), os.urandom(1 * MiB)
    name = env.name("up.img")
    lv.track_volume(str(env.pool_path / name))
    vol = lvc.upload_volume(env.pool, name, "raw", 16 * MiB, [head, Hole(5 * MiB), tail])
    assert (vol.name, vol.format, vol.capacity) == (name, "raw", 16 * MiB)
    expected = head + bytes(5 * MiB) + tail
    expected += bytes(16 * MiB - len(expected))
    with open(vol.path, "rb") as handle:
        assert handle.read() == expected
    received = bytearray()
    stats = lvc.download_volume(vol.path, received.extend)
    assert bytes(received) == expected
    assert stats.hole_bytes >= 5 * MiB  # the hole stayed a hole


def test_upload_of_a_qcow2_image_is_a_usable_qcow2_volume(
    env: LibvirtEnv, lv: Lab, lvc: LibvirtClient, tmp_path: Path
) -> None:
    image = tmp_path / "src.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(image), "48M"], check=True)
    write_pattern(str(image), "qcow2", 0x7E, 5 * MiB, 3 * MiB)
    data = image.read_bytes()
    name = env.name("up.qcow2")
    lv.track_volume(str(env.pool2_path / name))
    chunks = (data[i : i + MiB] for i in range(0, len(data), MiB))
    vol = lvc.upload_volume(env.pool2, name, "qcow2", 48 * MiB, chunks)
    assert (vol.format, vol.capacity) == ("qcow2", 48 * MiB)
    done = subprocess.run(
        ["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", str(image), vol.path],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_upload_never_leaves_a_half_written_volume(
    env: LibvirtEnv, lv: Lab, lvc: LibvirtClient
) -> None:
    existing = lv.volume(env.name("taken.img"), 1 * MiB, "raw")
    with open(existing, "r+b") as handle:
        handle.write(b"keep")
    with pytest.raises(errors.AlreadyExists):
        lvc.upload_volume(env.pool, env.name("taken.img"), "raw", MiB, [b"overwrite"])
    with open(existing, "rb") as check:
        assert check.read(4) == b"keep"

    cancel = threading.Event()

    def chunks() -> Iterator[bytes]:
        yield os.urandom(MiB)
        cancel.set()
        yield os.urandom(MiB)

    name = env.name("cancelled.img")
    with pytest.raises(errors.Cancelled):
        lvc.upload_volume(env.pool, name, "raw", 4 * MiB, chunks(), cancel)
    assert lvc.find_volume(env.pool, name) is None
    assert not (env.pool_path / name).exists()

    def broken() -> Iterator[bytes]:
        yield os.urandom(MiB)
        raise OSError("source went away")

    with pytest.raises(OSError, match="source went away"):
        lvc.upload_volume(env.pool, name, "raw", 4 * MiB, broken())
    assert not (env.pool_path / name).exists()
    for hostile in ("../evil.img", "a/b.img", "x'<>&.img", ".hidden"):
        with pytest.raises(errors.InvalidArgument):
            lvc.upload_volume(env.pool, hostile, "raw", MiB, [b"x"])
    assert not (env.pool_path.parent / "evil.img").exists()


def test_upload_holes_never_keep_what_creating_the_volume_wrote(
    env: LibvirtEnv, lv: Lab, lvc: LibvirtClient
) -> None:
    # Creating a qcow2 volume writes a header and tables; an upload starting with a
    # hole must still leave zeros there: the volume holds exactly the bytes sent.
    tail = os.urandom(64 * 1024)
    name = env.name("holes.qcow2")
    lv.track_volume(str(env.pool_path / name))
    vol = lvc.upload_volume(env.pool, name, "qcow2", 16 * MiB, [Hole(1 * MiB), tail])
    received = bytearray()
    lvc.download_volume(vol.path, received.extend)
    assert bytes(received) == bytes(1 * MiB) + tail
