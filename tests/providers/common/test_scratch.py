"""The bounded scratch directory and the sparse file helpers."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

from providers.common.scratch import Scratch
from providers.common.sparsefile import SparseWriter, iter_file, iter_file_into, os_error
from virtrigaud.errors import InternalError, InvalidArgument, NotFound, OutOfSpace, PermissionDenied

from .helpers import MIB, listing


def test_scratch_is_removed_on_success_and_on_error(scratch_dir: Path) -> None:
    with Scratch(scratch_dir) as scratch:
        Path(scratch.file("a")).write_bytes(b"x" * 1000)
        assert len(listing(scratch_dir)) == 1
    assert listing(scratch_dir) == []
    with pytest.raises(RuntimeError, match="boom"), Scratch(scratch_dir) as scratch:
        Path(scratch.file("b")).write_bytes(b"y")
        raise RuntimeError("boom")
    assert listing(scratch_dir) == []


def test_scratch_limit_and_free_space(scratch_dir: Path) -> None:
    with Scratch(scratch_dir, limit=10 * MIB) as scratch:
        scratch.reserve(6 * MIB, "first")
        with pytest.raises(OutOfSpace, match="scratch limit"):
            scratch.reserve(5 * MIB, "second")
        scratch.release(6 * MIB)
        scratch.reserve(10 * MIB, "third")
        assert scratch.peak_reserved == 10 * MIB
    free = shutil.disk_usage(scratch_dir).free
    with Scratch(scratch_dir) as scratch, pytest.raises(OutOfSpace, match="is free"):
        scratch.reserve(free + 1024 * MIB, "too much")


def test_streamed_allocation_grows_in_steps(scratch_dir: Path) -> None:
    with Scratch(scratch_dir, limit=100 * MIB) as scratch:
        scratch.allocate(MIB)
        assert scratch.reserved == 64 * MIB
        scratch.allocate(63 * MIB)
        assert scratch.reserved == 64 * MIB
        scratch.allocate(30 * MIB)
        assert scratch.reserved == 100 * MIB  # the step is capped by the limit
        with pytest.raises(OutOfSpace):
            scratch.allocate(10 * MIB)


def test_scratch_rejects_bad_names_and_missing_parent(tmp_path: Path) -> None:
    with Scratch(tmp_path) as scratch:
        for bad in ("", "..", "a/b", "/etc/passwd"):
            with pytest.raises(InvalidArgument):
                scratch.file(bad)
    with pytest.raises(InvalidArgument, match="does not exist"), Scratch(tmp_path / "missing"):
        pass


def test_sparse_writer_leaves_zero_runs_unwritten(tmp_path: Path) -> None:
    path = tmp_path / "out"
    allocated: list[int] = []
    writer = SparseWriter(str(path), on_allocate=allocated.append)
    data = os.urandom(100_000)
    writer.write(bytes(10 * MIB))
    writer.write(data)
    writer.write(bytes(5 * MIB + 7))
    writer.close()
    assert path.stat().st_size == 15 * MIB + 7 + len(data)
    assert path.read_bytes() == bytes(10 * MIB) + data + bytes(5 * MIB + 7)
    assert sum(allocated) == len(data)
    assert path.stat().st_blocks * 512 <= len(data) + 2 * 65536
    pieces = list(iter_file(str(path)))
    assert b"".join(p.data for p in pieces) == path.read_bytes()
    assert sum(len(p.data) for p in pieces if p.hole) >= 14 * MIB  # holes are not read
    # The same pieces read into one reused buffer (each copied before the next read).
    buffer = bytearray(3 * MIB)
    views = [(bytes(v), hole) for v, hole in iter_file_into(str(path), buffer)]
    assert b"".join(v for v, _ in views) == path.read_bytes()
    assert max(len(v) for v, _ in views) <= len(buffer)
    assert sum(len(v) for v, hole in views if hole) >= 14 * MIB


def test_sparse_writer_abort_removes_the_file(tmp_path: Path) -> None:
    writer = SparseWriter(str(tmp_path / "out"))
    writer.write(b"data")
    writer.abort()
    assert listing(tmp_path) == []


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (errno.ENOSPC, OutOfSpace),
        (errno.EDQUOT, OutOfSpace),
        (errno.EACCES, PermissionDenied),
        (errno.EROFS, PermissionDenied),
        (errno.ENOENT, NotFound),
        (errno.EIO, InternalError),
    ],
)
def test_os_error_translation(code: int, error: type[Exception]) -> None:
    translated = os_error(OSError(code, os.strerror(code), "/x/disk.img"))
    assert type(translated) is error
    assert "/x/disk.img" in translated.message
