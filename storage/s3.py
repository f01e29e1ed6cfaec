"""S3 backend (boto3): AWS and S3-compatible endpoints (MinIO, SeaweedFS, Ceph RGW).

Configuration comes from the VMMigration ``storage`` spec (``bucket``, ``region``,
``endpoint``) and the credentials Secret (``accessKey``, ``secretKey``, optional
``sessionToken``, ``region``, ``endpoint``). The spec wins; when the spec's endpoint has
no scheme and the Secret's names the same host with one (the user guide's MinIO
example: ``minio.example.com:9000`` and ``http://minio.example.com:9000``), the
Secret's scheme is used; an endpoint without any scheme means ``https``. Custom
endpoints use path-style addressing. No endpoint (or ``s3.amazonaws.com``) means AWS.
Without ``accessKey``/``secretKey`` boto3's default chain is used (IRSA, env vars).

Requests are retried by botocore (``standard`` mode, ``RetryPolicy.attempts`` tries).
Downloads are parallel ranged GETs yielded in order (:class:`S3Reader`); a broken range
resumes at its offset (``storage.retry``). Every botocore error is
translated by :func:`translate_error`, the single translation point; messages never
contain the secret key. The multipart writer is in ``storage.s3_multipart``.
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from typing import Any
from urllib.parse import urlsplit

import boto3
import botocore.auth
import botocore.exceptions as bce
from botocore.config import Config

from storage.base import (
    Backend,
    BackendOptions,
    ObjectInfo,
    PartRecord,
    Reader,
    ResumeState,
    check_sha256,
)
from storage.keys import join_key, validate_prefix
from storage.netguard import AllowList, as_allow_list, check_endpoint
from storage.retry import Attempts
from storage.s3_multipart import MIN_PART_SIZE, S3Writer, ServerPart
from virtrigaud.errors import (
    AuthenticationError,
    Cancelled,
    Conflict,
    InternalError,
    InvalidArgument,
    NotFound,
    OutOfSpace,
    PermanentError,
    PermissionDenied,
    Timeout,
    Unavailable,
    Unsupported,
    VirtrigaudError,
)
from virtrigaud.logging import get_logger

log = get_logger("storage.s3")

AWS_HOSTS = frozenset({"s3.amazonaws.com"})
SHA256_META = "sha256"
SHA256_TAG = "sha256"

# Signature version name under which _KnownPayloadSigV4Auth is registered with botocore.
KNOWN_PAYLOAD_SIGV4 = "s3v4-virtrigaud-known-payload"
_BODY_OPERATIONS = ("PutObject", "UploadPart")

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$")
_REGION = re.compile(r"^[a-z0-9-]{1,32}$")
_AUTH_CODES = frozenset(
    {
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "InvalidToken",
        "ExpiredToken",
        "TokenRefreshRequired",
        "AuthorizationHeaderMalformed",
        "InvalidSecurity",
        "UnrecognizedClientException",
    }
)
_DENIED_CODES = frozenset({"AccessDenied", "403", "AllAccessDisabled", "AccountProblem"})
_SPACE_CODES = frozenset({"QuotaExceeded", "XMinioStorageFull", "InsufficientStorage", "507"})
_INVALID_CODES = frozenset(
    {
        "EntityTooLarge",
        "EntityTooSmall",
        "InvalidArgument",
        "InvalidBucketName",
        "InvalidPart",
        "InvalidPartOrder",
        "InvalidRange",
        "KeyTooLongError",
        "MalformedXML",
        "MetadataTooLarge",
        "InvalidRequest",
    }
)
_BUSY_CODES = frozenset(
    {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "OperationAborted"}
)
_TRANSPORT_ERRORS = (
    bce.EndpointConnectionError,
    bce.ConnectionClosedError,
    bce.ProxyConnectionError,
    bce.ResponseStreamingError,
    bce.IncompleteReadError,
    bce.HTTPClientError,
    ConnectionError,
)


def translate_error(exc: BaseException, *, op: str, target: str, endpoint: str) -> VirtrigaudError:
    """The virtrigaud error for a botocore/urllib3 exception (the one translation point)."""
    if isinstance(exc, VirtrigaudError):
        return exc
    if isinstance(exc, bce.ClientError):
        error = exc.response.get("Error", {})
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return _client_error(
            str(error.get("Code", "")),
            status,
            str(error.get("Message", "")),
            op=op,
            target=target,
            endpoint=endpoint,
        )
    return _transport_error(exc, op=op, target=target, endpoint=endpoint)


def _transport_error(exc: BaseException, *, op: str, target: str, endpoint: str) -> VirtrigaudError:
    if isinstance(exc, bce.NoCredentialsError | bce.PartialCredentialsError):
        return AuthenticationError(f"no usable S3 credentials for {endpoint} ({op})")
    if isinstance(exc, bce.SSLError):
        return AuthenticationError(
            f"TLS verification of S3 endpoint {endpoint} failed ({op}); "
            "set a CA bundle (ca_file) that signs its certificate"
        )
    if isinstance(exc, bce.ConnectTimeoutError | bce.ReadTimeoutError):
        return Timeout(f"S3 endpoint {endpoint} timed out ({op} {target})")
    if isinstance(exc, bce.ParamValidationError):
        return InvalidArgument(f"invalid S3 request ({op} {target}): {exc}")
    if isinstance(exc, _TRANSPORT_ERRORS) or type(exc).__module__.startswith("urllib3"):
        return Unavailable(
            f"S3 endpoint {endpoint} unreachable ({op} {target}): {type(exc).__name__}"
        )
    return InternalError(f"S3 {op} {target} failed: {type(exc).__name__}")


# (error codes, class, message template): the first row whose codes contain the
# response's code wins. Templates never mention credentials' values.
_CODE_TABLE: tuple[tuple[frozenset[str], type[VirtrigaudError], str], ...] = (
    (
        _AUTH_CODES,
        AuthenticationError,
        "S3 endpoint {endpoint} rejected the credentials ({code}) during {op}; "
        "check accessKey/secretKey (and sessionToken)",
    ),
    (frozenset({"NoSuchBucket"}), NotFound, "S3 bucket {bucket!r} does not exist at {endpoint}"),
    (
        frozenset({"NoSuchUpload"}),
        NotFound,
        "multipart upload for {target} no longer exists (aborted or completed)",
    ),
    (frozenset({"NoSuchKey", "404", "NotFound"}), NotFound, "{target} not found ({op})"),
    (_DENIED_CODES, PermissionDenied, "access denied by S3 endpoint {endpoint} ({op} {target})"),
    (
        frozenset({"PreconditionFailed", "412"}),
        Conflict,
        "{target} changed while it was being read ({op})",
    ),
    (_SPACE_CODES, OutOfSpace, "S3 endpoint {endpoint} is out of space ({op} {target}: {code})"),
    (_INVALID_CODES, InvalidArgument, "S3 refused {op} {target} ({code}): {message}"),
    (_BUSY_CODES, Unavailable, "S3 endpoint {endpoint} failed after retries ({op}: {code})"),
)
_STATUS_CODES = {400: "InvalidRequest", 411: "InvalidRequest", 416: "InvalidRange"}
_STATUS_CODES |= {429: "SlowDown", 507: "InsufficientStorage"}


def _client_error(
    code: str, status: int, message: str, *, op: str, target: str, endpoint: str
) -> VirtrigaudError:
    bucket = target.removeprefix("s3://").split("/", 1)[0]
    fallback = _STATUS_CODES.get(status) or ("InternalError" if status >= 500 else "")
    for candidate in (code, fallback):
        for codes, cls, template in _CODE_TABLE:
            if candidate in codes:
                return cls(
                    template.format(
                        code=code or status,
                        op=op,
                        target=target,
                        endpoint=endpoint,
                        bucket=bucket,
                        message=message,
                    )
                )
    return InternalError(f"S3 {op} {target} failed ({code or status}): {message}")


class _KnownPayloadSigV4Auth(botocore.auth.S3SigV4Auth):  # type: ignore[misc]  # untyped
    """S3 SigV4 that signs with a payload SHA256 the caller already computed.

    botocore signs an S3 request body by hashing it (``X-Amz-Content-SHA256``) whenever
    the payload is signed -- always over plain HTTP, and over HTTPS unless a checksum
    header is sent. The multipart writer hashes every part (and a single-PUT object's
    whole body) anyway, and hands that digest over as the body's ``payload_sha256``
    (``s3_multipart._ViewBody``); this signer uses it instead of a second pass over
    the bytes. The request on the wire is exactly what botocore would send: the same
    signed payload hash, so an endpoint that checks it (AWS does) still rejects a
    body altered in transit. Bodies without a known digest, and requests botocore
    would not sign the payload of, take botocore's own path.
    """

    def payload(self, request: Any) -> str:
        known = getattr(request.body, "payload_sha256", None)
        if (
            isinstance(known, str)
            and self._should_sha256_sign_payload(request)
            and not self._is_streaming_checksum_payload(request)
        ):
            return known
        return str(super().payload(request))


botocore.auth.AUTH_TYPE_MAPS.setdefault(KNOWN_PAYLOAD_SIGV4, _KnownPayloadSigV4Auth)


def _choose_known_payload_signer(signature_version: str = "", **_: Any) -> str | None:
    """``choose-signer`` hook: plain S3 SigV4 becomes the known-payload variant."""
    return KNOWN_PAYLOAD_SIGV4 if signature_version == "s3v4" else None


def resolve_endpoint(spec_endpoint: str | None, secret_endpoint: str | None) -> str | None:
    """The endpoint URL to use (``None`` for AWS); see the module docstring."""
    spec = (spec_endpoint or "").strip()
    secret = (secret_endpoint or "").strip()
    chosen = spec or secret
    if not chosen:
        return None
    if spec and secret and "://" not in spec and "://" in secret:
        if urlsplit(secret).netloc.lower() == spec.lower().rstrip("/"):
            chosen = secret
        else:
            raise InvalidArgument(
                f"storage.endpoint {spec!r} and the Secret's endpoint {secret!r} disagree"
            )
    url = chosen if "://" in chosen else f"https://{chosen}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise InvalidArgument(f"S3 endpoint {chosen!r} must be http or https")
    if parts.username or parts.password or parts.query or parts.path.strip("/"):
        raise InvalidArgument(f"S3 endpoint {chosen!r} must be scheme://host[:port] only")
    if not parts.hostname:
        raise InvalidArgument(f"S3 endpoint {chosen!r} has no host")
    if parts.hostname.lower() in AWS_HOSTS and parts.port is None:
        return None
    return f"{parts.scheme}://{parts.netloc}"


def _secret(credentials: Mapping[str, str], name: str) -> str | None:
    value = credentials.get(name)
    return value.strip() if isinstance(value, str) and value.strip() else None


class S3Backend(Backend):
    """A bucket (and optional prefix) on AWS or an S3-compatible endpoint."""

    scheme = "s3"

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        region: str | None = None,
        endpoint: str | None = None,
        credentials: Mapping[str, str] | None = None,
        options: BackendOptions | None = None,
        allowed_hosts: AllowList | list[str] | str | None = None,
    ) -> None:
        creds = dict(credentials or {})
        if not _BUCKET.match(bucket or ""):
            raise InvalidArgument(f"storage.bucket {bucket!r} is not a valid bucket name")
        self.bucket = bucket
        self.prefix = validate_prefix(prefix.strip("/"), field="storage prefix").strip("/")
        self.options = options or BackendOptions()
        self.region = region or _secret(creds, "region") or "us-east-1"
        if not _REGION.match(self.region):
            raise InvalidArgument(f"storage.region {self.region!r} is not a region name")
        self.endpoint_url = resolve_endpoint(endpoint, _secret(creds, "endpoint"))
        if self.endpoint_url is not None:
            parts = urlsplit(self.endpoint_url)
            check_endpoint(parts.hostname or "", parts.port, as_allow_list(allowed_hosts))
        self.endpoint = self.endpoint_url or f"https://s3.{self.region}.amazonaws.com"
        self.client = self._make_client(creds)

    def _make_client(self, creds: Mapping[str, str]) -> Any:
        opts = self.options
        access, secret = _secret(creds, "accessKey"), _secret(creds, "secretKey")
        if bool(access) != bool(secret):
            raise InvalidArgument("S3 credentials need both accessKey and secretKey")
        path_style = opts.force_path_style
        if path_style is None:
            path_style = self.endpoint_url is not None
        config = Config(
            region_name=self.region,
            signature_version="s3v4",
            s3={"addressing_style": "path" if path_style else "auto"},
            retries={"max_attempts": opts.retry.attempts, "mode": "standard"},
            connect_timeout=opts.connect_timeout,
            read_timeout=opts.read_timeout,
            max_pool_connections=max(opts.workers, opts.read_workers) + 4,
            tcp_keepalive=True,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        verify: bool | str = opts.ca_file or True
        if opts.insecure_skip_tls_verify:
            log.warning("s3.tls.verification_disabled", endpoint=self.endpoint)
            verify = False
        session = boto3.session.Session(
            aws_access_key_id=access,
            aws_secret_access_key=secret,
            aws_session_token=_secret(creds, "sessionToken"),
            region_name=self.region,
        )
        client = session.client("s3", endpoint_url=self.endpoint_url, config=config, verify=verify)
        for operation in _BODY_OPERATIONS:
            client.meta.events.register(
                f"choose-signer.s3.{operation}", _choose_known_payload_signer
            )
        return client

    # -- helpers shared with the writer and reader -----------------------------------

    def full_key(self, key: str) -> str:
        return join_key(self.prefix, key)

    def _target(self, full_key: str | None) -> str:
        return f"s3://{self.bucket}/{full_key}" if full_key else f"s3://{self.bucket}"

    @contextmanager
    def errors(self, op: str, full_key: str | None = None) -> Iterator[None]:
        """Translate whatever the block raises (see :func:`translate_error`)."""
        try:
            yield
        except VirtrigaudError:
            raise
        except Exception as exc:
            raise translate_error(
                exc, op=op, target=self._target(full_key), endpoint=self.endpoint
            ) from exc

    def _call(self, op: str, full_key: str | None, **kwargs: Any) -> Any:
        with self.errors(op, full_key):
            return getattr(self.client, op)(Bucket=self.bucket, **kwargs)

    def create_multipart_upload(self, full_key: str) -> str:
        resp = self._call(
            "create_multipart_upload",
            full_key,
            Key=full_key,
            ContentType="application/octet-stream",
        )
        return str(resp["UploadId"])

    def upload_part(self, full_key: str, upload_id: str, number: int, body: Any) -> str:
        resp = self._call(
            "upload_part",
            full_key,
            Key=full_key,
            UploadId=upload_id,
            PartNumber=number,
            Body=body,
            ContentLength=len(body),
        )
        return str(resp["ETag"])

    def put_small(self, full_key: str, body: Any, sha256: str) -> str:
        resp = self._call(
            "put_object",
            full_key,
            Key=full_key,
            Body=body,
            ContentLength=len(body),
            ContentType="application/octet-stream",
            Metadata={SHA256_META: sha256},
        )
        return str(resp.get("ETag", ""))

    def complete_multipart_upload(
        self, full_key: str, upload_id: str, parts: list[PartRecord]
    ) -> str:
        resp = self._call(
            "complete_multipart_upload",
            full_key,
            Key=full_key,
            UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": p.number, "ETag": p.etag} for p in parts]},
        )
        return str(resp.get("ETag", ""))

    def tag_sha256(self, full_key: str, sha256: str) -> None:
        try:
            self._call(
                "put_object_tagging",
                full_key,
                Key=full_key,
                Tagging={"TagSet": [{"Key": SHA256_TAG, "Value": sha256}]},
            )
        except VirtrigaudError as err:  # the object is complete; the caller has the digest
            log.warning("s3.digest.not_stored", key=full_key, error=str(err))

    def abort_multipart_upload(self, full_key: str, upload_id: str) -> None:
        with suppress(NotFound):
            self._call("abort_multipart_upload", full_key, Key=full_key, UploadId=upload_id)

    def list_parts(self, full_key: str, upload_id: str) -> dict[int, list[ServerPart]]:
        parts: dict[int, list[ServerPart]] = {}
        with self.errors("ListParts", full_key):
            pages = self.client.get_paginator("list_parts").paginate(
                Bucket=self.bucket, Key=full_key, UploadId=upload_id
            )
            for page in pages:
                for p in page.get("Parts", []):
                    part = ServerPart(int(p["PartNumber"]), int(p["Size"]), str(p["ETag"]))
                    parts.setdefault(part.number, []).append(part)
        return parts

    # -- Backend ------------------------------------------------------------------------

    def _open_writer(self, key: str, resume: ResumeState | None) -> S3Writer:
        return S3Writer(self, key, resume)

    def _open_reader(
        self, info: ObjectInfo, offset: int, expected_sha256: str | None, size: int | None
    ) -> Reader:
        return S3Reader(self, info, offset, expected_sha256, size)

    def _stat(self, key: str) -> ObjectInfo:
        full = self.full_key(key)
        try:
            head = self._call("head_object", full, Key=full)
        except (NotFound, PermissionDenied) as err:
            raise self._explain_head_error(full, err) from None
        sha = head.get("Metadata", {}).get(SHA256_META)
        if sha is None:
            sha = self._tagged_sha256(full)
        try:
            sha = check_sha256(sha, "stored sha256")
        except InvalidArgument:
            log.warning("s3.digest.malformed", key=full)
            sha = None
        return ObjectInfo(
            key=key,
            size=int(head["ContentLength"]),
            etag=head.get("ETag"),
            sha256=sha,
            last_modified=head.get("LastModified"),
        )

    def _explain_head_error(self, full_key: str, err: VirtrigaudError) -> VirtrigaudError:
        """HEAD responses carry no error code: ask with a 1-byte GET for the real reason."""
        try:
            resp = self._call("get_object", full_key, Key=full_key, Range="bytes=0-0")
            resp["Body"].close()
        except VirtrigaudError as precise:
            return precise
        return err

    def _tagged_sha256(self, full_key: str) -> str | None:
        try:
            tags = self._call("get_object_tagging", full_key, Key=full_key)
        except PermanentError:  # tagging unsupported or not allowed: no stored digest
            return None
        for tag in tags.get("TagSet", []):
            if tag.get("Key") == SHA256_TAG:
                return str(tag.get("Value"))
        return None

    def _delete(self, key: str) -> None:
        full = self.full_key(key)
        self._call("delete_object", full, Key=full)

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        base = f"{self.prefix}/" if self.prefix else ""
        with self.errors("ListObjectsV2", base + prefix):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base + prefix
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    yield ObjectInfo(
                        key=str(obj["Key"])[len(base) :],
                        size=int(obj["Size"]),
                        etag=obj.get("ETag"),
                        last_modified=obj.get("LastModified"),
                    )

    def _url(self, key: str) -> str:
        return self._target(self.full_key(key))

    def incomplete_uploads(self, prefix: str = "") -> Iterator[dict[str, Any]]:
        """Unfinished multipart uploads below ``prefix`` (S3's own records)."""
        full_prefix = join_key(self.prefix, prefix) if prefix else self.prefix
        with self.errors("ListMultipartUploads", full_prefix):
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=full_prefix
            )
            for page in pages:
                yield from page.get("Uploads", [])

    def _abort_incomplete(self, prefix: str, older_than: float | None) -> int:
        count = 0
        now = time.time()
        for upload in list(self.incomplete_uploads(prefix)):
            initiated = upload.get("Initiated")
            too_young = initiated is not None and now - initiated.timestamp() < (older_than or 0)
            if older_than is not None and too_young:
                continue
            self.abort_multipart_upload(str(upload["Key"]), str(upload["UploadId"]))
            count += 1
        if count:
            log.info("s3.abort_incomplete", prefix=prefix, aborted=count)
        return count

    def recover_state(self, key: str) -> ResumeState | None:
        """A ResumeState for ``key`` rebuilt from S3 alone (ListMultipartUploads + ListParts).

        For a writer that crashed before saving its state. The parts carry no SHA256;
        the resumed writer verifies them by their MD5 ETags while replaying.
        """
        full = self.full_key(key)
        uploads = [u for u in self.incomplete_uploads(key) if u.get("Key") == full]
        if not uploads:
            return None
        newest = max(uploads, key=lambda u: u.get("Initiated") or 0)
        upload_id = str(newest["UploadId"])
        server = self.list_parts(full, upload_id)
        parts = tuple(PartRecord(n, v[-1].size, v[-1].etag) for n, v in sorted(server.items()))
        first = parts[0].size if parts and parts[0].size >= MIN_PART_SIZE else None
        return ResumeState(key, upload_id, first or self.options.part_size, parts)

    def close(self) -> None:
        self.client.close()


