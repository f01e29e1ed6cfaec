"""Streaming, parallel, resumable S3 multipart writer.

Size. Streams have unknown length, so parts grow with the stream:
``part_size(n) = min(first << ((n - 1) // 1000), 5 GiB)``. With the default 8 MiB first
part, parts 1-1000 are 8 MiB (7.8 GiB), 1001-2000 16 MiB, ... and 10,000 parts hold
7.8 TiB, more than S3's 5 TiB object limit, so no stream S3 accepts is refused.
``PartSchedule`` checks that property for any configured first size.

Memory. Parts are filled into preallocated buffers and uploaded by a thread pool
(``workers``). A new buffer is only started when fewer than ``workers + 1`` buffers exist
*and* they fit ``max_buffer_bytes`` (one part always fits), so peak buffer memory is
``min((workers + 1) x part_size, max(max_buffer_bytes, part_size))``: 40 MiB for the
first 7.8 GiB of a stream with defaults, at most 512 MiB later (then with fewer parts
in flight). ``peak_buffer_bytes`` reports what was actually used. Finished parts hand
their buffer to the next part rather than allocating a new one (``_BufferBudget``).

Hashing. Every part is hashed once, in its upload thread: that SHA256 goes into the
resume record and is the payload hash the request is signed with (``storage.s3``
passes it to botocore's SigV4 signer, which would otherwise hash the body again).

Digest and resume. The transport digest is the plain SHA256 of the object's bytes, as
on every backend. hashlib objects cannot be serialized, and the parts of an unfinished
multipart upload cannot be read back (GetObject only serves completed objects), so a
restarted writer rebuilds the hash by *replay*: the producer writes the stream again
from byte 0; bytes already on the server are hashed locally and not sent. Each
replayed part is checked against the SHA256 recorded for it in the ResumeState (or,
for parts found only through ListParts, against its ETag when that is the part's MD5)
and a mismatch raises ChecksumMismatch -- the source changed, so the upload must start
over. Parts after the first one that cannot be verified are uploaded again. Re-reading
the local source is much cheaper than re-sending it, and the digest stays the same
definition everywhere; a composite per-part digest would depend on part layout and
differ from the HTTP/NFS digest of the same bytes.

The SHA256 is stored as ``x-amz-meta-sha256`` for single-PUT objects and as the object
tag ``sha256`` for multipart objects (metadata is fixed when a multipart upload starts,
before the digest is known; a tag costs no copy). ``S3Backend.stat`` reads either.
"""

from __future__ import annotations

import functools
import hashlib
import io
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from storage.base import MiB, ObjectInfo, PartRecord, ResumeState, Writer
from virtrigaud.errors import ChecksumMismatch, FailedPrecondition, InvalidArgument, NotFound
from virtrigaud.logging import get_logger

if TYPE_CHECKING:
    from storage.s3 import S3Backend

log = get_logger("storage.s3")

MAX_PARTS = 10_000
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * 1024 * MiB
MAX_OBJECT_SIZE = 5 * 1024 * 1024 * MiB
PARTS_PER_STEP = 1000
_MD5_ETAG_LENGTH = 32


