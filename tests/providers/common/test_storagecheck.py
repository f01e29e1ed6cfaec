"""Validate's intermediate-storage probe against the real backends (SeaweedFS S3, nginx
WebDAV, an NFS directory): it writes, reads back and deletes a small object, and a
refusal names its error code first."""

from __future__ import annotations

import secrets
from pathlib import Path

from providers.common import storagecheck, transfer
from tests.servers.nginx import NginxDav
from tests.servers.seaweedfs import SeaweedFS
from virtrigaud import errors
from virtrigaud.provider.v1 import provider_pb2 as pb

LOOPBACK = ("127.0.0.1",)


def _s3(seaweed: SeaweedFS, bucket: str, **credentials: str) -> pb.StorageLocation:
    return pb.StorageLocation(
        backend=pb.STORAGE_BACKEND_S3,
        url=f"s3://{bucket}/m/probe.txt",
        credentials={**seaweed.credentials(), **credentials},
        options={"base_url": f"s3://{bucket}", "endpoint": seaweed.endpoint},
    )


def _gone(location: pb.StorageLocation) -> bool:
    backend, key = transfer.open_location(location, LOOPBACK)
    with backend:
        try:
            backend.stat(key)
        except errors.NotFound:
            return True
    return False


def test_s3_probe_passes_and_leaves_nothing(seaweed: SeaweedFS) -> None:
    location = _s3(seaweed, seaweed.create_bucket(f"probe-{secrets.token_hex(3)}"))
    check = storagecheck.probe(location, LOOPBACK)
    assert (check.name, check.ok) == ("intermediate-storage", True), check.message
    assert _gone(location)


def test_s3_probe_names_a_wrong_secret_and_a_missing_bucket(seaweed: SeaweedFS) -> None:
    bucket = seaweed.create_bucket(f"probe-{secrets.token_hex(3)}")
    wrong = storagecheck.probe(_s3(seaweed, bucket, secretKey="not-the-secret"), LOOPBACK)
    assert not wrong.ok
    assert wrong.message.split(":")[0] in ("UNAUTHENTICATED", "PERMISSION_DENIED"), wrong.message
    assert "not-the-secret" not in wrong.message
    missing = storagecheck.probe(_s3(seaweed, f"no-such-{secrets.token_hex(3)}"), LOOPBACK)
    assert not missing.ok and missing.message.startswith("NOT_FOUND: "), missing.message


def test_webdav_probe_passes_and_a_refused_token_is_unauthenticated(nginx: NginxDav) -> None:
    base = f"{nginx.bearer_url.rstrip('/')}/{secrets.token_hex(3)}"

    def location(token: str) -> pb.StorageLocation:
        return pb.StorageLocation(
            backend=pb.STORAGE_BACKEND_HTTP,
            url=f"{base}/probe.txt",
            credentials={"token": token},
            options={"base_url": base},
        )

    good = storagecheck.probe(location(nginx.token), LOOPBACK)
    assert good.ok, good.message
    assert _gone(location(nginx.token))
    refused = storagecheck.probe(location("wrong-token"), LOOPBACK)
    assert not refused.ok and refused.message.startswith("UNAUTHENTICATED: "), refused.message
    assert "wrong-token" not in refused.message


def test_nfs_probe_and_a_missing_directory(tmp_path: Path) -> None:
    def location(root: Path) -> pb.StorageLocation:
        return pb.StorageLocation(
            backend=pb.STORAGE_BACKEND_NFS,
            url=f"nfs://{root}/m/probe.txt",
            options={"base_url": f"nfs://{root}"},
        )

    good = storagecheck.probe(location(tmp_path), LOOPBACK)
    assert good.ok, good.message
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    missing = storagecheck.probe(location(tmp_path / "not-mounted"), LOOPBACK)
    assert not missing.ok and missing.message.startswith("NOT_FOUND: "), missing.message


def test_a_loopback_endpoint_outside_the_allow_list_is_refused(seaweed: SeaweedFS) -> None:
    location = _s3(seaweed, "any-bucket")
    check = storagecheck.probe(location, allowed_hosts=())
    assert not check.ok and check.message.startswith("PERMISSION_DENIED: "), check.message
