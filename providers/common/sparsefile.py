"""Sparse-aware file I/O: read a file without reading its holes, write one that keeps them.

Reading uses ``SEEK_DATA``/``SEEK_HOLE``: a hole is produced as zeros without a read
system call (and reported as a hole so hashers can skip hashing it). Writing creates a
new file and leaves every all-zero piece unwritten, then sets the final length, so a
stream with long zero runs costs only its data in disk space. Filesystems without
``SEEK_DATA`` simply report the whole file as data.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from virtrigaud.errors import (
    Cancelled,
    InternalError,
    InvalidArgument,
    NotFound,
    OutOfSpace,
    PermissionDenied,
    VirtrigaudError,
)

from .qemu_img import CancelToken

IO_BLOCK = 1024 * 1024
ZERO_BLOCK = 64 * 1024  # granularity at which the writer looks for zeros
_ZEROS_IO = bytes(IO_BLOCK)
_ZEROS_BLOCK = bytes(ZERO_BLOCK)


@dataclass(frozen=True)
class Piece:
    """A run of file bytes in order; ``hole`` pieces are zeros that were never read."""

    data: bytes
    hole: bool


def segments(fd: int, size: int) -> Iterator[tuple[int, int, bool]]:
    """``(start, end, is_data)`` runs covering ``[0, size)`` of an open file."""
    pos = 0
    while pos < size:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole is left
                yield pos, size, False
                return
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):  # no SEEK_DATA here
                yield pos, size, True
                return
            raise
        if data > pos:
            yield pos, min(data, size), False
        if data >= size:
            return
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), size)
        yield data, hole, True
        pos = hole


def iter_file(
    path: str,
    *,
    block: int = IO_BLOCK,
    cancel: CancelToken | None = None,
) -> Iterator[Piece]:
    """Every byte of ``path`` in order, in pieces of at most ``block`` bytes."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        size = os.fstat(fd).st_size
        for start, end, is_data in segments(fd, size):
            pos = start
            while pos < end:
                if cancel is not None and cancel.is_set():
                    raise Cancelled("cancelled while reading " + path)
                n = min(block, end - pos)
                if is_data:
                    chunk = os.pread(fd, n, pos)
                    if not chunk:
                        raise InternalError(f"{path} shrank while being read")
                    yield Piece(chunk, False)
                    pos += len(chunk)
                else:
                    yield Piece(_ZEROS_IO[:n] if n < IO_BLOCK else _ZEROS_IO, True)
                    pos += n
    finally:
        os.close(fd)


def iter_file_into(
    path: str, buffer: bytearray, *, cancel: CancelToken | None = None
) -> Iterator[tuple[memoryview, bool]]:
    """Like ``iter_file``, but data is read into ``buffer`` (no allocation per piece).

    Yields ``(view, hole)``; a data view is only valid until the next piece is asked
    for, so the consumer must copy what it keeps (storage writers do). Hole pieces are
    views of a shared zero block. Pieces are at most ``len(buffer)`` bytes.
    """
    whole = memoryview(buffer)
    zeros = memoryview(_ZEROS_IO)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        for pos, n, is_data in _runs(fd, path, len(buffer), cancel):
            if is_data:
                view = whole[:n]
                done = 0
                while done < n:
                    got = os.preadv(fd, [view[done:]], pos + done)
                    if not got:
                        raise InternalError(f"{path} shrank while being read")
                    done += got
                yield view, False
            else:
                for start in range(0, n, IO_BLOCK):
                    yield zeros[: min(IO_BLOCK, n - start)], True
    finally:
        os.close(fd)


def _runs(
    fd: int, path: str, block: int, cancel: CancelToken | None
) -> Iterator[tuple[int, int, bool]]:
    """``(offset, length, is_data)`` pieces of at most ``block`` bytes covering the file."""
    size = os.fstat(fd).st_size
    for start, end, is_data in segments(fd, size):
        pos = start
        while pos < end:
            if cancel is not None and cancel.is_set():
                raise Cancelled("cancelled while reading " + path)
            n = min(block, end - pos)
            yield pos, n, is_data
            pos += n


