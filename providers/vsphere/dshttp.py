"""Datastore files over HTTPS: the ``/folder`` endpoint of vCenter and ESXi.

``https://<endpoint>/folder/<path>?dcPath=<datacenter>&dsName=<datastore>`` serves
the files of a datastore: GET (with ``Range``) reads one, PUT writes one, HEAD tells
its size. The SOAP session's cookie (``vmware_soap_session``) authenticates the
request, so no second login is needed; TLS is checked exactly as for the SOAP API.

Downloads stream into a sparse local file (all-zero blocks are never written) and
survive a dropped connection: the next request asks for ``Range: bytes=<received>-``
and the file continues where it stopped (at most ``RESUME_ATTEMPTS`` times per
file). Uploads stream from a local file with an explicit ``Content-Length``.
Cancellation is checked between chunks. HTTP statuses become typed errors.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from urllib.parse import quote, urlencode

import httpx

from providers.common.sparsefile import SparseWriter
from providers.runtime.tasks import Progress
from providers.vsphere.client import VSphereClient
from providers.vsphere.dspath import DsPath
from virtrigaud import errors
from virtrigaud.logging import get_logger

log = get_logger("virtrigaud.vsphere")

CHUNK = 1024 * 1024
RESUME_ATTEMPTS = 3
ByteProgress = Callable[[int], None]


_STATUS: dict[int, type[errors.VirtrigaudError]] = {
    401: errors.AuthenticationError,
    403: errors.PermissionDenied,
    404: errors.NotFound,
    408: errors.Timeout,
    409: errors.Conflict,
    412: errors.Conflict,
    413: errors.OutOfSpace,
    504: errors.Timeout,
    507: errors.OutOfSpace,
}


def status_error(status: int, what: str) -> errors.VirtrigaudError:
    text = f"{what}: the datastore answered HTTP {status}"
    cls = _STATUS.get(status) or (errors.Unavailable if status >= 500 else errors.InternalError)
    return cls(text)


def _transport_error(exc: httpx.HTTPError, what: str) -> errors.VirtrigaudError:
    if isinstance(exc, httpx.TimeoutException):
        return errors.Timeout(f"{what}: the datastore did not answer in time")
    return errors.Unavailable(f"{what}: {type(exc).__name__} talking to the datastore")


class DatastoreFiles:
    """Reads and writes datastore files of one datacenter over HTTPS."""

    def __init__(self, client: VSphereClient, datacenter_path: str) -> None:
        self._client = client
        self._dc = datacenter_path
        settings = client.settings
        self._http = httpx.Client(
            verify=settings.tls.context(),
            timeout=httpx.Timeout(settings.connect_timeout, read=300.0),
            follow_redirects=False,
        )

    def __enter__(self) -> DatastoreFiles:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def url(self, path: DsPath) -> str:
        query = urlencode({"dcPath": self._dc, "dsName": path.datastore})
        base = self._client.settings.endpoint.base_url
        return f"{base}/folder/{quote(path.path)}?{query}"

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Cookie": self._client.session_cookie()}
        headers.update(extra or {})
        return headers

    @contextlib.contextmanager
    def _send(
        self,
        method: str,
        url: str,
        what: str,
        *,
        headers: dict[str, str] | None = None,
        content: Callable[[], bytes | Iterator[bytes]] | None = None,
    ) -> Iterator[httpx.Response]:
        """One request with the session cookie, its response streamed. A 401 (the
        session expired, e.g. during a long transfer to or from storage) logs in again
        and sends the request once more; transport errors become typed errors."""
        for attempt in (0, 1):
            generation = self._client.generation
            request = self._http.build_request(
                method,
                url,
                headers=self._headers(headers),
                content=content() if content is not None else None,
            )
            try:
                resp = self._http.send(request, stream=True)
            except httpx.HTTPError as exc:
                raise _transport_error(exc, what) from exc
            if resp.status_code == 401 and attempt == 0:
                resp.close()
                self._client.refresh_session(generation)
                continue
            try:
                yield resp
            except httpx.HTTPError as exc:
                raise _transport_error(exc, what) from exc
            finally:
                resp.close()
            return

    def size(self, path: DsPath) -> int | None:
        """The file's size, None if it does not exist."""
        what = f"reading {path}"
        with self._send("HEAD", self.url(path), what) as resp:
            if resp.status_code == 404:
                return None
            if resp.status_code != 200:
                raise status_error(resp.status_code, what)
            return int(resp.headers.get("content-length", "0"))

    def read_small(self, path: DsPath, limit: int) -> bytes:
        """A small file (a descriptor) whole; InvalidArgument when larger than ``limit``."""
        what = f"reading {path}"
        with self._send("GET", self.url(path), what) as resp:
            if resp.status_code != 200:
                raise status_error(resp.status_code, what)
            data = b""
            for chunk in resp.iter_bytes():
                data += chunk
                if len(data) > limit:
                    raise errors.InvalidArgument(f"{path} is not a small text file")
            return data

    def download(
        self,
        path: DsPath,
        dest: str,
        ctx: Progress,
        *,
        on_bytes: ByteProgress | None = None,
        on_allocate: Callable[[int], None] | None = None,
    ) -> int:
        """Stream the file into the new sparse file ``dest``; returns its size."""
        return self.download_url(
            self.url(path),
            dest,
            ctx,
            what=f"reading {path}",
            on_bytes=on_bytes,
            on_allocate=on_allocate,
        )

    def download_url(
        self,
        url: str,
        dest: str,
        ctx: Progress,
        *,
        what: str,
        on_bytes: ByteProgress | None = None,
        on_allocate: Callable[[int], None] | None = None,
    ) -> int:
        """``download`` for any URL of the endpoint's hosts (NFC lease URLs too)."""
        writer = SparseWriter(dest, on_allocate=on_allocate, durable=False)
        try:
            attempts = 0
            total: int | None = None
            while True:
                ctx.check_cancelled()
                headers = self._headers({"Range": f"bytes={writer.size}-"} if writer.size else {})
                try:
                    total = self._receive(
                        url,
                        what,
                        headers=headers,
                        writer=writer,
                        total=total,
                        ctx=ctx,
                        on_bytes=on_bytes,
                    )
                    break
                except (errors.Unavailable, errors.Timeout):
                    attempts += 1
                    if attempts > RESUME_ATTEMPTS:
                        raise
                    log.info(
                        "datastore_download_resume",
                        what=what,
                        offset=writer.size,
                        attempt=attempts,
                    )
            writer.close()
            return writer.size
        except BaseException:
            writer.abort()
            raise

    def _receive(
        self,
        url: str,
        what: str,
        *,
        headers: dict[str, str],
        writer: SparseWriter,
        total: int | None,
        ctx: Progress,
        on_bytes: ByteProgress | None,
    ) -> int:
        offset = writer.size
        with self._send("GET", url, what, headers=headers) as resp:
            expected = 206 if offset else 200
            if resp.status_code != expected:
                if offset and resp.status_code == 200:
                    raise errors.Unavailable(f"{what}: the datastore ignored the resume range")
                raise status_error(resp.status_code, what)
            length = int(resp.headers.get("content-length", "-1"))
            size = offset + length if length >= 0 else total
            if total is not None and size is not None and size != total:
                raise errors.Conflict(f"{what}: the file changed size while it was read")
            for chunk in resp.iter_bytes(CHUNK):
                ctx.check_cancelled()
                writer.write(chunk)
                if on_bytes is not None:
                    on_bytes(writer.size)
        if size is not None and writer.size != size:
            raise errors.Unavailable(f"{what}: the connection ended early")
        return writer.size

    def upload(self, path: DsPath, source: str, ctx: Progress, on_bytes: ByteProgress) -> None:
        """PUT the local file ``source`` as ``path`` (replacing any file of that name)."""
        what = f"writing {path}"
        size = os.path.getsize(source)

        def body() -> Iterator[bytes]:
            sent = 0
            with open(source, "rb") as handle:
                while True:
                    ctx.check_cancelled()
                    chunk = handle.read(CHUNK)
                    if not chunk:
                        return
                    sent += len(chunk)
                    on_bytes(sent)
                    yield chunk

        headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
        with self._send("PUT", self.url(path), what, headers=headers, content=body) as resp:
            if resp.status_code not in (200, 201, 204):
                raise status_error(resp.status_code, what)

    def put_bytes(self, path: DsPath, data: bytes) -> None:
        what = f"writing {path}"
        with self._send("PUT", self.url(path), what, content=lambda: data) as resp:
            if resp.status_code not in (200, 201, 204):
                raise status_error(resp.status_code, what)

    def iter_file(self, path: DsPath, ctx: Progress) -> Iterator[bytes]:
        """The file's bytes in chunks (one request, no resume: used to verify)."""
        what = f"reading {path}"
        with self._send("GET", self.url(path), what) as resp:
            if resp.status_code != 200:
                raise status_error(resp.status_code, what)
            for chunk in resp.iter_bytes(CHUNK):
                ctx.check_cancelled()
                yield chunk