@dataclass(frozen=True)
class PartSchedule:
    """Part sizes that double every 1000 parts, capped at S3's 5 GiB part limit."""

    first: int

    def __post_init__(self) -> None:
        if not MIN_PART_SIZE <= self.first <= MAX_PART_SIZE:
            raise InvalidArgument(f"part size must be between 5 MiB and 5 GiB, not {self.first}")
        if self.capacity() < MAX_OBJECT_SIZE:
            raise InvalidArgument(
                f"part size {self.first} cannot reach S3's 5 TiB limit in {MAX_PARTS} parts"
            )

    def size(self, number: int) -> int:
        return min(self.first << ((number - 1) // PARTS_PER_STEP), MAX_PART_SIZE)

    def capacity(self) -> int:
        return sum(self.size(n) for n in range(1, MAX_PARTS + 1))


class _BufferBudget:
    """Bounds the part buffers alive at once (count and bytes) and recycles them.

    A released buffer is kept for the next part of the same size instead of being
    freed: a fresh 8 MiB ``bytearray`` is zero-filled and page-faulted in, which costs
    as much CPU as a quarter of a SHA256 pass over it. Kept buffers plus buffers in use
    never exceed the count limit (a kept buffer is only reused, never added to), and
    kept buffers of another size are dropped before a new one is allocated, so the
    byte bound of the module docstring holds for all of them together.
    """

    def __init__(self, max_count: int, max_bytes: int) -> None:
        self._cond = threading.Condition()
        self._count = 0
        self._bytes = 0
        self._max_count = max_count
        self._max_bytes = max_bytes
        self._free: list[bytearray] = []
        self.peak_bytes = 0

    def acquire(self, size: int, failed: threading.Event) -> bytearray | None:
        """A buffer of ``size`` bytes (contents undefined); None once ``failed`` is set."""
        with self._cond:
            while not failed.is_set() and (
                self._count >= self._max_count
                or (self._count > 0 and self._bytes + size > self._max_bytes)
            ):
                self._cond.wait(0.5)
            if failed.is_set():
                return None
            self._count += 1
            self._bytes += size
            self.peak_bytes = max(self.peak_bytes, self._bytes)
            if self._free and len(self._free[-1]) == size:
                return self._free.pop()
            self._free.clear()  # another size: parts only grow, these are not needed again
        return bytearray(size)

    def release(self, buf: bytearray) -> None:
        with self._cond:
            self._count -= 1
            self._bytes -= len(buf)
            self._free.append(buf)
            self._cond.notify_all()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def drop_free(self) -> None:
        """Free the kept buffers (the writer is finished)."""
        with self._cond:
            self._free.clear()


class _ViewBody(io.RawIOBase):
    """A seekable read-only file over a part buffer (no copy of the part).

    ``payload_sha256`` is the hex SHA256 of the whole view, computed by the writer
    anyway (resume records, transport digest): ``storage.s3`` signs the request with it
    instead of letting botocore hash the body a second time.
    """

    def __init__(self, view: memoryview, payload_sha256: str | None = None) -> None:
        self._view = view
        self._pos = 0
        self.payload_sha256 = payload_sha256

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def __len__(self) -> int:
        return len(self._view)

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), len(self._view) - self._pos)
        buffer[:n] = self._view[self._pos : self._pos + n]
        self._pos += n
        return n

    def read(self, size: int = -1) -> bytes:
        end = (
            len(self._view) if size is None or size < 0 else min(len(self._view), self._pos + size)
        )
        data = bytes(self._view[self._pos : end])
        self._pos = end
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, min(len(self._view), base + offset))
        return self._pos

    def tell(self) -> int:
        return self._pos


@dataclass(frozen=True)
class ServerPart:
    """A part as ListParts reports it."""

    number: int
    size: int
    etag: str


@dataclass
class _ReplayPart:
    """A part already on the server, to be matched by replayed bytes."""

    number: int
    size: int
    etag: str
    sha256: str | None
    md5: str | None


def _md5_of_etag(etag: str) -> str | None:
    plain = etag.strip('"').lower()
    if len(plain) == _MD5_ETAG_LENGTH and all(c in "0123456789abcdef" for c in plain):
        return plain
    return None


