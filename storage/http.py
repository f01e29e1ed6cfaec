"""HTTP backend (httpx): any server that takes PUT/GET/HEAD/DELETE, e.g. nginx WebDAV.

Objects live below a base URL (the spec's ``endpoint``); every key segment is
percent-quoted, so a key can never climb out of the base path.

Authentication (credentials Secret): ``token``, sent as ``Authorization: Bearer <t>``.
The API reference's example value is ``Bearer_your-api-token-here``, so a leading
``Bearer `` or ``Bearer_`` (any case) is treated as a scheme marker and removed: the
values ``abc``, ``Bearer abc`` and ``Bearer_abc`` all send ``Bearer abc``. Or
``username``/``password`` for basic auth. Both at once is refused as ambiguous.

TLS is verified by default (system CAs); a CA bundle comes from ``BackendOptions.ca_file``
or the Secret's ``ca.crt``/``caBundle`` (PEM). Verification is only off when
``insecure_skip_tls_verify`` is set, and then a warning is logged. Redirects are not
followed (an SSRF guard must not be bypassed by a 30x).

Writes are one streaming PUT (chunked transfer encoding) fed through a small bounded
queue by ``write()``; a broken PUT cannot be replayed, so it surfaces as Unavailable and
the export restarts the object (nginx only renames its temporary body file into place
once the request completed, so a partial object is never visible). The transport digest
is stored in a ``<key>.sha256`` sidecar in ``sha256sum`` format after the PUT succeeded
(and removed before a new PUT starts, so a stale digest never describes new bytes).
Reads are GET with ``Range`` from the current offset after a broken connection, pinned
with ``If-Match`` to the ETag seen by ``stat``. Listing uses WebDAV PROPFIND (Depth 1).
"""

from __future__ import annotations

import queue
import re
import ssl
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from contextlib import suppress
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import httpx

from storage.base import Backend, BackendOptions, ObjectInfo, Reader, ResumeState, Writer
from storage.base import check_sha256 as _check_sha256
from storage.keys import SIDECAR_SUFFIX, TEMP_MARKER
from storage.netguard import AllowList, as_allow_list, check_endpoint
from storage.retry import Attempts, retry_call
from virtrigaud.errors import (
    AuthenticationError,
    Conflict,
    FailedPrecondition,
    InternalError,
    InvalidArgument,
    NotFound,
    OutOfSpace,
    PermissionDenied,
    Timeout,
    Unavailable,
    Unsupported,
    VirtrigaudError,
)
from virtrigaud.logging import get_logger

log = get_logger("storage.http")

_BEARER_MARKER = re.compile(r"^bearer(?:[ _]+|$)", re.IGNORECASE)
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_DAV = "{DAV:}"


