"""HTTP specifics against nginx WebDAV: auth, 413, sidecars, ranged resume, TLS."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from storage import BackendOptions, ResumeState
from storage.http import HTTPBackend, HTTPReader
from tests.servers.faultproxy import FaultProxy
from tests.servers.nginx import NginxDav, start_nginx_dav
from tests.storage.conftest import FAST_RETRY, LOOPBACK, OPTIONS
from tests.storage.streams import MiB, dense, drain, pump
from tests.support.certs import CertAuthority
from virtrigaud.errors import (
    AuthenticationError,
    ChecksumMismatch,
    Conflict,
    NotFound,
    OutOfSpace,
    Unavailable,
    Unsupported,
)

KEY = "virtrigaud/ns/vm-87654321/vda.vmdk"


def backend_for(url: str, credentials: dict[str, str] | None, **kw: Any) -> HTTPBackend:
    return HTTPBackend(
        url,
        credentials=credentials,
        options=kw.pop("options", OPTIONS),
        allowed_hosts=LOOPBACK,
        **kw,
    )


def put(backend: HTTPBackend, data: bytes, key: str = KEY) -> str:
    with backend.open_writer(key) as writer:
        writer.write(data)
        info = writer.commit()
    assert info.sha256
    return info.sha256


@pytest.mark.parametrize("spelling", ["{t}", "Bearer {t}", "Bearer_{t}", "  bearer_{t}  "])
def test_token_spellings_all_authenticate(nginx: NginxDav, http_base: str, spelling: str) -> None:
    backend = backend_for(
        f"{nginx.bearer_url}{http_base}/", {"token": spelling.format(t=nginx.token)}
    )
    put(backend, b"token ok")
    assert backend.open_reader(KEY).read_all() == b"token ok"


@pytest.mark.parametrize(
    "credentials", [None, {"token": "wrong-token"}, {"username": "u", "password": "p"}]
)
def test_missing_or_wrong_token_is_401(
    nginx: NginxDav, http_base: str, credentials: dict[str, str] | None
) -> None:
    backend = backend_for(f"{nginx.bearer_url}{http_base}/", credentials)
    with pytest.raises(AuthenticationError, match="401") as caught:
        backend.open_writer(KEY)  # refused before any byte is streamed
    assert "wrong-token" not in str(caught.value) and nginx.token not in str(caught.value)
    for call in (
        lambda: backend.stat(KEY),
        lambda: backend.delete(KEY),
        lambda: list(backend.list("")),
    ):
        with pytest.raises(AuthenticationError):
            call()
    assert not (nginx.root / "bearer" / http_base).exists()


def test_basic_auth(nginx: NginxDav, http_base: str) -> None:
    good = backend_for(
        f"{nginx.basic_url}{http_base}/", {"username": nginx.username, "password": nginx.password}
    )
    with good.open_writer(KEY) as writer:
        sha, size = pump(writer, dense(3 * MiB, seed=50))
        writer.commit()
    assert drain(good.open_reader(KEY)) == (sha, size)
    bad = backend_for(
        f"{nginx.basic_url}{http_base}/", {"username": nginx.username, "password": "nope"}
    )
    with pytest.raises(AuthenticationError):
        bad.stat(KEY)
    with pytest.raises(AuthenticationError):
        backend_for(f"{nginx.basic_url}{http_base}/", None).stat(KEY)


def test_sidecar_is_sha256sum_format(
    nginx: NginxDav, http_base: str, http_backend: HTTPBackend
) -> None:
    sha = put(http_backend, b"sidecar contents")
    sidecar = nginx.path_of("bearer", f"{http_base}/{KEY}.sha256").read_text()
    assert sidecar == f"{sha}  vda.vmdk\n"
    http_backend.delete(KEY)
    assert not nginx.path_of("bearer", f"{http_base}/{KEY}.sha256").exists()
    assert not nginx.path_of("bearer", f"{http_base}/{KEY}").exists()


def test_payload_too_large_is_out_of_space(nginx: NginxDav, http_base: str) -> None:
    backend = backend_for(f"{nginx.small_url}{http_base}/", None)
    put(backend, b"s" * 1000)  # below the location's limit
    with pytest.raises(OutOfSpace, match="413"), backend.open_writer(KEY) as writer:
        pump(writer, dense(8 * MiB, seed=51))
        writer.commit()
    assert backend.open_reader(KEY).read_all() == b"s" * 1000  # the old object is intact


def test_server_errors_are_retried_then_unavailable(nginx: NginxDav, http_base: str) -> None:
    marker = f"retry-{http_base}"
    backend = backend_for(nginx.url_of("unavailable") + marker + "/", None)
    with pytest.raises(Unavailable, match="503"):
        backend.stat(KEY)
    attempts = [line for line in nginx.access_log() if marker in line]
    assert len(attempts) == FAST_RETRY.attempts and all('" 503 ' in a for a in attempts)


def test_insufficient_storage_is_out_of_space(nginx: NginxDav) -> None:
    backend = backend_for(nginx.url_of("full"), None)
    with pytest.raises(OutOfSpace, match="507"):
        backend.open_writer(KEY)


def test_reader_resumes_broken_download_with_range(nginx: NginxDav, http_base: str) -> None:
    url = f"{nginx.bearer_url}{http_base}/"
    direct = backend_for(url, {"token": nginx.token})
    with direct.open_writer(KEY) as writer:
        sha, size = pump(writer, dense(20 * MiB, seed=52))
        writer.commit()
    with FaultProxy(nginx.port, cut_after=3 * MiB, cuts=2) as proxy:
        via_proxy = backend_for(
            url.replace(str(nginx.port), str(proxy.port)),
            {"token": nginx.token},
            # 1 MiB chunks: some are yielded before each cut, so resumes need a Range.
            options=dataclasses.replace(OPTIONS, chunk_size=MiB),
        )
        reader = via_proxy.open_reader(KEY)
        assert isinstance(reader, HTTPReader)
        assert drain(reader) == (sha, size)
        assert reader.verified
        assert proxy.cut_count == 2 and reader.resumes == 2
        ranged = [r.lower() for r in proxy.requests if b"range: bytes=" in r.lower()]
        assert len(ranged) == 2 and all(b"if-match:" in r for r in ranged)
        offsets = [int(r.split(b"range: bytes=")[1].split(b"-")[0]) for r in ranged]
        assert 0 < offsets[0] < offsets[1] < 7 * MiB  # each resume starts where it broke


def test_reader_survives_connection_resets(nginx: NginxDav, http_base: str) -> None:
    url = f"{nginx.bearer_url}{http_base}/"
    direct = backend_for(url, {"token": nginx.token})
    with direct.open_writer(KEY) as writer:
        sha, size = pump(writer, dense(20 * MiB, seed=54))
        writer.commit()
    with FaultProxy(nginx.port, cut_after=4 * MiB, cuts=2, reset=True) as proxy:
        via_proxy = backend_for(
            url.replace(str(nginx.port), str(proxy.port)), {"token": nginx.token}
        )
        reader = via_proxy.open_reader(KEY)
        assert drain(reader) == (sha, size)
        assert reader.verified and proxy.cut_count == 2


def test_reader_from_offset_uses_range(
    nginx: NginxDav, http_base: str, http_backend: HTTPBackend
) -> None:
    data = b"".join(dense(2 * MiB, seed=53))
    put(http_backend, data)
    with FaultProxy(nginx.port, cut_after=1 << 40) as proxy:
        backend = backend_for(f"{proxy.url}/bearer/{http_base}/", {"token": nginx.token})
        assert backend.open_reader(KEY, offset=MiB + 1).read_all() == data[MiB + 1 :]
        assert any(f"range: bytes={MiB + 1}-".encode() in r.lower() for r in proxy.requests)


def test_reader_is_pinned_to_the_object_it_stated(http_backend: HTTPBackend) -> None:
    put(http_backend, b"a" * 1000)
    reader = http_backend.open_reader(KEY)
    put(http_backend, b"b" * 2000)
    with pytest.raises(Conflict, match="changed"):
        reader.read_all()


def test_listing_needs_webdav(nginx: NginxDav, http_base: str, http_backend: HTTPBackend) -> None:
    put(http_backend, b"1", "d/one.raw")
    put(http_backend, b"22", "d/e/two.raw")
    assert sorted((o.key, o.size) for o in http_backend.list("d/")) == [
        ("d/e/two.raw", 2),
        ("d/one.raw", 1),
    ]
    assert list(http_backend.list("nothing-here/")) == []


def test_missing_object(http_backend: HTTPBackend) -> None:
    with pytest.raises(NotFound):
        http_backend.stat(KEY)
    with pytest.raises(Unsupported):
        http_backend.open_writer(KEY, resume=ResumeState(KEY, "upload-id", 8 * MiB))


def test_corrupted_sidecar_is_ignored_not_trusted(
    nginx: NginxDav, http_base: str, http_backend: HTTPBackend
) -> None:
    sha = put(http_backend, b"payload")
    nginx.path_of("bearer", f"{http_base}/{KEY}.sha256").write_text("garbage\n")
    assert http_backend.stat(KEY).sha256 is None
    reader = http_backend.open_reader(KEY)
    assert reader.read_all() == b"payload" and not reader.verified
    nginx.path_of("bearer", f"{http_base}/{KEY}.sha256").write_text("0" * 64 + "  vda.vmdk\n")
    with pytest.raises(ChecksumMismatch):
        http_backend.open_reader(KEY, expected_sha256=sha)


# -- TLS -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NginxDav, Path]]:
    certs = tmp_path_factory.mktemp("certs")
    ca = CertAuthority(certs)
    pair = ca.issue("127.0.0.1", server=True)
    with start_nginx_dav(tmp_path_factory.mktemp("nginx-tls"), tls=(pair.cert, pair.key)) as server:
        yield server, ca.path


def test_tls_verified_by_default(tls_nginx: tuple[NginxDav, Path]) -> None:
    server, ca_file = tls_nginx
    assert server.open_url.startswith("https://")
    untrusted = backend_for(server.open_url, None)
    with pytest.raises(AuthenticationError, match="TLS verification"):
        untrusted.stat(KEY)
    trusted = backend_for(
        server.open_url, None, options=BackendOptions(ca_file=str(ca_file), retry=FAST_RETRY)
    )
    put(trusted, b"over tls")
    assert trusted.open_reader(KEY).read_all() == b"over tls"
    pem = ca_file.read_text()
    from_secret = backend_for(server.open_url, {"ca.crt": pem})
    assert from_secret.stat(KEY).size == 8
    insecure = backend_for(
        server.open_url,
        None,
        options=BackendOptions(insecure_skip_tls_verify=True, retry=FAST_RETRY),
    )
    assert insecure.stat(KEY).size == 8
