"""A private, bounded scratch directory that is removed on every exit path.

qemu-img reads and writes only seekable regular files, so some conversions need a
file on local disk. Every such file lives in one ``Scratch``: a fresh directory
created inside the configured scratch location and deleted (with all it holds) when
the ``with`` block ends, whether it ends normally, by an exception or by cancellation.

The budget is explicit. Before a file is produced the caller ``reserve``s its worst
case size; the reservation is refused with ``OutOfSpace`` when it would exceed the
configured ``limit`` or the free space of the filesystem. Streams of unknown length
``allocate`` as they write, and are refused in the same way the moment they outgrow
what is available.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from types import TracebackType

from virtrigaud.errors import InvalidArgument, OutOfSpace

_GROW_STEP = 64 * 1024 * 1024
MIB = 1024 * 1024
_SIZE = re.compile(r"\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*", re.IGNORECASE)


def parse_size(value: str, field: str) -> int:
    """``1073741824``, ``512M``, ``20G``, ``1TiB`` -> bytes (suffixes are powers of 1024);
    the form of every provider's ``scratchLimit`` option."""
    match = _SIZE.fullmatch(value)
    if match is None:
        raise InvalidArgument(f"{field}: {value!r} is not a size (e.g. 20G)")
    number, unit = int(match.group(1)), match.group(2).upper()
    scale: int = 1024 ** " KMGT".index(unit or " ")
    return number * scale


def scratch_options(options: Mapping[str, str]) -> tuple[str | None, int | None]:
    """A provider's ``scratchDir`` (an existing directory) and ``scratchLimit`` (a size)
    options, checked: every provider takes them in this form."""
    directory = options.get("scratchDir") or None
    if directory is not None and not os.path.isdir(directory):
        raise InvalidArgument(f"scratchDir: {directory!r} is not a directory")
    limit = options.get("scratchLimit", "")
    return directory, parse_size(limit, "scratchLimit") if limit else None


class Scratch:
    """``with Scratch(parent, limit=...) as scratch: scratch.file("x.qcow2")``."""

    def __init__(self, parent: str | os.PathLike[str] | None = None, *, limit: int | None = None):
        if limit is not None and limit < 0:
            raise InvalidArgument(f"scratch limit must not be negative, got {limit}")
        self.parent = os.path.abspath(parent if parent is not None else tempfile.gettempdir())
        self.limit = limit
        self.reserved = 0
        self.peak_reserved = 0
        self._path: str | None = None
        self._stream_reserved = 0
        self._stream_used = 0

    @property
    def path(self) -> str:
        if self._path is None:
            raise RuntimeError("Scratch used outside its with block")
        return self._path

    def __enter__(self) -> Scratch:
        if not os.path.isdir(self.parent):
            raise InvalidArgument(f"scratch directory {self.parent} does not exist")
        self._path = tempfile.mkdtemp(prefix="virtrigaud-scratch-", dir=self.parent)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    def cleanup(self) -> None:
        if self._path is not None:
            shutil.rmtree(self._path, ignore_errors=True)
            self._path = None

    def file(self, name: str) -> str:
        """A path inside the scratch directory (a plain name, no directories)."""
        if not name or os.path.basename(name) != name or name in (".", ".."):
            raise InvalidArgument(f"invalid scratch file name {name!r}")
        return os.path.join(self.path, name)

    def reserve(self, nbytes: int, purpose: str) -> None:
        """Claim ``nbytes`` of the budget for ``purpose`` or raise OutOfSpace."""
        nbytes = max(0, nbytes)
        if self.limit is not None and self.reserved + nbytes > self.limit:
            raise OutOfSpace(
                f"scratch space for {purpose} needs up to {_mib(nbytes)} but the scratch "
                f"limit is {_mib(self.limit)} ({_mib(self.reserved)} already in use)"
            )
        # Earlier reservations not yet written will take their share of the free space.
        outstanding = max(self.reserved - self.disk_usage(), 0)
        free = shutil.disk_usage(self.path).free - outstanding
        if nbytes > free:
            raise OutOfSpace(
                f"scratch space for {purpose} needs up to {_mib(nbytes)} but only "
                f"{_mib(max(free, 0))} is free in {self.parent}"
            )
        self.reserved += nbytes
        self.peak_reserved = max(self.peak_reserved, self.reserved)

    def disk_usage(self) -> int:
        """Bytes the scratch files occupy on disk now (allocated blocks, not lengths)."""
        total = 0
        for root, _dirs, files in os.walk(self.path):
            for name in files:
                with contextlib.suppress(FileNotFoundError):
                    total += os.lstat(os.path.join(root, name)).st_blocks * 512
        return total

    def release(self, nbytes: int) -> None:
        self.reserved = max(0, self.reserved - nbytes)

    def release_stream(self) -> None:
        """The streamed file is gone: give its reservation back."""
        self.release(self._stream_reserved)
        self._stream_reserved = self._stream_used = 0

    def allocate(self, nbytes: int) -> None:
        """Account bytes a stream is about to write; grow the reservation in steps."""
        self._stream_used += nbytes
        if self._stream_used > self._stream_reserved:
            step = max(_GROW_STEP, self._stream_used - self._stream_reserved)
            if self.limit is not None:
                step = min(step, max(self.limit - self.reserved, 0))
                step = max(step, self._stream_used - self._stream_reserved)
            self.reserve(step, "a streamed download")
            self._stream_reserved += step


def _mib(nbytes: int) -> str:
    return f"{nbytes / MIB:.1f} MiB"
