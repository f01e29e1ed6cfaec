"""URL/spec parsing, endpoint resolution and the backend factory."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage import StorageLocation, open_backend, parse_location, parse_url
from storage.http import HTTPBackend, bearer_token
from storage.nfs import NFSBackend
from storage.retry import Attempts, RetryPolicy, retry_call
from storage.s3 import S3Backend, resolve_endpoint
from virtrigaud.errors import InvalidArgument, NotFound, Unavailable


def test_parse_urls() -> None:
    assert parse_url("s3://vm-migrations/exports/x") == StorageLocation(
        "s3", bucket="vm-migrations", prefix="exports/x"
    )
    assert parse_url("https://storage.example.com/exports") == StorageLocation(
        "http", url="https://storage.example.com/exports"
    )
    assert parse_url("nfs:///mnt/vm-migrations") == StorageLocation(
        "nfs", path="/mnt/vm-migrations"
    )
    assert parse_url("nfs://nfs.example.com/mnt/x") == StorageLocation(
        "nfs", path="/mnt/x", endpoint="nfs.example.com"
    )
    for bad in ("ftp://x/y", "s3:///nobucket", "nfs://server", "/just/a/path"):
        with pytest.raises(InvalidArgument):
            parse_url(bad)


def test_parse_spec_mappings() -> None:
    spec = {"type": "s3", "bucket": "b1", "region": "us-east-1", "endpoint": "s3.amazonaws.com"}
    assert parse_location(spec).endpoint == "s3.amazonaws.com"
    assert parse_location({"type": "nfs", "path": "/mnt/x"}).path == "/mnt/x"
    for bad in ({"type": "s3"}, {"type": "http"}, {"type": "nfs"}, {"type": "ftp"}):
        with pytest.raises(InvalidArgument):
            parse_location(bad)


def test_endpoint_resolution() -> None:
    assert resolve_endpoint(None, None) is None
    assert resolve_endpoint("s3.amazonaws.com", None) is None
    assert resolve_endpoint("minio.example.com:9000", None) == "https://minio.example.com:9000"
    # The user guide's MinIO example: scheme only in the Secret.
    assert (
        resolve_endpoint("minio.example.com:9000", "http://minio.example.com:9000")
        == "http://minio.example.com:9000"
    )
    assert resolve_endpoint(None, "http://10.0.0.5:9000/") == "http://10.0.0.5:9000"
    for spec, secret in (
        ("minio.example.com:9000", "http://other:9000"),
        ("ftp://x", None),
        ("http://x/path", None),
        ("http://user:pw@x", None),
    ):
        with pytest.raises(InvalidArgument):
            resolve_endpoint(spec, secret)


def test_factory_builds_each_backend(tmp_path: Path) -> None:
    s3 = open_backend(
        "s3",
        {"bucket": "vm-migrations", "region": "eu-west-1"},
        {"accessKey": "a", "secretKey": "b"},
    )
    assert isinstance(s3, S3Backend)
    assert s3.endpoint == "https://s3.eu-west-1.amazonaws.com"
    assert s3.url("virtrigaud/x.raw") == "s3://vm-migrations/virtrigaud/x.raw"
    http = open_backend(None, "https://10.1.2.3/exports", {"token": "Bearer_abc"})
    assert isinstance(http, HTTPBackend)
    assert http.client.headers["Authorization"] == "Bearer abc"
    assert http.url("a b/c#d") == "https://10.1.2.3/exports/a%20b/c%23d"
    nfs = open_backend(
        "nfs",
        {"path": str(tmp_path), "endpoint": "nfs.example.com"},
        {"mountOptions": "vers=4,rw,sync"},
    )
    assert isinstance(nfs, NFSBackend)
    assert nfs.mount_options == "vers=4,rw,sync"
    assert nfs.url("d/x.raw") == f"nfs://nfs.example.com{tmp_path}/d/x.raw"
    with pytest.raises(InvalidArgument, match="does not match"):
        open_backend("nfs", "s3://bucket/x")
    for backend in (s3, http, nfs):
        backend.close()


def test_credentials_validation() -> None:
    with pytest.raises(InvalidArgument, match="accessKey and secretKey"):
        S3Backend("bucket", credentials={"accessKey": "only"})
    with pytest.raises(InvalidArgument, match="either token"):
        HTTPBackend(
            "https://10.1.2.3/x", credentials={"token": "t", "username": "u", "password": "p"}
        )
    with pytest.raises(InvalidArgument, match="username and password"):
        HTTPBackend("https://10.1.2.3/x", credentials={"username": "u"})
    with pytest.raises(InvalidArgument):
        HTTPBackend("https://user:pw@10.1.2.3/x")
    with pytest.raises(InvalidArgument):
        S3Backend("bad/bucket")


@pytest.mark.parametrize(
    ("value", "sent"),
    [("abc", "abc"), ("Bearer abc", "abc"), ("Bearer_abc", "abc"), ("bearer_abc", "abc")],
)
def test_bearer_token_prefix(value: str, sent: str) -> None:
    assert bearer_token(value) == sent


def test_bearer_token_rejects_header_injection() -> None:
    for bad in ("", "Bearer ", "a\r\nX-Evil: 1", "two words"):
        with pytest.raises(InvalidArgument):
            bearer_token(bad)


def test_nfs_missing_root_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "not-mounted"
    with pytest.raises(NotFound, match=str(missing)):
        NFSBackend(str(missing))
    with pytest.raises(InvalidArgument):
        NFSBackend("relative/path")


def test_retry_budget_is_consecutive() -> None:
    sleeps: list[float] = []
    attempts = Attempts(RetryPolicy(attempts=3, initial_backoff=1, jitter=0), sleeps.append)
    attempts.failed(Unavailable("1"))
    attempts.failed(Unavailable("2"))
    attempts.progress()  # useful work refills the budget
    attempts.failed(Unavailable("3"))
    attempts.failed(Unavailable("4"))
    with pytest.raises(Unavailable, match="5"):
        attempts.failed(Unavailable("5"))
    assert sleeps == [1, 2, 1, 2]


def test_retry_call_retries_only_retryable_errors() -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("down")
        return "ok"

    def translate(exc: Exception) -> Exception:
        return Unavailable(str(exc)) if isinstance(exc, ConnectionError) else InvalidArgument("no")

    policy = RetryPolicy(attempts=3, initial_backoff=0)
    assert retry_call(flaky, policy=policy, translate=translate, sleep=lambda _: None) == "ok"
    assert len(calls) == 3

    def broken() -> str:
        calls.append(1)
        raise ValueError("bad input")

    calls.clear()
    with pytest.raises(InvalidArgument):
        retry_call(broken, policy=policy, translate=translate, sleep=lambda _: None)
    assert len(calls) == 1