def is_zero(data: bytes | memoryview) -> bool:
    """All zero bytes (a memcmp against a zero block, far cheaper than hashing)."""
    view = memoryview(data)
    for i in range(0, len(view), IO_BLOCK):
        part = bytes(view[i : i + IO_BLOCK])
        if part != _ZEROS_IO[: len(part)]:
            return False
    return True


class SparseWriter:
    """Sequential writer of a new file; all-zero pieces become holes.

    ``on_allocate(n)`` is told about every byte actually written, so a caller can keep
    the file within a scratch budget (and stop it by raising). ``durable=False`` skips
    the fsync at close, for temporary files that are worthless after a crash anyway
    (scratch copies read back by qemu-img right away).
    """

    def __init__(
        self,
        path: str,
        *,
        on_allocate: Callable[[int], None] | None = None,
        durable: bool = True,
        length: int = 0,
    ) -> None:
        self.path = path
        self.size = 0
        self.allocated = 0
        self._on_allocate = on_allocate
        self._durable = durable
        self._length = length  # the file's length at close at least (a disk's size)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        self._fd: int | None = os.open(path, flags, 0o600)

    def write(self, data: bytes | memoryview) -> None:
        """``data`` after everything written so far."""
        self.write_at(self.size, data)

    def write_at(self, offset: int, data: bytes | memoryview) -> None:
        """``data`` at ``offset``; all-zero blocks (``ZERO_BLOCK``, file-aligned) stay holes."""
        run_start = -1
        pos = 0
        while pos < len(data):
            n = min(len(data) - pos, ZERO_BLOCK - (offset + pos) % ZERO_BLOCK)
            # A non-zero first byte settles the block without copying it (dense data);
            # only blocks starting with a zero are compared in full.
            if data[pos] == 0 and data[pos : pos + n] == _ZEROS_BLOCK[:n]:
                if run_start >= 0:
                    self._pwrite(data[run_start:pos], offset + run_start)
                    run_start = -1
            elif run_start < 0:
                run_start = pos
            pos += n
        if run_start >= 0:
            self._pwrite(data[run_start:] if run_start else data, offset + run_start)
        self.size = max(self.size, offset + len(data))

    def close(self) -> None:
        """Set the final length (trailing holes included) and flush to disk (if durable)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, max(self.size, self._length))
            if self._durable:
                os.fsync(fd)
        except OSError as exc:
            raise os_error(exc, self.path) from exc
        finally:
            os.close(fd)

    def abort(self) -> None:
        """Close and remove the file."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def _pwrite(self, data: bytes | memoryview, offset: int) -> None:
        assert self._fd is not None, "write after close"
        if self._on_allocate is not None:
            self._on_allocate(len(data))
        pwrite_all(self._fd, data, offset, self.path)
        self.allocated += len(data)


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int, path: str) -> None:
    """All of ``data`` at ``offset`` of ``fd`` (``os.pwrite`` may write less); errors as
    virtrigaud errors naming ``path``."""
    view = memoryview(data)
    while view:
        try:
            written = os.pwrite(fd, view, offset)
        except OSError as exc:
            raise os_error(exc, path) from exc
        view = view[written:]
        offset += written


def unit_runs(ranges: Iterable[tuple[int, int]], size: int, unit: int) -> list[list[int]]:
    """The ``[first, stop)`` runs of ``unit``-byte blocks that the byte ranges
    ``(start, end)`` touch, sorted and merged where they touch or overlap; the ranges may
    come in any order, unaligned and overlapping, but must lie within ``[0, size]``."""
    runs: list[list[int]] = []
    for start, end in sorted(ranges):
        if not 0 <= start <= end <= size:
            raise InvalidArgument(
                f"data range ({start}, {end}) is outside the disk of {size} bytes"
            )
        if start == end:
            continue
        first, stop = start // unit, -(-end // unit)
        if runs and first <= runs[-1][1]:
            runs[-1][1] = max(runs[-1][1], stop)
        else:
            runs.append([first, stop])
    return runs


def os_error(exc: OSError, path: str | None = None) -> VirtrigaudError:
    """The one translation of local file-system errors into virtrigaud errors."""
    where = path or exc.filename or "a local file"
    detail = f"{where}: {exc.strerror or exc}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutOfSpace(f"no space left: {detail}")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionDenied(detail)
    if exc.errno == errno.ENOENT:
        return NotFound(detail)
    return InternalError(detail)