class _StatusError(Exception):
    """An HTTP response that is an error (carried to :func:`translate_error`)."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(response.status_code)
        self.response = response


class _Aborted(Exception):
    """Raised inside the PUT body generator to cut an aborted upload (never surfaced)."""


def translate_error(exc: BaseException, *, op: str, url: str) -> VirtrigaudError:
    """The virtrigaud error for an httpx exception or error response (one place)."""
    if isinstance(exc, VirtrigaudError):
        return exc
    if isinstance(exc, _StatusError):
        return _status_error(exc.response.status_code, op, url)
    if isinstance(exc, httpx.TimeoutException):
        return Timeout(f"HTTP storage timed out ({op} {url})")
    if isinstance(exc, httpx.ConnectError) and _is_tls_verify_failure(exc):
        return AuthenticationError(
            f"TLS verification of {url} failed ({op}); set a CA bundle that signs its certificate"
        )
    if isinstance(exc, httpx.TransportError):
        return Unavailable(f"HTTP storage unreachable ({op} {url}): {type(exc).__name__}")
    return InternalError(f"HTTP {op} {url} failed: {type(exc).__name__}")


def _is_tls_verify_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        if "CERTIFICATE_VERIFY_FAILED" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


_STATUS_ERRORS: dict[int, tuple[type[VirtrigaudError], str]] = {
    401: (AuthenticationError, "HTTP storage rejected the credentials"),
    403: (PermissionDenied, "HTTP storage denied access"),
    404: (NotFound, "object not found"),
    405: (Unsupported, "HTTP storage does not allow this method"),
    409: (FailedPrecondition, "HTTP storage refused the request (conflict)"),
    410: (NotFound, "object gone"),
    412: (Conflict, "object changed while it was being read"),
    413: (OutOfSpace, "HTTP storage has no room for the object"),
    416: (InvalidArgument, "range not satisfiable"),
    507: (OutOfSpace, "HTTP storage has no room for the object"),
}


def _status_error(status: int, op: str, url: str) -> VirtrigaudError:
    cls, text = _STATUS_ERRORS.get(status, (InternalError, "unexpected HTTP response"))
    if status not in _STATUS_ERRORS:
        if 300 <= status < 400:
            cls, text = InvalidArgument, "HTTP storage redirected; redirects are not followed"
        elif status in RETRY_STATUSES or status >= 500:
            cls, text = Unavailable, "HTTP storage failed after retries"
    return cls(f"{text} ({op} {url}: HTTP {status})")


def bearer_token(value: str) -> str:
    """The token to send after ``Bearer `` (see the module docstring)."""
    token = _BEARER_MARKER.sub("", value.strip(), count=1).strip()
    if not token or not token.isprintable() or " " in token:
        raise InvalidArgument("credentials token is empty or contains spaces/control characters")
    return token


def _tls_verify(options: BackendOptions, credentials: Mapping[str, str]) -> ssl.SSLContext | bool:
    if options.insecure_skip_tls_verify:
        log.warning("http.tls.verification_disabled")
        return False
    ca_data = credentials.get("ca.crt") or credentials.get("caBundle")
    if options.ca_file or ca_data:
        try:
            return ssl.create_default_context(cafile=options.ca_file, cadata=ca_data or None)
        except (OSError, ssl.SSLError) as exc:
            raise InvalidArgument(f"cannot load the CA bundle: {exc}") from None
    return True


class HTTPBackend(Backend):
    """Objects below an HTTP(S) base URL."""

    scheme = "https"

    def __init__(
        self,
        base_url: str,
        *,
        credentials: Mapping[str, str] | None = None,
        options: BackendOptions | None = None,
        allowed_hosts: AllowList | list[str] | str | None = None,
    ) -> None:
        creds = {k: v for k, v in (credentials or {}).items() if isinstance(v, str) and v}
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidArgument(f"HTTP storage endpoint {base_url!r} must be http(s)://host/...")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise InvalidArgument(
                "HTTP storage endpoint must not carry credentials, a query or a fragment"
            )
        self.options = options or BackendOptions()
        check_endpoint(parts.hostname, parts.port, as_allow_list(allowed_hosts))
        path = parts.path.rstrip("/") + "/"
        self.base_url = f"{parts.scheme}://{parts.netloc}{path}"
        self._base_path = unquote(path)
        headers: dict[str, str] = {"Accept-Encoding": "identity"}
        auth: httpx.Auth | None = None
        if "token" in creds and ("username" in creds or "password" in creds):
            raise InvalidArgument("HTTP credentials: set either token or username/password")
        if "token" in creds:
            headers["Authorization"] = f"Bearer {bearer_token(creds['token'])}"
        elif "username" in creds or "password" in creds:
            if "username" not in creds or "password" not in creds:
                raise InvalidArgument("HTTP credentials need both username and password")
            auth = httpx.BasicAuth(creds["username"], creds["password"])
        opts = self.options
        self.client = httpx.Client(
            auth=auth,
            headers=headers,
            verify=_tls_verify(opts, creds),
            timeout=httpx.Timeout(opts.read_timeout, connect=opts.connect_timeout),
            follow_redirects=False,
            trust_env=opts.trust_env,
        )

    # -- helpers ------------------------------------------------------------------------

    def object_url(self, key: str) -> str:
        return self.base_url + "/".join(quote(segment, safe="") for segment in key.split("/"))

    def _translate(self, op: str, url: str) -> Any:
        return lambda exc: translate_error(exc, op=op, url=url)

    def request(
        self, op: str, method: str, url: str, *, ok: tuple[int, ...], **kwargs: Any
    ) -> httpx.Response:
        """A retried, idempotent request; statuses outside ``ok`` raise translated errors."""

        def once() -> httpx.Response:
            response = self.client.request(method, url, **kwargs)
            if response.status_code not in ok:
                raise _StatusError(response)
            return response

        return retry_call(once, policy=self.options.retry, translate=self._translate(op, url))

    def open_stream(self, url: str, pos: int, etag: str | None) -> httpx.Response:
        headers = {"Range": f"bytes={pos}-"} if pos else {}
        if etag:
            headers["If-Match"] = etag
        try:
            response = self.client.send(
                self.client.build_request("GET", url, headers=headers), stream=True
            )
        except Exception as exc:
            raise translate_error(exc, op="GET", url=url) from exc
        if response.status_code in (200, 206):
            return response
        response.close()
        raise translate_error(_StatusError(response), op="GET", url=url)

    def put_sidecar(self, key: str, sha256: str) -> None:
        name = key.rsplit("/", 1)[-1]
        self.request(
            "PUT",
            "PUT",
            self.object_url(key) + SIDECAR_SUFFIX,
            ok=(200, 201, 204),
            content=f"{sha256}  {name}\n".encode(),
        )

    def delete_sidecar(self, key: str) -> None:
        self.request("DELETE", "DELETE", self.object_url(key) + SIDECAR_SUFFIX, ok=(200, 204, 404))

    def _read_sidecar(self, key: str) -> str | None:
        response = self.request("GET", "GET", self.object_url(key) + SIDECAR_SUFFIX, ok=(200, 404))
        if response.status_code == 404:
            return None
        token = response.text.split(maxsplit=1)[0] if response.text.strip() else ""
        try:
            return _check_sha256(token, "sidecar sha256")
        except InvalidArgument:
            log.warning("http.digest.malformed", key=key)
            return None

    # -- Backend ------------------------------------------------------------------------

    def _open_writer(self, key: str, resume: ResumeState | None) -> Writer:
        if resume is not None:
            raise Unsupported("HTTP uploads cannot be resumed; start the object over")
        url = self.object_url(key)
        # Fail fast on credentials and reachability before any body byte is produced.
        self.request("HEAD", "HEAD", url, ok=(200, 404))
        return HTTPWriter(self, key, url)

    def _open_reader(
        self, info: ObjectInfo, offset: int, expected_sha256: str | None, size: int | None
    ) -> Reader:
        return HTTPReader(self, info, offset, expected_sha256, size)

    def _stat(self, key: str) -> ObjectInfo:
        url = self.object_url(key)
        head = self.request("HEAD", "HEAD", url, ok=(200,))
        length = head.headers.get("content-length")
        if length is None or not length.isdigit():
            raise InternalError(f"HTTP storage sent no Content-Length for {url}")
        modified = head.headers.get("last-modified")
        return ObjectInfo(
            key=key,
            size=int(length),
            etag=head.headers.get("etag"),
            sha256=self._read_sidecar(key),
            last_modified=parsedate_to_datetime(modified) if modified else None,
        )

    def _delete(self, key: str) -> None:
        url = self.object_url(key)
        self.request("DELETE", "DELETE", url, ok=(200, 204, 404))
        self.delete_sidecar(key)

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        directory = prefix.rsplit("/", 1)[0] + "/" if "/" in prefix else ""
        yield from self._walk(directory, prefix)

    def _walk(self, directory: str, prefix: str) -> Iterator[ObjectInfo]:
        url = self.base_url + "/".join(quote(s, safe="") for s in directory.split("/"))
        response = self.request("PROPFIND", "PROPFIND", url, ok=(207, 404), headers={"Depth": "1"})
        if response.status_code == 404:
            return
        # The multistatus body comes from the configured storage server; expat in the
        # supported Pythons limits entity expansion.
        root = ET.fromstring(response.content)  # noqa: S314
        for entry in root.iter(f"{_DAV}response"):
            href = entry.findtext(f"{_DAV}href") or ""
            rel = unquote(urlsplit(href).path)
            if not rel.startswith(self._base_path):
                continue
            rel = rel[len(self._base_path) :]
            if rel in ("", directory):
                continue
            if entry.find(f".//{_DAV}collection") is not None:
                sub = rel.rstrip("/") + "/"
                below = sub.startswith(directory) and len(sub) > len(directory)  # no cycles
                if below and (sub.startswith(prefix) or prefix.startswith(sub)):
                    yield from self._walk(sub, prefix)
                continue
            name = rel.rsplit("/", 1)[-1]
            if not rel.startswith(prefix) or name.endswith(SIDECAR_SUFFIX) or TEMP_MARKER in name:
                continue
            length = entry.findtext(f".//{_DAV}getcontentlength") or "0"
            yield ObjectInfo(key=rel, size=int(length) if length.isdigit() else 0)

    def _url(self, key: str) -> str:
        return self.object_url(key)

    def close(self) -> None:
        self.client.close()


_END = object()
_ABORT = object()


class HTTPWriter(Writer):
    """One streaming PUT, fed by write() through a bounded queue (see module docstring)."""

    def __init__(self, backend: HTTPBackend, key: str, url: str) -> None:
        super().__init__(key)
        self._b = backend
        self._url = url
        self._queue: queue.Queue[object] = queue.Queue(maxsize=backend.options.queue_chunks)
        self._thread: threading.Thread | None = None
        self._finished = threading.Event()
        self._response: httpx.Response | None = None
        self._exc: BaseException | None = None

    def _start(self) -> None:
        self._b.delete_sidecar(self.key)
        self._thread = threading.Thread(target=self._run, name="http-put", daemon=True)
        self._thread.start()

    def _body(self) -> Iterator[bytes]:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if item is _ABORT:
                raise _Aborted
            assert isinstance(item, bytes)
            yield item

    def _run(self) -> None:
        try:
            self._response = self._b.client.put(
                self._url,
                content=self._body(),
                headers={"Content-Type": "application/octet-stream"},
            )
        except BaseException as exc:  # handed to the writing thread
            self._exc = exc
        finally:
            self._finished.set()

    def _failure(self) -> VirtrigaudError:
        if self._exc is not None:
            return translate_error(self._exc, op="PUT", url=self._url)
        if self._response is not None and self._response.status_code >= 300:
            return translate_error(_StatusError(self._response), op="PUT", url=self._url)
        return InternalError(f"HTTP storage ended the upload of {self._url} early")

    def _put(self, item: object) -> None:
        while True:
            if self._finished.is_set():
                raise self._failure()
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _write(self, data: bytes | memoryview) -> None:
        if self._thread is None:
            self._start()
        # Copy views: the caller may reuse its buffer once write() returns.
        self._put(data if isinstance(data, bytes) else bytes(data))

    def _commit(self, sha256: str, size: int) -> ObjectInfo:
        if self._thread is None:
            self._start()
        assert self._thread is not None
        self._put(_END)
        self._thread.join()
        response = self._response
        if self._exc is not None or response is None or response.status_code not in (200, 201, 204):
            raise self._failure()
        self._b.put_sidecar(self.key, sha256)
        return ObjectInfo(self.key, size, response.headers.get("etag"), sha256)

    def _abort(self) -> None:
        if self._thread is None:
            return
        while not self._finished.is_set():
            try:
                self._queue.put_nowait(_ABORT)
                break
            except queue.Full:
                with suppress(queue.Empty):
                    self._queue.get_nowait()
        self._thread.join()


class HTTPReader(Reader):
    """GET streaming; a broken transfer resumes with ``Range`` at the current offset."""

    def __init__(
        self,
        backend: HTTPBackend,
        info: ObjectInfo,
        offset: int,
        expected_sha256: str | None,
        expected_size: int | None,
    ) -> None:
        super().__init__(info, offset, expected_sha256, expected_size)
        self._b = backend
        self._url = backend.object_url(info.key)
        self.resumes = 0

    def _chunks(self, offset: int) -> Iterator[bytes]:
        pos = offset
        attempts = Attempts(self._b.options.retry)
        while pos < self.info.size:
            response = None
            try:
                response = self._b.open_stream(self._url, pos, self.info.etag)
                skip = pos if response.status_code == 200 else 0  # server ignored Range
                if response.status_code == 206:
                    self._check_range(response, pos)
                stream = response.iter_raw(self._b.options.chunk_size)
                while True:
                    try:
                        chunk = next(stream, b"")
                    except Exception as exc:
                        raise translate_error(exc, op="GET", url=self._url) from exc
                    if not chunk:
                        return
                    if skip:
                        dropped = min(skip, len(chunk))
                        chunk, skip = chunk[dropped:], skip - dropped
                        if not chunk:
                            continue
                    pos += len(chunk)
                    attempts.progress()
                    yield chunk
            except (Unavailable, Timeout) as err:
                attempts.failed(err)
                self.resumes += 1
                log.warning("http.read.resume", key=self.key, offset=pos, error=str(err))
            finally:
                if response is not None:
                    response.close()

    def _check_range(self, response: httpx.Response, pos: int) -> None:
        content_range = response.headers.get("content-range", "")
        if not content_range.startswith(f"bytes {pos}-"):
            raise InternalError(f"HTTP storage answered range {content_range!r} for offset {pos}")
