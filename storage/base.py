"""The storage backend interface, shaped like httpx transports.

A :class:`Backend` is a small object bound to one location (a bucket and prefix, an
HTTP base URL, an NFS directory). It opens streaming :class:`Writer` and
:class:`Reader` objects for keys and offers ``stat``, ``delete``, ``list``, ``url``,
``abort_incomplete`` and ``close``. The public methods are template methods: they
validate the key (``storage.keys``) before any backend code runs, so no backend can
forget it.

Digests. The *transport digest* of an object is the plain SHA256 of its bytes, the same
definition on every backend, so ``sha256sum`` of a downloaded object always matches.
Writers hash every byte passed to :meth:`Writer.write` and store the digest with the
object (S3 metadata or tag, HTTP/NFS ``<key>.sha256`` sidecar). Readers opened at
offset 0 hash while streaming and, at the end, compare size and digest with the
caller's expectation, or else with the stored one; a truncated, extended or corrupted
object raises ChecksumMismatch. See ``storage.s3_multipart`` for how a resumed upload
still produces the plain digest.

Errors are ``virtrigaud.errors`` classes only; each backend translates its library's
errors in exactly one function.
"""

from __future__ import annotations

import abc
import hashlib
import re
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Self

from storage.keys import validate_key, validate_prefix
from storage.retry import RetryPolicy
from virtrigaud.errors import (
    ChecksumMismatch,
    FailedPrecondition,
    InvalidArgument,
    TransientError,
    Unsupported,
)

MiB = 1 << 20
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def check_sha256(value: str | None, field_name: str = "expected_sha256") -> str | None:
    """Normalize a hex SHA256 (lowercase) or raise InvalidArgument."""
    if value is None:
        return None
    lowered = value.strip().lower()
    if not _SHA256_HEX.match(lowered):
        raise InvalidArgument(f"{field_name} must be 64 hex characters")
    return lowered


@dataclass(frozen=True)
class BackendOptions:
    """Tuning knobs shared by the backends (each uses the ones that apply to it)."""

    part_size: int = 8 * MiB  # S3: size of the first parts; grows, see s3_multipart
    workers: int = 4  # S3: parts uploaded in parallel
    max_buffer_bytes: int = 512 * MiB  # S3: cap on part buffers held in memory
    chunk_size: int = 1 * MiB  # readers: size of the chunks they yield
    read_workers: int = 4  # S3 reader: ranged GETs in flight at once
    read_range_size: int = 8 * MiB  # S3 reader: bytes fetched per ranged GET
    queue_chunks: int = 4  # HTTP writer: chunks buffered between write() and the socket
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    connect_timeout: float = 10.0
    read_timeout: float = 120.0
    ca_file: str | None = None  # HTTP/S3: CA bundle (PEM) for TLS verification
    insecure_skip_tls_verify: bool = False  # explicit only; logged as a warning
    force_path_style: bool | None = None  # S3: None = path style for custom endpoints
    trust_env: bool = True  # HTTP: honour HTTP(S)_PROXY / NO_PROXY

    def __post_init__(self) -> None:
        if self.workers < 1 or self.chunk_size < 1 or self.queue_chunks < 1:
            raise InvalidArgument("workers, chunk_size and queue_chunks must be >= 1")
        if self.read_workers < 1 or self.read_range_size < 1:
            raise InvalidArgument("read_workers and read_range_size must be >= 1")
        if self.max_buffer_bytes < self.part_size:
            raise InvalidArgument("max_buffer_bytes must hold at least one part")


@dataclass(frozen=True)
class ObjectInfo:
    """What a backend knows about a stored object."""

    key: str
    size: int
    etag: str | None = None
    sha256: str | None = None  # transport digest stored with the object, when known
    last_modified: datetime | None = None


@dataclass(frozen=True)
class PartRecord:
    """One finished part of a resumable upload."""

    number: int
    size: int
    etag: str
    sha256: str | None = None  # None when recovered from the server (ListParts) only

    def to_dict(self) -> dict[str, Any]:
        return {"number": self.number, "size": self.size, "etag": self.etag, "sha256": self.sha256}


