"""Servers stopped mid-transfer (dedicated instances, so the shared ones stay up).

A stopped server must surface as Unavailable, nothing may be reported as committed, and
(S3) the parts that made it before the outage are reused after the server is back.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from storage import BackendOptions, RetryPolicy
from storage.http import HTTPBackend
from storage.s3 import S3Backend
from storage.s3_multipart import S3Writer
from tests.servers.nginx import NginxDav, start_nginx_dav
from tests.servers.seaweedfs import SeaweedFS, start_seaweedfs
from tests.storage.conftest import LOOPBACK
from tests.storage.streams import MiB, dense, digest, drain, prefix_of, pump
from virtrigaud.errors import NotFound, Unavailable

KEY = "virtrigaud/ns/vm-0ff11e00/vda.raw"
# Few, quick retries: the server is really gone, the test only needs the final error.
OUTAGE = BackendOptions(
    part_size=8 * MiB,
    retry=RetryPolicy(attempts=2, initial_backoff=0.05, max_backoff=0.1),
    connect_timeout=2,
    read_timeout=10,
)


@pytest.fixture(scope="module")
def own_seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    with start_seaweedfs(tmp_path_factory.mktemp("seaweedfs-outage")) as server:
        yield server


@pytest.fixture(scope="module")
def own_nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxDav]:
    with start_nginx_dav(tmp_path_factory.mktemp("nginx-outage")) as server:
        yield server


def new_bucket(server: SeaweedFS) -> str:
    if not server.running:
        server.start()
    return server.create_bucket(f"outage-{secrets.token_hex(3)}")


def s3_for(server: SeaweedFS, bucket: str) -> S3Backend:
    if not server.running:
        server.start()
    return S3Backend(
        bucket,
        endpoint=server.endpoint,
        credentials=server.credentials(),
        options=OUTAGE,
        allowed_hosts=LOOPBACK,
    )


def http_for(server: NginxDav) -> HTTPBackend:
    if not server.running:
        server.start()
    return HTTPBackend(
        server.bearer_url,
        credentials={"token": server.token},
        options=OUTAGE,
        allowed_hosts=LOOPBACK,
    )


def test_s3_stopped_during_upload_then_resumed(own_seaweed: SeaweedFS) -> None:
    bucket = new_bucket(own_seaweed)
    size = 80 * MiB
    backend = s3_for(own_seaweed, bucket)
    with pytest.raises(Unavailable), backend.open_writer(KEY) as writer:
        chunks = dense(size, seed=70)
        pump(writer, prefix_of(chunks, 4 * 8 * MiB + MiB))
        assert isinstance(writer, S3Writer)
        saved = writer.checkpoint()
        assert saved is not None and saved.committed_bytes == 4 * 8 * MiB
        own_seaweed.stop()
        pump(writer, chunks)
        writer.commit()
    # A transient error detaches the writer: parts stay on the server for a resume.
    assert isinstance(writer, S3Writer) and writer.closed
    state = writer.resume_state()
    assert state is not None and saved is not None
    assert state.parts == saved.parts  # nothing finished after the stop

    restarted = s3_for(own_seaweed, bucket)  # same ports, same data directory
    with pytest.raises(NotFound):
        restarted.stat(KEY)  # nothing was reported or made visible as committed
    with restarted.open_writer(KEY, resume=state) as resumed:
        pump(resumed, dense(size, seed=70))
        resumed.commit()
    assert isinstance(resumed, S3Writer)
    assert resumed.bytes_skipped == 4 * 8 * MiB
    assert resumed.bytes_uploaded == size - 4 * 8 * MiB
    expected = digest(dense(size, seed=70))
    assert drain(restarted.open_reader(KEY, expected_sha256=expected[0])) == expected


def test_s3_stopped_during_download(own_seaweed: SeaweedFS) -> None:
    backend = s3_for(own_seaweed, new_bucket(own_seaweed))
    with backend.open_writer(KEY) as writer:
        pump(writer, dense(64 * MiB, seed=71))
        writer.commit()
    reader = backend.open_reader(KEY)
    chunks = iter(reader)
    first = next(chunks)
    assert len(first) == OUTAGE.chunk_size
    # A crash: a graceful SIGTERM would wait for this response, which nobody reads.
    own_seaweed.stop(kill=True)
    with pytest.raises(Unavailable):
        for _ in chunks:
            pass
    assert not reader.verified
    own_seaweed.start()


def test_http_stopped_during_upload(own_nginx: NginxDav) -> None:
    backend = http_for(own_nginx)
    with pytest.raises(Unavailable), backend.open_writer(KEY) as writer:
        chunks = dense(64 * MiB, seed=72)
        pump(writer, prefix_of(chunks, 16 * MiB))
        own_nginx.stop()
        pump(writer, chunks)
        writer.commit()
    assert writer.closed
    restarted = http_for(own_nginx)
    with pytest.raises(NotFound):
        restarted.stat(KEY)
    assert not own_nginx.path_of("bearer", KEY).exists()


def test_http_stopped_during_download(own_nginx: NginxDav) -> None:
    backend = http_for(own_nginx)
    with backend.open_writer(KEY) as writer:
        pump(writer, dense(64 * MiB, seed=73))
        writer.commit()
    reader = backend.open_reader(KEY)
    chunks = iter(reader)
    next(chunks)
    own_nginx.stop()
    with pytest.raises(Unavailable):
        for _ in chunks:
            pass
    assert not reader.verified
    own_nginx.start()