class S3Writer(Writer):
    """See the module docstring. Created by ``S3Backend.open_writer``."""

    resumable = True

    def __init__(self, backend: S3Backend, key: str, resume: ResumeState | None) -> None:
        super().__init__(key)
        self._b = backend
        self._full_key = backend.full_key(key)
        opts = backend.options
        self._schedule = PartSchedule(resume.part_size if resume else opts.part_size)
        self._budget = _BufferBudget(opts.workers + 1, opts.max_buffer_bytes)
        self._workers = opts.workers
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._failed = threading.Event()
        self._error: BaseException | None = None
        self._futures: dict[int, Future[PartRecord]] = {}
        self._done: dict[int, PartRecord] = {}
        self._upload_id: str | None = None
        self._next_part = 1
        self._buf: bytearray | None = None
        self._fill = 0
        self._replay: list[_ReplayPart] = []
        self._replay_hash: Any = None
        self._replay_md5: Any = None
        self._replay_fill = 0
        self.parts_uploaded = 0
        self.bytes_uploaded = 0
        self.bytes_skipped = 0
        if resume is not None:
            self._plan_resume(resume)

    # -- resume -----------------------------------------------------------------

    def _plan_resume(self, state: ResumeState) -> None:
        """Check the saved upload against ListParts and plan which parts to replay."""
        try:
            server = self._b.list_parts(self._full_key, state.upload_id)
        except NotFound:
            log.warning("s3.resume.upload_gone", key=self.key, upload_id=state.upload_id)
            return
        self._upload_id = state.upload_id
        saved = {p.number: p for p in state.parts}
        number = 1
        while number in server:
            # A short part was the last one of an earlier attempt; it cannot stay a
            # middle part (S3's 5 MiB minimum), so it is uploaded again if needed.
            candidates = [c for c in server[number] if c.size >= MIN_PART_SIZE]
            if not candidates:
                break
            record = saved.get(number)
            match = next(
                (
                    c
                    for c in candidates
                    if record and (c.etag, c.size) == (record.etag, record.size)
                ),
                None,
            )
            if match is not None and record is not None and record.sha256:
                self._replay.append(
                    _ReplayPart(number, match.size, match.etag, record.sha256, None)
                )
            elif len(candidates) == 1 and _md5_of_etag(candidates[0].etag):
                only = candidates[0]
                self._replay.append(
                    _ReplayPart(number, only.size, only.etag, None, _md5_of_etag(only.etag))
                )
            else:
                break  # unverifiable: this part and the rest are uploaded again
            number += 1
        self._next_part = number
        log.info(
            "s3.resume.plan",
            key=self.key,
            upload_id=state.upload_id,
            parts=len(self._replay),
            bytes=sum(p.size for p in self._replay),
        )

    def _replay_bytes(self, view: memoryview) -> int:
        """Consume replayed bytes of the current known part; return how many were used."""
        part = self._replay[0]
        if self._replay_hash is None:
            self._replay_hash = hashlib.sha256()
            self._replay_md5 = hashlib.md5(usedforsecurity=False) if part.md5 else None
        n = min(part.size - self._replay_fill, len(view))
        chunk = view[:n]
        self._replay_hash.update(chunk)
        if self._replay_md5 is not None:
            self._replay_md5.update(chunk)
        self._replay_fill += n
        if self._replay_fill == part.size:
            self._finish_replayed_part(part)
        return n

    def _finish_replayed_part(self, part: _ReplayPart) -> None:
        sha = self._replay_hash.hexdigest()
        if part.sha256 is not None and sha != part.sha256:
            ok = False
        elif part.md5 is not None:
            ok = self._replay_md5.hexdigest() == part.md5
        else:
            ok = True
        if not ok:
            raise ChecksumMismatch(
                f"resuming {self.key!r}: part {part.number} differs from the bytes already "
                "uploaded (the source changed); abort and start the upload over"
            )
        self._done[part.number] = PartRecord(part.number, part.size, part.etag, sha)
        self.bytes_skipped += part.size
        self._replay.pop(0)
        self._replay_hash = self._replay_md5 = None
        self._replay_fill = 0

    # -- writing ----------------------------------------------------------------

    def _write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            self._raise_if_failed()
            if self._replay:
                view = view[self._replay_bytes(view) :]
                continue
            if self._buf is None:
                self._start_part()
            assert self._buf is not None
            n = min(len(self._buf) - self._fill, len(view))
            self._buf[self._fill : self._fill + n] = view[:n]
            self._fill += n
            view = view[n:]
            if self._fill == len(self._buf):
                self._submit_part()

    def _start_part(self) -> None:
        if self._next_part > MAX_PARTS:
            raise InvalidArgument(f"{self.key!r} exceeds S3's limit of {MAX_PARTS} parts (5 TiB)")
        size = self._schedule.size(self._next_part)
        buf = self._budget.acquire(size, self._failed)
        if buf is None:
            self._raise_if_failed()
            raise FailedPrecondition(f"writer for {self.key!r} was stopped")
        self._buf = buf
        self._fill = 0

    def _submit_part(self) -> None:
        buf, length, number = self._buf, self._fill, self._next_part
        assert buf is not None
        self._buf, self._fill = None, 0
        self._next_part += 1
        if self._upload_id is None:
            try:
                self._upload_id = self._b.create_multipart_upload(self._full_key)
            except BaseException:
                self._budget.release(buf)
                raise
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="s3-part")
        future = self._pool.submit(self._upload_part, number, buf, length)
        with self._lock:
            self._futures[number] = future
        future.add_done_callback(functools.partial(self._part_done, number, buf))

    def _upload_part(self, number: int, buf: bytearray, length: int) -> PartRecord:
        view = memoryview(buf)[:length]
        # One SHA256 per part: the resume record and the request signature share it.
        sha = hashlib.sha256(view).hexdigest()
        assert self._upload_id is not None
        etag = self._b.upload_part(self._full_key, self._upload_id, number, _ViewBody(view, sha))
        return PartRecord(number, length, etag, sha)

    def _part_done(self, number: int, buf: bytearray, future: Future[PartRecord]) -> None:
        self._budget.release(buf)
        with self._lock:
            self._futures.pop(number, None)
            if future.cancelled():
                return
            error = future.exception()
            if error is None:
                record = future.result()
                self._done[number] = record
                self.parts_uploaded += 1
                self.bytes_uploaded += record.size
            elif self._error is None:
                self._error = error
        if error is not None:
            self._failed.set()
            self._budget.wake()

    def _raise_if_failed(self) -> None:
        if self._failed.is_set() and self._error is not None:
            raise self._error

    def _wait_in_flight(self) -> None:
        with self._lock:
            pending = list(self._futures.values())
        for future in pending:
            future.exception()  # waits; errors are recorded by _part_done

    @property
    def peak_buffer_bytes(self) -> int:
        return self._budget.peak_bytes

    # -- finishing --------------------------------------------------------------

    def _commit(self, sha256: str, size: int) -> ObjectInfo:
        self._raise_if_failed()
        if self._replay:
            uploaded = self.bytes_skipped + sum(p.size for p in self._replay)
            raise ChecksumMismatch(
                f"resuming {self.key!r}: the stream ended at {size} bytes, before the "
                f"{uploaded} bytes already uploaded; the source changed"
            )
        if self._upload_id is None:
            data = memoryview(self._buf)[: self._fill] if self._buf is not None else memoryview(b"")
            try:
                # The whole object is this one buffer: its digest is the payload's.
                etag = self._b.put_small(self._full_key, _ViewBody(data, sha256), sha256)
            finally:
                self._drop_buffer()
            return ObjectInfo(self.key, size, etag, sha256)
        if self._fill or (not self._done and not self._futures):
            if self._buf is None:
                self._start_part()
            self._submit_part()
        self._drop_buffer()
        self._wait_in_flight()
        self._shutdown_pool()
        self._raise_if_failed()
        parts = [self._done[n] for n in sorted(self._done)]
        etag = self._b.complete_multipart_upload(self._full_key, self._upload_id, parts)
        self._b.tag_sha256(self._full_key, sha256)
        log.info(
            "s3.upload.complete",
            key=self.key,
            size=size,
            parts=len(parts),
            uploaded_parts=self.parts_uploaded,
            skipped_bytes=self.bytes_skipped,
        )
        return ObjectInfo(self.key, size, etag, sha256)

    def _abort(self) -> None:
        self._stop_workers()
        if self._upload_id is not None:
            self._b.abort_multipart_upload(self._full_key, self._upload_id)
            log.info("s3.upload.aborted", key=self.key, upload_id=self._upload_id)

    def _detach(self) -> ResumeState | None:
        self._drop_buffer()
        self._wait_in_flight()
        self._shutdown_pool()
        return self.resume_state()

    def checkpoint(self) -> ResumeState | None:
        """Wait for the parts already handed to the pool; return the state to persist.

        The buffer being filled is not flushed (parts keep their schedule size), so a
        checkpoint costs no extra request. Raises the first part upload error, if any.
        """
        self._wait_in_flight()
        self._raise_if_failed()
        return self.resume_state()

    def resume_state(self) -> ResumeState | None:
        if self._upload_id is None:
            return None
        with self._lock:
            parts = tuple(self._done[n] for n in sorted(self._done))
        return ResumeState(self.key, self._upload_id, self._schedule.first, parts)

    def _drop_buffer(self) -> None:
        if self._buf is not None:
            self._budget.release(self._buf)
            self._buf, self._fill = None, 0

    def _stop_workers(self) -> None:
        self._drop_buffer()
        self._failed.set()
        self._budget.wake()
        with self._lock:
            pending = list(self._futures.values())
        for future in pending:
            future.cancel()
        self._wait_in_flight()
        self._shutdown_pool()

    def _shutdown_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._budget.drop_free()
