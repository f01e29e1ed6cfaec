"""Backends bound to the session servers (SeaweedFS, nginx WebDAV: see tests/conftest.py).

Every test gets its own bucket (S3), its own base path (HTTP) or directory (NFS), so
tests never see each other's objects while sharing one server process per session.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from storage import BackendOptions, RetryPolicy
from storage.base import Backend
from storage.http import HTTPBackend
from storage.netguard import AllowList
from storage.nfs import NFSBackend
from storage.s3 import S3Backend
from tests.servers.nginx import NginxDav
from tests.servers.seaweedfs import SeaweedFS
from tests.storage.streams import MiB

# Tests talk to loopback servers, which the SSRF guard refuses unless allowed.
LOOPBACK = AllowList.parse(["127.0.0.1", "::1"])
FAST_RETRY = RetryPolicy(attempts=3, initial_backoff=0.01, max_backoff=0.05)
OPTIONS = BackendOptions(
    part_size=8 * MiB, workers=4, retry=FAST_RETRY, connect_timeout=5, read_timeout=60
)

Tamper = Callable[[str, Callable[[bytes], bytes]], None]


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


@pytest.fixture
def bucket(seaweed: SeaweedFS) -> str:
    return seaweed.create_bucket(unique("vt"))


@pytest.fixture
def s3_backend(seaweed: SeaweedFS, bucket: str) -> Iterator[S3Backend]:
    backend = S3Backend(
        bucket,
        "exports",
        endpoint=seaweed.endpoint,
        credentials=seaweed.credentials(),
        options=OPTIONS,
        allowed_hosts=LOOPBACK,
    )
    yield backend
    backend.close()


@pytest.fixture
def http_base(nginx: NginxDav) -> str:
    return unique("t")


@pytest.fixture
def http_backend(nginx: NginxDav, http_base: str) -> Iterator[HTTPBackend]:
    backend = HTTPBackend(
        f"{nginx.bearer_url}{http_base}/",
        credentials={"token": nginx.token},
        options=OPTIONS,
        allowed_hosts=LOOPBACK,
    )
    yield backend
    backend.close()


@pytest.fixture
def nfs_root(tmp_path: Path) -> Path:
    root = tmp_path / "nfs-export"
    root.mkdir()
    return root


@pytest.fixture
def nfs_backend(nfs_root: Path) -> NFSBackend:
    return NFSBackend(str(nfs_root), options=OPTIONS)


@pytest.fixture(params=["s3", "http", "nfs"])
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each generic test runs once per backend."""
    backend: Backend = request.getfixturevalue(f"{request.param}_backend")
    return backend


@pytest.fixture
def tamper(request: pytest.FixtureRequest, backend: Backend) -> Tamper:
    """Rewrite an object's bytes behind the backend's back, keeping its stored digest."""
    if isinstance(backend, S3Backend):
        seaweed: SeaweedFS = request.getfixturevalue("seaweed")
        client = seaweed.client()

        def s3_tamper(key: str, change: Callable[[bytes], bytes]) -> None:
            full = backend.full_key(key)
            old = client.get_object(Bucket=backend.bucket, Key=full)
            digest = backend.stat(key).sha256
            body = change(old["Body"].read())
            client.put_object(
                Bucket=backend.bucket, Key=full, Body=body, Metadata={"sha256": digest or ""}
            )

        return s3_tamper
    if isinstance(backend, HTTPBackend):
        nginx: NginxDav = request.getfixturevalue("nginx")
        base: str = request.getfixturevalue("http_base")

        def http_tamper(key: str, change: Callable[[bytes], bytes]) -> None:
            path = nginx.path_of("bearer", f"{base}/{key}")
            path.write_bytes(change(path.read_bytes()))

        return http_tamper
    nfs_root: Path = request.getfixturevalue("nfs_root")

    def nfs_tamper(key: str, change: Callable[[bytes], bytes]) -> None:
        path = nfs_root / key
        path.write_bytes(change(path.read_bytes()))

    return nfs_tamper
