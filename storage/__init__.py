"""Intermediate storage backends (S3, HTTP, NFS) used by providers to move disk bytes.

Usage::

    from storage import open_backend
    from storage.netguard import AllowList

    with open_backend("s3", {"bucket": "vm-migrations", "endpoint": "minio:9000"},
                      credentials=secret_data, allowed_hosts=AllowList.from_env()) as b:
        with b.open_writer(key) as w:
            for chunk in source:
                w.write(chunk)
            info = w.commit()          # info.sha256 is the transport digest
        for chunk in b.open_reader(key, expected_sha256=info.sha256):
            ...                        # ChecksumMismatch at the end if bytes differ

Locations are given as the VMMigration ``storage`` mapping (``type``, ``bucket``,
``region``, ``endpoint``, ``path``, optional ``prefix``) or as a URL:
``s3://bucket/prefix``, ``http(s)://host/path`` and ``nfs:///abs/path`` (or
``nfs://server/abs/path``, where ``server`` is recorded as the NFS endpoint and the path
is where the share is mounted on the provider host). See ``storage.base`` for the
interface, ``storage.s3_multipart`` for resumable uploads and the digest definition.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from storage.base import (
    Backend,
    BackendOptions,
    ObjectInfo,
    PartRecord,
    Reader,
    ResumeState,
    Writer,
)
from storage.keys import derive_key, validate_key
from storage.netguard import AllowList, as_allow_list
from storage.retry import RetryPolicy
from virtrigaud.errors import InvalidArgument

__all__ = [
    "Backend",
    "BackendOptions",
    "ObjectInfo",
    "PartRecord",
    "Reader",
    "ResumeState",
    "RetryPolicy",
    "StorageLocation",
    "Writer",
    "derive_key",
    "open_backend",
    "parse_location",
    "parse_url",
    "validate_key",
]

BACKEND_TYPES = ("s3", "http", "nfs")


@dataclass(frozen=True)
class StorageLocation:
    """Where objects live, independent of credentials."""

    type: str  # "s3" | "http" | "nfs"
    bucket: str | None = None  # s3
    prefix: str = ""  # s3: key prefix inside the bucket
    region: str | None = None  # s3
    endpoint: str | None = None  # s3 endpoint; nfs server (informational)
    url: str | None = None  # http: base URL
    path: str | None = None  # nfs: mounted directory


def parse_url(url: str) -> StorageLocation:
    """``s3://bucket/prefix``, ``http(s)://host/path`` or ``nfs://[server]/abs/path``."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "s3":
        if not parts.netloc:
            raise InvalidArgument(f"storage URL {url!r} names no bucket")
        return StorageLocation("s3", bucket=parts.netloc, prefix=unquote(parts.path).strip("/"))
    if scheme in ("http", "https"):
        return StorageLocation("http", url=url)
    if scheme == "nfs":
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise InvalidArgument(f"storage URL {url!r} needs an absolute path")
        return StorageLocation("nfs", path=path, endpoint=parts.netloc or None)
    raise InvalidArgument(f"storage URL {url!r}: scheme must be s3, http, https or nfs")


def parse_location(spec: Mapping[str, Any]) -> StorageLocation:
    """The VMMigration ``storage`` mapping (``type`` required)."""
    kind = str(spec.get("type", "")).lower()

    def opt(name: str) -> str | None:
        value = spec.get(name)
        return str(value) if value not in (None, "") else None

    if kind == "s3":
        bucket = opt("bucket")
        if bucket is None:
            raise InvalidArgument("storage.bucket is required for type s3")
        return StorageLocation(
            "s3",
            bucket=bucket,
            prefix=(opt("prefix") or "").strip("/"),
            region=opt("region"),
            endpoint=opt("endpoint"),
        )
    if kind == "http":
        endpoint = opt("endpoint") or opt("url")
        if endpoint is None:
            raise InvalidArgument("storage.endpoint is required for type http")
        return StorageLocation("http", url=endpoint)
    if kind == "nfs":
        path = opt("path")
        if path is None:
            raise InvalidArgument("storage.path is required for type nfs")
        return StorageLocation("nfs", path=path, endpoint=opt("endpoint"))
    raise InvalidArgument(f"storage.type {kind!r} must be one of {', '.join(BACKEND_TYPES)}")


def open_backend(
    backend_type: str | None,
    url_or_config: str | Mapping[str, Any] | StorageLocation,
    credentials: Mapping[str, str] | None = None,
    options: BackendOptions | None = None,
    allowed_hosts: AllowList | Iterable[str] | str | None = None,
) -> Backend:
    """Create the backend for a location.

    ``backend_type`` may be None (taken from the URL or mapping); when given it must
    agree. ``allowed_hosts`` is the SSRF allow list, passed explicitly (for instance
    ``AllowList.from_env()``); None means nothing beyond the defaults is allowed.
    """
    if isinstance(url_or_config, StorageLocation):
        location = url_or_config
    elif isinstance(url_or_config, str):
        location = parse_url(url_or_config)
    else:
        config = dict(url_or_config)
        if backend_type and "type" not in config:
            config["type"] = backend_type
        location = parse_location(config)
    if backend_type and backend_type.lower() != location.type:
        raise InvalidArgument(f"storage type {backend_type!r} does not match {location.type!r}")
    allow = as_allow_list(allowed_hosts)
    if location.type == "s3":
        from storage.s3 import S3Backend

        assert location.bucket is not None
        return S3Backend(
            location.bucket,
            location.prefix,
            region=location.region,
            endpoint=location.endpoint,
            credentials=credentials,
            options=options,
            allowed_hosts=allow,
        )
    if location.type == "http":
        from storage.http import HTTPBackend

        assert location.url is not None
        return HTTPBackend(
            location.url, credentials=credentials, options=options, allowed_hosts=allow
        )
    from storage.nfs import NFSBackend

    assert location.path is not None
    return NFSBackend(
        location.path, endpoint=location.endpoint, credentials=credentials, options=options
    )