class _Range:
    """One ranged GET: ``[start, end)`` of the object, filled by a worker thread."""

    __slots__ = ("end", "pieces", "pos", "short", "start")

    def __init__(self, start: int, end: int) -> None:
        self.start = start
        self.end = end
        self.pos = start  # next byte to fetch
        self.pieces: deque[bytes] = deque()
        self.short = False  # the object ended before ``end``


class S3Reader(Reader):
    """Parallel ranged GETs, pinned to the stat'ed ETag, yielded in order.

    The object is cut into consecutive ranges of ``read_range_size`` bytes that
    ``read_workers`` threads fetch with ``Range`` + ``If-Match`` GETs (a replaced object
    is a Conflict). Ranges are handed over whole and in order, so the consumer -- and
    the SHA256 in :class:`Reader` -- sees one in-order stream of ``chunk_size`` pieces.

    Memory: a range is only requested while fewer than ``read_workers + 1`` ranges are
    alive (being fetched, fetched and waiting, or being yielded), so buffered bytes never
    exceed ``(read_workers + 1) x read_range_size`` (40 MiB with the defaults), whatever
    the object size; ``peak_buffer_bytes`` reports the peak actually reached.

    Errors: a broken range resumes at its current offset (``resumes`` counts them) with
    a consecutive-failure budget of ``RetryPolicy.attempts`` per range; the first range
    that cannot be fetched raises its translated error when the consumer reaches it,
    after the ranges before it. Every response's ``Content-Range`` must start where the
    range asked and name the stat'ed size (else Unsupported, InternalError or Conflict:
    a server ignoring ``Range`` would splice wrong bytes in). A response that ends
    early (the object is shorter than stat'ed) ends the stream there and the base class
    reports the truncation. Closing the reader stops and joins the workers.
    """

    def __init__(
        self,
        backend: S3Backend,
        info: ObjectInfo,
        offset: int,
        expected_sha256: str | None,
        expected_size: int | None,
    ) -> None:
        super().__init__(info, offset, expected_sha256, expected_size)
        self._b = backend
        self._full_key = backend.full_key(info.key)
        opts = backend.options
        self._workers = opts.read_workers
        self._range_size = opts.read_range_size
        self._piece_size = min(opts.chunk_size, opts.read_range_size)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._buffered = 0
        self.peak_buffer_bytes = 0
        self.resumes = 0
        self.requests = 0

    @property
    def buffer_limit(self) -> int:
        """The bound on buffered bytes (see the class docstring)."""
        return (self._workers + 1) * self._range_size

    @property
    def buffered_bytes(self) -> int:
        """Bytes fetched and not yet yielded."""
        return self._buffered

    def _chunks(self, offset: int) -> Iterator[bytes]:
        # One byte past the expected size is enough to report a longer object.
        end = min(self.info.size, self.expected_size + 1)
        if offset >= end:
            return
        starts = iter(range(offset, end, self._range_size))
        count = -(-(end - offset) // self._range_size)
        pool = ThreadPoolExecutor(min(self._workers, count), thread_name_prefix="s3-get")
        pending: deque[Future[_Range]] = deque()

        def request_next() -> None:
            start = next(starts, None)
            if start is not None:
                pending.append(
                    pool.submit(self._fetch, _Range(start, min(start + self._range_size, end)))
                )

        try:
            for _ in range(self._workers + 1):
                request_next()
            while pending:
                part = pending[0].result()
                pending.popleft()
                while part.pieces:
                    piece = part.pieces.popleft()
                    self._account(-len(piece))
                    yield piece
                if part.short:
                    return  # the object ended early: Reader reports the truncation
                request_next()
        finally:
            self._stop.set()
            for future in pending:
                future.cancel()
            pool.shutdown(wait=True)
            with self._lock:
                self._buffered = 0  # ranges not yielded are dropped with the futures

    def _fetch(self, part: _Range) -> _Range:
        """Fetch one range (worker thread), resuming it at its offset after errors."""
        attempts = Attempts(self._b.options.retry, sleep=self._pause)
        try:
            while part.pos < part.end and not part.short:
                try:
                    self._fetch_into(part, attempts)
                except (Unavailable, Timeout) as err:
                    if self._stop.is_set():
                        raise Cancelled("download stopped") from None
                    attempts.failed(err)
                    with self._lock:
                        self.resumes += 1
                    log.warning("s3.read.resume", key=self.key, offset=part.pos, error=str(err))
        except BaseException:
            self._account(-sum(len(piece) for piece in part.pieces))
            part.pieces.clear()
            raise
        return part

    def _fetch_into(self, part: _Range, attempts: Attempts) -> None:
        body = self._open_range(part.pos, part.end)
        try:
            while part.pos < part.end:
                if self._stop.is_set():
                    raise Cancelled("download stopped")
                with self._b.errors("GetObject", self._full_key):
                    piece = body.read(min(self._piece_size, part.end - part.pos))
                if not piece:
                    part.short = True
                    return
                self._account(len(piece))
                part.pieces.append(piece)
                part.pos += len(piece)
                attempts.progress()
        finally:
            body.close()

    def _open_range(self, pos: int, end: int) -> Any:
        kwargs: dict[str, Any] = {"Key": self._full_key, "Range": f"bytes={pos}-{end - 1}"}
        if self.info.etag:
            kwargs["IfMatch"] = self.info.etag
        with self._lock:
            self.requests += 1
        resp = self._b._call("get_object", self._full_key, **kwargs)
        body = resp["Body"]
        served = _CONTENT_RANGE.match(str(resp.get("ContentRange") or ""))
        target = self._b._target(self._full_key)
        if served is None and pos != 0:
            body.close()
            raise Unsupported(f"S3 endpoint {self._b.endpoint} ignored a Range request ({target})")
        if served is not None:
            first, total = int(served[1]), served[3]
            if first != pos:
                body.close()
                raise InternalError(f"S3 served {target} from byte {first}, asked for {pos}")
            if total != "*" and int(total) != self.info.size:
                body.close()
                raise Conflict(f"{target} changed while it was being read (GetObject)")
        return body

    def _account(self, delta: int) -> None:
        with self._lock:
            self._buffered += delta
            self.peak_buffer_bytes = max(self.peak_buffer_bytes, self._buffered)

    def _pause(self, delay: float) -> None:
        if self._stop.wait(delay):
            raise Cancelled("download stopped")
