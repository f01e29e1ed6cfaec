"""NFS backend: a directory where the share is mounted (the spec's ``path``).

The provider's mount step is not done here; ``mount_options`` (the Secret's
``mountOptions``, e.g. ``vers=4,rw,sync``) and ``endpoint`` (the NFS server) are kept on
the backend for it. The backend only needs the mounted directory.

Writes go to a temporary file in the key's directory (``.<name>.<random>.vtpart``), are
fsynced, renamed atomically onto the key, and the directory is fsynced, so a reader sees
either the old object or the complete new one, also after a crash. The transport digest
goes to a ``<key>.sha256`` sidecar (``sha256sum`` format; removed before the rename,
written after it, so a stale digest never describes new bytes).

Confinement: keys are validated (``storage.keys``), the resolved path must be inside the
root (symlinks followed for that check), and every path component is then opened
relative to the root's directory descriptor with ``O_NOFOLLOW``, so a symlink swapped in
after the check cannot redirect I/O either. OSError is translated in
:func:`translate_error` only.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat as stat_mod
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from storage.base import Backend, BackendOptions, ObjectInfo, Reader, ResumeState, Writer
from storage.base import check_sha256 as _check_sha256
from storage.keys import SIDECAR_SUFFIX, TEMP_MARKER, resolve_inside
from virtrigaud.errors import (
    Conflict,
    InternalError,
    InvalidArgument,
    NotFound,
    OutOfSpace,
    PermissionDenied,
    Unavailable,
    Unsupported,
    VirtrigaudError,
)
from virtrigaud.logging import get_logger

log = get_logger("storage.nfs")

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_DENIED = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
_ESCAPE = frozenset({errno.ELOOP, errno.ENOTDIR, errno.ENAMETOOLONG})
_DOWN = frozenset(
    {
        errno.ESTALE,
        errno.EIO,
        errno.ETIMEDOUT,
        errno.EHOSTDOWN,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ECONNREFUSED,
        errno.EAGAIN,
    }
)


_ERRNO_TABLE: tuple[tuple[frozenset[int], type[VirtrigaudError], str], ...] = (
    (_SPACE, OutOfSpace, "NFS storage is full ({op} {path}: {reason})"),
    (_DENIED, PermissionDenied, "NFS storage denied {op} {path}: {reason}"),
    (frozenset({errno.ENOENT}), NotFound, "{path} not found ({op})"),
    (_ESCAPE, InvalidArgument, "{op} {path}: a path component is a symlink or not a directory"),
    (frozenset({errno.EEXIST}), Conflict, "{op} {path}: already exists"),
    (_DOWN, Unavailable, "NFS storage unavailable ({op} {path}: {reason})"),
)


def translate_error(exc: OSError, *, op: str, path: str) -> VirtrigaudError:
    """The virtrigaud error for an OSError on the NFS directory (the one place)."""
    reason = os.strerror(exc.errno) if exc.errno else type(exc).__name__
    for codes, cls, template in _ERRNO_TABLE:
        if exc.errno in codes:
            return cls(template.format(op=op, path=path, reason=reason))
    return InternalError(f"NFS {op} {path} failed: {reason}")


def _unlink_quiet(name: str, dir_fd: int) -> None:
    with suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)


class NFSBackend(Backend):
    """Objects as files below a mounted directory."""

    scheme = "nfs"

    def __init__(
        self,
        path: str,
        *,
        endpoint: str | None = None,
        credentials: Mapping[str, str] | None = None,
        options: BackendOptions | None = None,
    ) -> None:
        if not path or not os.path.isabs(path):
            raise InvalidArgument(f"storage.path {path!r} must be an absolute path")
        self.root = os.path.normpath(path)
        self.endpoint = endpoint or None
        self.mount_options = (credentials or {}).get("mountOptions") or None
        self.options = options or BackendOptions()
        try:
            info = os.stat(self.root)
        except FileNotFoundError:
            raise NotFound(
                f"NFS storage path {self.root} does not exist (is the share mounted?)"
            ) from None
        except OSError as exc:
            raise translate_error(exc, op="stat", path=self.root) from exc
        if not stat_mod.S_ISDIR(info.st_mode):
            raise InvalidArgument(f"NFS storage path {self.root} is not a directory")

    @contextmanager
    def errors(self, op: str, key: str) -> Iterator[None]:
        try:
            yield
        except VirtrigaudError:
            raise
        except OSError as exc:
            raise translate_error(exc, op=op, path=self._url(key)) from exc

    @contextmanager
    def parent(self, key: str, *, create: bool) -> Iterator[tuple[int, str]]:
        """(directory fd, file name) of ``key``, walked with O_NOFOLLOW from the root."""
        resolve_inside(Path(self.root), key)
        *dirs, name = key.split("/")
        with self.errors("open directory of", key):
            fd = os.open(self.root, _DIR_FLAGS)
            try:
                for segment in dirs:
                    fd = self._descend(fd, segment, create)
            except BaseException:
                os.close(fd)
                raise
        try:
            yield fd, name
        finally:
            os.close(fd)

    @staticmethod
    def _descend(fd: int, segment: str, create: bool) -> int:
        try:
            child = os.open(segment, _DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                raise
            with suppress(FileExistsError):
                os.mkdir(segment, 0o755, dir_fd=fd)
            child = os.open(segment, _DIR_FLAGS, dir_fd=fd)
        os.close(fd)
        return child

    # -- Backend ------------------------------------------------------------------------

    def _open_writer(self, key: str, resume: ResumeState | None) -> Writer:
        if resume is not None:
            raise Unsupported("NFS uploads cannot be resumed; start the object over")
        return NFSWriter(self, key)

    def _open_reader(
        self, info: ObjectInfo, offset: int, expected_sha256: str | None, size: int | None
    ) -> Reader:
        return NFSReader(self, info, offset, expected_sha256, size)

    def _stat(self, key: str) -> ObjectInfo:
        with self.parent(key, create=False) as (dfd, name), self.errors("stat", key):
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            if not stat_mod.S_ISREG(st.st_mode):
                raise InvalidArgument(f"{self._url(key)} is not a regular file")
            sha = self._read_sidecar(dfd, name, key)
        return ObjectInfo(
            key=key,
            size=st.st_size,
            etag=f"{st.st_mtime_ns:x}-{st.st_size:x}",
            sha256=sha,
            last_modified=datetime.fromtimestamp(st.st_mtime, UTC),
        )

    def _read_sidecar(self, dfd: int, name: str, key: str) -> str | None:
        try:
            fd = os.open(
                name + SIDECAR_SUFFIX, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd
            )
        except FileNotFoundError:
            return None
        try:
            text = os.read(fd, 4096).decode("utf-8", "replace")
        finally:
            os.close(fd)
        token = text.split(maxsplit=1)[0] if text.strip() else ""
        try:
            return _check_sha256(token, "sidecar sha256")
        except InvalidArgument:
            log.warning("nfs.digest.malformed", key=key)
            return None

    def _delete(self, key: str) -> None:
        try:
            with self.parent(key, create=False) as (dfd, name), self.errors("delete", key):
                _unlink_quiet(name, dfd)
                _unlink_quiet(name + SIDECAR_SUFFIX, dfd)
        except NotFound:
            pass  # the directory is gone already: nothing to delete

    def _walk(self, prefix: str) -> Iterator[tuple[str, str, int]]:
        """(relative key, name, dir fd) of every file whose key starts with ``prefix``.

        Walks from the root without following symlinks and only descends into
        directories that can hold matching keys.
        """
        for dirpath, dirs, files, dfd in os.fwalk(self.root, follow_symlinks=False):
            rel_dir = os.path.relpath(dirpath, self.root)
            base = "" if rel_dir == "." else f"{rel_dir}/"
            dirs[:] = sorted(
                d
                for d in dirs
                if f"{base}{d}/".startswith(prefix) or prefix.startswith(f"{base}{d}/")
            )
            for name in sorted(files):
                if f"{base}{name}".startswith(prefix):
                    yield f"{base}{name}", name, dfd

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        with self.errors("list", prefix or "."):
            for rel, name, dfd in self._walk(prefix):
                if name.endswith(SIDECAR_SUFFIX) or TEMP_MARKER in name:
                    continue
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                if stat_mod.S_ISREG(st.st_mode):
                    yield ObjectInfo(
                        key=rel,
                        size=st.st_size,
                        last_modified=datetime.fromtimestamp(st.st_mtime, UTC),
                    )

    def _abort_incomplete(self, prefix: str, older_than: float | None) -> int:
        count = 0
        now = time.time()
        with self.errors("clean up", prefix or "."):
            for _rel, name, dfd in self._walk(prefix):
                if TEMP_MARKER not in name:
                    continue
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                if older_than is not None and now - st.st_mtime < older_than:
                    continue
                _unlink_quiet(name, dfd)
                count += 1
        return count

    def _url(self, key: str) -> str:
        path = quote(f"{self.root.rstrip('/')}/{key}", safe="/")
        return f"nfs://{self.endpoint or ''}{path}"


class NFSWriter(Writer):
    """Temporary file, fsync, atomic rename, directory fsync."""

    def __init__(self, backend: NFSBackend, key: str) -> None:
        super().__init__(key)
        self._b = backend
        self._parent = backend.parent(key, create=True)
        self._dfd, self._name = self._parent.__enter__()
        self._tmp = f".{self._name}.{secrets.token_hex(8)}{TEMP_MARKER}"
        try:
            with backend.errors("create", key):
                self._fd: int | None = os.open(
                    self._tmp,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o644,
                    dir_fd=self._dfd,
                )
        except BaseException:
            self._parent.__exit__(None, None, None)
            raise

    def _write(self, data: bytes | memoryview) -> None:
        assert self._fd is not None
        view = memoryview(data)
        with self._b.errors("write", self.key):
            while view:
                view = view[os.write(self._fd, view) :]

    def _commit(self, sha256: str, size: int) -> ObjectInfo:
        assert self._fd is not None
        with self._b.errors("commit", self.key):
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
            _unlink_quiet(self._name + SIDECAR_SUFFIX, self._dfd)
            os.rename(self._tmp, self._name, src_dir_fd=self._dfd, dst_dir_fd=self._dfd)
            self._write_sidecar(sha256)
            os.fsync(self._dfd)
            st = os.stat(self._name, dir_fd=self._dfd, follow_symlinks=False)
        self._parent.__exit__(None, None, None)
        return ObjectInfo(self.key, size, f"{st.st_mtime_ns:x}-{st.st_size:x}", sha256)

    def _write_sidecar(self, sha256: str) -> None:
        tmp = f".{self._name}.{secrets.token_hex(8)}{TEMP_MARKER}"
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o644,
            dir_fd=self._dfd,
        )
        try:
            os.write(fd, f"{sha256}  {self._name}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, self._name + SIDECAR_SUFFIX, src_dir_fd=self._dfd, dst_dir_fd=self._dfd)

    def _abort(self) -> None:
        try:
            with self._b.errors("abort", self.key):
                if self._fd is not None:
                    os.close(self._fd)
                    self._fd = None
                _unlink_quiet(self._tmp, self._dfd)
        finally:
            self._parent.__exit__(None, None, None)


class NFSReader(Reader):
    """pread() from the offset; the file is opened with O_NOFOLLOW below the root."""

    def __init__(
        self,
        backend: NFSBackend,
        info: ObjectInfo,
        offset: int,
        expected_sha256: str | None,
        expected_size: int | None,
    ) -> None:
        super().__init__(info, offset, expected_sha256, expected_size)
        self._b = backend
        with (
            backend.parent(info.key, create=False) as (dfd, name),
            backend.errors("open", info.key),
        ):
            self._fd: int | None = os.open(
                name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd
            )

    def _chunks(self, offset: int) -> Iterator[bytes]:
        pos = offset
        size = self._b.options.chunk_size
        while self._fd is not None:
            with self._b.errors("read", self.key):
                chunk = os.pread(self._fd, size, pos)
            if not chunk:
                return
            pos += len(chunk)
            yield chunk

    def _release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