@dataclass(frozen=True)
class ResumeState:
    """What a restarted writer needs to continue an upload (JSON-serializable).

    Persist :meth:`to_dict` (e.g. in the export task's status) as parts finish, and pass
    ``ResumeState.from_dict(saved)`` to ``open_writer(key, resume=...)`` after a restart.
    """

    key: str
    upload_id: str
    part_size: int  # first part size of the part-size schedule in use
    parts: tuple[PartRecord, ...] = ()

    @property
    def committed_bytes(self) -> int:
        return sum(p.size for p in self.parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "uploadId": self.upload_id,
            "partSize": self.part_size,
            "parts": [p.to_dict() for p in self.parts],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResumeState:
        try:
            parts = tuple(
                PartRecord(
                    number=int(p["number"]),
                    size=int(p["size"]),
                    etag=str(p["etag"]),
                    sha256=check_sha256(p.get("sha256"), "parts[].sha256"),
                )
                for p in data.get("parts", ())
            )
            return cls(str(data["key"]), str(data["uploadId"]), int(data["partSize"]), parts)
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArgument(f"malformed resume state: {exc}") from None


class Writer(abc.ABC):
    """A streaming upload of one object: ``write()`` many times, then ``commit()``.

    Nothing is visible at the key before ``commit()`` returns. Used as a context manager,
    a writer that was not committed is aborted on exit -- except that a *resumable*
    writer that hits a TransientError (endpoint down, timeout) is detached instead, so
    its finished parts stay on the server for a restarted export to reuse (clean them up
    with ``Backend.abort_incomplete`` if nobody resumes). Not thread-safe.
    """

    resumable: ClassVar[bool] = False

    def __init__(self, key: str) -> None:
        self.key = key
        self._hash = hashlib.sha256()
        self._size = 0
        self._state = "open"  # open | committed | aborted | detached | failed

    @property
    def bytes_written(self) -> int:
        """Bytes passed to write() so far (including bytes replayed on resume)."""
        return self._size

    @property
    def closed(self) -> bool:
        return self._state in ("committed", "aborted", "detached")

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._state != "open":
            raise FailedPrecondition(f"writer for {self.key!r} is {self._state}")
        view = memoryview(data).cast("B") if not isinstance(data, bytes) else data
        if not len(view):
            return
        self._hash.update(view)
        self._size += len(view)
        try:
            self._write(view)
        except BaseException:
            self._state = "failed"
            raise

    def commit(self) -> ObjectInfo:
        """Finish the upload; the object is visible at the key once this returns."""
        if self._state != "open":
            raise FailedPrecondition(f"writer for {self.key!r} is {self._state}")
        try:
            info = self._commit(self._hash.hexdigest(), self._size)
        except BaseException:
            self._state = "failed"
            raise
        self._state = "committed"
        return info

    def abort(self) -> None:
        """Drop everything uploaded by this writer (idempotent; no-op after commit)."""
        if self._state in ("committed", "aborted", "detached"):
            return
        self._state = "aborted"
        self._abort()

    def resume_state(self) -> ResumeState | None:
        """The state a restarted writer can continue from (None: not resumable yet)."""
        return None

    def detach(self) -> ResumeState | None:
        """Stop without committing or aborting and return the resume state.

        Non-resumable writers abort instead and return None.
        """
        if not self.resumable:
            self.abort()
            return None
        if self._state in ("committed", "aborted", "detached"):
            return self.resume_state()
        self._state = "detached"
        return self._detach()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        if self._state in ("committed", "aborted", "detached"):
            return
        if self.resumable and isinstance(exc, TransientError):
            self.detach()
        else:
            self.abort()

    @abc.abstractmethod
    def _write(self, data: bytes | memoryview) -> None: ...

    @abc.abstractmethod
    def _commit(self, sha256: str, size: int) -> ObjectInfo: ...

    @abc.abstractmethod
    def _abort(self) -> None: ...

    def _detach(self) -> ResumeState | None:
        raise Unsupported("this writer cannot be resumed")


class Reader(abc.ABC):
    """A streaming download: iterate to get ``bytes`` chunks.

    Opened at offset 0, the reader hashes everything it yields and, after the last
    chunk, raises ChecksumMismatch if the size or the digest differs from the expected
    (the caller's, else the one stored with the object). From a later offset only the
    size is checked (the prefix's digest is unknown). Subclasses resume a broken
    download at the current offset themselves.
    """

    def __init__(
        self,
        info: ObjectInfo,
        offset: int,
        expected_sha256: str | None,
        expected_size: int | None,
    ) -> None:
        self.info = info
        self.key = info.key
        self.offset = offset
        self.expected_size = expected_size if expected_size is not None else info.size
        self.expected_sha256 = expected_sha256 if expected_sha256 else info.sha256
        self._hash = hashlib.sha256() if offset == 0 else None
        self._position = offset
        self._started = False
        self._gen: Iterator[bytes] | None = None
        self.verified = False

    @property
    def position(self) -> int:
        """Offset of the next byte to be yielded."""
        return self._position

    @property
    def sha256(self) -> str | None:
        """Hex digest of what was read (offset 0 only)."""
        return self._hash.hexdigest() if self._hash is not None else None

    def __iter__(self) -> Iterator[bytes]:
        if self._started:
            raise FailedPrecondition(f"reader for {self.key!r} can only be iterated once")
        self._started = True
        self._gen = self._verified_chunks()
        return self._gen

    def _verified_chunks(self) -> Iterator[bytes]:
        source = self._chunks(self._position)
        try:
            for chunk in source:
                if not chunk:
                    continue
                if self._position + len(chunk) > self.expected_size:
                    raise ChecksumMismatch(
                        f"{self.key!r} is longer than the expected {self.expected_size} bytes"
                    )
                if self._hash is not None:
                    self._hash.update(chunk)
                self._position += len(chunk)
                yield chunk
            self._finish()
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()  # release the connection now, not when the generator is collected
            self._release()

    def _finish(self) -> None:
        if self._position != self.expected_size:
            raise ChecksumMismatch(
                f"{self.key!r} is truncated: {self._position} of {self.expected_size} bytes"
            )
        if self._hash is not None and self.expected_sha256:
            actual = self._hash.hexdigest()
            if actual != self.expected_sha256:
                raise ChecksumMismatch(
                    f"{self.key!r} has sha256 {actual}, expected {self.expected_sha256}"
                )
            self.verified = True

    def read_all(self) -> bytes:
        """Everything from the offset to the end (small objects and tests only)."""
        return b"".join(self)

    def close(self) -> None:
        if self._gen is not None:
            gen, self._gen = self._gen, None
            close = getattr(gen, "close", None)
            if close is not None:
                close()
        else:
            self._release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abc.abstractmethod
    def _chunks(self, offset: int) -> Iterator[bytes]:
        """Yield the object's bytes from ``offset``, resuming broken transfers."""

    def _release(self) -> None:  # noqa: B027 -- optional hook
        """Free resources (connections, file descriptors)."""


class Backend(abc.ABC):
    """One storage location. Public methods validate keys, then call the ``_`` methods."""

    scheme: ClassVar[str]

    def open_writer(self, key: str, *, resume: ResumeState | None = None) -> Writer:
        """A streaming writer for ``key``; ``resume`` continues an earlier upload."""
        validate_key(key)
        if resume is not None and resume.key != key:
            raise InvalidArgument(f"resume state is for {resume.key!r}, not {key!r}")
        return self._open_writer(key, resume)

    def open_reader(
        self,
        key: str,
        offset: int = 0,
        expected_sha256: str | None = None,
        expected_size: int | None = None,
    ) -> Reader:
        """A streaming reader from ``offset``; see :class:`Reader` for verification."""
        validate_key(key)
        expected = check_sha256(expected_sha256)
        if offset < 0 or (expected_size is not None and expected_size < 0):
            raise InvalidArgument("offset and expected_size must be >= 0")
        info = self._stat(key)
        size = expected_size if expected_size is not None else info.size
        if offset > size:
            raise InvalidArgument(f"offset {offset} is beyond the end of {key!r} ({size} bytes)")
        if expected and info.sha256 and expected != info.sha256:
            raise ChecksumMismatch(
                f"{key!r} was stored with sha256 {info.sha256}, expected {expected}"
            )
        return self._open_reader(info, offset, expected, expected_size)

    def stat(self, key: str) -> ObjectInfo:
        """Size, etag and stored sha256 of ``key``; raises NotFound."""
        return self._stat(validate_key(key))

    def delete(self, key: str) -> None:
        """Delete ``key`` and its digest (idempotent: a missing key is not an error)."""
        self._delete(validate_key(key))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose key starts with ``prefix`` (sidecars and temporaries hidden)."""
        return self._list(validate_prefix(prefix))

    def url(self, key: str) -> str:
        """The object's URL, as recorded in status (``s3://``, ``https://``, ``nfs://``)."""
        return self._url(validate_key(key))

    def abort_incomplete(self, prefix: str = "", older_than: float | None = None) -> int:
        """Remove unfinished uploads below ``prefix`` (older than N seconds); count them."""
        return self._abort_incomplete(validate_prefix(prefix), older_than)

    def close(self) -> None:  # noqa: B027 -- optional hook
        """Release connections."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abc.abstractmethod
    def _open_writer(self, key: str, resume: ResumeState | None) -> Writer: ...

    @abc.abstractmethod
    def _open_reader(
        self, info: ObjectInfo, offset: int, expected_sha256: str | None, size: int | None
    ) -> Reader: ...

    @abc.abstractmethod
    def _stat(self, key: str) -> ObjectInfo: ...

    @abc.abstractmethod
    def _delete(self, key: str) -> None: ...

    @abc.abstractmethod
    def _list(self, prefix: str) -> Iterator[ObjectInfo]: ...

    @abc.abstractmethod
    def _url(self, key: str) -> str: ...

    def _abort_incomplete(self, prefix: str, older_than: float | None) -> int:
        return 0
