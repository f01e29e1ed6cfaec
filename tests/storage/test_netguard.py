"""SSRF guard: address classes, allow list rules, and the backends refusing endpoints."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from storage import open_backend
from storage.http import HTTPBackend
from storage.netguard import AllowList, check_endpoint
from storage.s3 import S3Backend
from tests.servers.seaweedfs import SeaweedFS
from tests.storage.conftest import LOOPBACK, OPTIONS
from virtrigaud.errors import InvalidArgument, PermissionDenied, Unavailable


def resolver_for(table: dict[str, list[str]]):
    def resolve(host: str, port: int | None) -> Sequence[str]:
        if host not in table:
            raise OSError("Name or service not known")
        return table[host]

    return resolve


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.1.2.3",
        "::1",
        "169.254.1.1",
        "fe80::1",
        "0.0.0.0",
        "::",
        "169.254.169.254",
        "fd00:ec2::254",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",
        "100.100.100.200",
    ],
)
def test_refused_by_default(address: str) -> None:
    with pytest.raises(PermissionDenied, match="SSRF"):
        check_endpoint(
            "storage.example", 443, None, resolver=resolver_for({"storage.example": [address]})
        )


@pytest.mark.parametrize("address", ["10.1.2.3", "192.168.10.5", "203.0.113.7", "2001:db8::5"])
def test_ordinary_addresses_pass(address: str) -> None:
    resolve = resolver_for({"minio.lan": [address]})
    assert [str(a) for a in check_endpoint("minio.lan", 9000, None, resolver=resolve)] == [address]


def test_every_resolved_address_is_checked() -> None:
    resolve = resolver_for({"rebind.example": ["203.0.113.7", "127.0.0.1"]})
    with pytest.raises(PermissionDenied, match=r"127\.0\.0\.1"):
        check_endpoint("rebind.example", 80, None, resolver=resolve)


def test_allow_list_by_host_address_and_cidr() -> None:
    resolve = resolver_for({"localhost": ["127.0.0.1", "::1"], "s3.local": ["127.0.0.5"]})
    check_endpoint("localhost", 80, ["localhost"], resolver=resolve)
    check_endpoint("LOCALHOST.", 80, "localhost", resolver=resolve)
    check_endpoint("localhost", 80, "127.0.0.1, ::1", resolver=resolve)
    check_endpoint("s3.local", 80, "127.0.0.0/8", resolver=resolve)
    with pytest.raises(PermissionDenied):
        check_endpoint("localhost", 80, ["127.0.0.1"], resolver=resolve)  # ::1 not allowed
    with pytest.raises(PermissionDenied):
        check_endpoint("s3.local", 80, ["localhost"], resolver=resolve)


def test_metadata_addresses_need_the_exact_address() -> None:
    resolve = resolver_for({"meta.example": ["169.254.169.254"]})
    for broad in (["meta.example"], ["169.254.0.0/16"], ["0.0.0.0/0"], ["::/0"]):
        with pytest.raises(PermissionDenied, match="metadata"):
            check_endpoint("meta.example", 80, broad, resolver=resolve)
    mapped = resolver_for({"m6.example": ["::ffff:169.254.169.254"]})
    with pytest.raises(PermissionDenied, match="metadata"):
        check_endpoint("m6.example", 80, ["::/0", "0.0.0.0/0"], resolver=mapped)
    check_endpoint("meta.example", 80, ["169.254.169.254"], resolver=resolve)


def test_metadata_host_names_are_refused_by_name() -> None:
    resolve = resolver_for({"metadata.google.internal": ["203.0.113.1"]})
    with pytest.raises(PermissionDenied, match="metadata"):
        check_endpoint(
            "metadata.google.internal", 80, ["metadata.google.internal"], resolver=resolve
        )


def test_unresolvable_and_empty_hosts() -> None:
    with pytest.raises(Unavailable, match="resolve"):
        check_endpoint("nowhere.invalid", 80, None, resolver=resolver_for({}))
    with pytest.raises(InvalidArgument):
        check_endpoint("", 80, None)


def test_allow_list_parsing() -> None:
    allow = AllowList.from_env(
        {"VIRTRIGAUD_STORAGE_ALLOWED_HOSTS": " minio.lan,127.0.0.1 10.0.0.0/8 [::1] "}
    )
    assert allow.hosts == {"minio.lan"}
    assert {str(a) for a in allow.addresses} == {"127.0.0.1", "::1"}
    assert [str(n) for n in allow.networks] == ["10.0.0.0/8"]
    assert AllowList.from_env({}) == AllowList()
    with pytest.raises(InvalidArgument):
        AllowList.parse(["not-a-cidr/99"])


# -- the backends use the guard (real resolution of literal addresses and localhost) --


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://169.254.169.254",
        "169.254.169.254:80",
        "http://[fd00:ec2::254]",
        "http://0.0.0.0:9000",
    ],
)
def test_s3_refuses_metadata_and_unspecified_endpoints(endpoint: str) -> None:
    with pytest.raises(PermissionDenied):
        S3Backend("bucket", endpoint=endpoint, credentials={}, allowed_hosts=["169.254.0.0/16"])


def test_http_refuses_metadata_endpoint() -> None:
    with pytest.raises(PermissionDenied, match="metadata"):
        HTTPBackend("http://169.254.169.254/latest/meta-data/", allowed_hosts=["0.0.0.0/0"])
    with pytest.raises(PermissionDenied, match="metadata"):
        open_backend(None, "http://metadata.google.internal/computeMetadata/v1/")


def test_metadata_endpoint_allowed_by_exact_address() -> None:
    backend = HTTPBackend("http://169.254.169.254/x/", allowed_hosts=["169.254.169.254"])
    assert backend.url("a") == "http://169.254.169.254/x/a"
    backend.close()


def test_loopback_refused_without_allow_list_and_usable_with_it(
    seaweed: SeaweedFS, bucket: str
) -> None:
    config = {"type": "s3", "bucket": bucket, "endpoint": seaweed.endpoint}
    with pytest.raises(PermissionDenied, match="loopback"):
        open_backend(None, config, seaweed.credentials(), OPTIONS)
    localhost = seaweed.endpoint.replace("127.0.0.1", "localhost")
    with pytest.raises(PermissionDenied, match="loopback"):
        open_backend(None, {**config, "endpoint": localhost}, seaweed.credentials(), OPTIONS)
    with open_backend(None, config, seaweed.credentials(), OPTIONS, LOOPBACK) as backend:
        with backend.open_writer("probe.raw") as writer:
            writer.write(b"allowed")
            writer.commit()
        assert backend.open_reader("probe.raw").read_all() == b"allowed"
    with open_backend(
        None, {**config, "endpoint": localhost}, seaweed.credentials(), OPTIONS, ["localhost"]
    ) as b:
        assert b.stat("probe.raw").size == 7
