"""The S3 reader's parallel ranged GETs: order, bounded memory, errors, resume, stop."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from storage import BackendOptions, RetryPolicy
from storage.s3 import S3Backend, S3Reader
from tests.servers.faultproxy import FaultProxy
from tests.servers.seaweedfs import SeaweedFS, start_seaweedfs
from tests.storage.conftest import FAST_RETRY, LOOPBACK
from tests.storage.streams import MiB, dense, drain, pump
from virtrigaud.errors import (
    ChecksumMismatch,
    Conflict,
    InternalError,
    InvalidArgument,
    Unavailable,
    Unsupported,
)

KEY = "virtrigaud/ns/vm-0a11e1/vda.vmdk"
RANGE = 3 * MiB
WORKERS = 3
# Small ranges, so that even small test objects are many ranges.
PARALLEL = BackendOptions(
    part_size=8 * MiB,
    read_workers=WORKERS,
    read_range_size=RANGE,
    chunk_size=MiB,
    retry=FAST_RETRY,
    connect_timeout=5,
    read_timeout=60,
)


def backend_for(seaweed: SeaweedFS, bucket: str, **overrides: Any) -> S3Backend:
    params: dict[str, Any] = {
        "endpoint": seaweed.endpoint,
        "credentials": seaweed.credentials(),
        "options": PARALLEL,
        "allowed_hosts": LOOPBACK,
    }
    params.update(overrides)
    return S3Backend(bucket, "exports", **params)


@pytest.fixture
def s3(seaweed: SeaweedFS, bucket: str) -> Iterator[S3Backend]:
    backend = backend_for(seaweed, bucket)
    yield backend
    backend.close()


def store(backend: S3Backend, size: int, seed: int) -> bytes:
    data = b"".join(dense(size, seed))
    with backend.open_writer(KEY) as writer:
        pump(writer, [data])
        writer.commit()
    return data


def record_gets(backend: S3Backend) -> list[dict[str, Any]]:
    """The parameters of every GetObject the backend sends (appended as they go)."""
    calls: list[dict[str, Any]] = []
    lock = threading.Lock()

    def hook(params: dict[str, Any], **_: Any) -> None:
        with lock:
            calls.append(dict(params))

    backend.client.meta.events.register("provide-client-params.s3.GetObject", hook)
    return calls


def spans(calls: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """(start, end) of each ranged GET, end exclusive, sorted."""
    out = []
    for call in calls:
        first, last = call["Range"].removeprefix("bytes=").split("-")
        out.append((int(first), int(last) + 1))
    return sorted(out)


def s3_get_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("s3-get")]


def wait_until(condition: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_ranges_are_fetched_in_parallel_and_yielded_in_order(s3: S3Backend) -> None:
    size = 17 * RANGE + 777  # 18 ranges, the last one 777 bytes
    data = store(s3, size, seed=80)
    gets = record_gets(s3)
    reader = s3.open_reader(KEY, expected_sha256=hashlib.sha256(data).hexdigest())
    assert isinstance(reader, S3Reader)
    chunks = list(reader)
    assert b"".join(chunks) == data
    assert reader.verified and reader.sha256 == hashlib.sha256(data).hexdigest()
    # Pieces of chunk_size (3 MiB ranges hold three 1 MiB pieces), the last one short.
    assert [len(c) for c in chunks] == [MiB] * (17 * 3) + [777]
    assert spans(gets) == [(s, min(s + RANGE, size)) for s in range(0, size, RANGE)]
    assert reader.requests == len(gets) == 18
    etag = s3.stat(KEY).etag
    assert all(call["IfMatch"] == etag for call in gets)  # every range pinned
    assert 0 < reader.peak_buffer_bytes <= (WORKERS + 1) * RANGE
    assert reader.buffered_bytes == 0
    assert s3_get_threads() == []


@pytest.mark.parametrize("ranges", [8, 40])
def test_memory_is_bounded_while_the_consumer_stalls(s3: S3Backend, ranges: int) -> None:
    """The bound is (workers + 1) ranges whatever the object size, even when nobody reads."""
    data = store(s3, ranges * RANGE, seed=81)
    reader = s3.open_reader(KEY)
    assert isinstance(reader, S3Reader)
    assert reader.buffer_limit == (WORKERS + 1) * RANGE
    chunks = iter(reader)
    received = [next(chunks)]  # the consumer holds the first range, then stalls
    # The workers fill the other WORKERS ranges, then nothing more is requested.
    full = (WORKERS + 1) * RANGE - len(received[0])
    wait_until(lambda: reader.buffered_bytes == full, "the read-ahead window to fill")
    time.sleep(0.3)  # give a (wrong) extra request the chance to happen
    assert reader.requests == WORKERS + 1
    assert reader.buffered_bytes == full
    received += list(chunks)
    assert b"".join(received) == data
    assert reader.verified
    assert reader.peak_buffer_bytes <= reader.buffer_limit
    assert reader.requests == ranges


def test_resume_at_an_offset(s3: S3Backend) -> None:
    size = 20 * MiB + 5
    data = store(s3, size, seed=82)
    offset = 5 * MiB + 12345
    gets = record_gets(s3)
    with s3.open_reader(KEY, offset=offset) as reader:
        assert isinstance(reader, S3Reader)
        assert reader.read_all() == data[offset:]
        assert reader.sha256 is None and not reader.verified  # only the size was checked
    assert spans(gets) == [(s, min(s + RANGE, size)) for s in range(offset, size, RANGE)]
    gets.clear()
    assert s3.open_reader(KEY, offset=size).read_all() == b""
    assert gets == []  # nothing left to fetch: no request at all


def test_truncated_and_longer_objects(s3: S3Backend) -> None:
    size = 4 * RANGE + 5
    data = store(s3, size, seed=83)
    with pytest.raises(ChecksumMismatch, match="truncated"):
        drain(s3.open_reader(KEY, expected_size=size + 100))
    gets = record_gets(s3)
    longer = s3.open_reader(KEY, expected_size=size - 100)
    with pytest.raises(ChecksumMismatch, match="longer than the expected"):
        drain(longer)
    # One byte past the expected size is enough to tell: the rest is never fetched.
    assert max(end for _, end in spans(gets)) == size - 99
    sha = hashlib.sha256(data).hexdigest()
    with pytest.raises(ChecksumMismatch):
        s3.open_reader(KEY, expected_sha256=hashlib.sha256(b"other").hexdigest())
    assert drain(s3.open_reader(KEY, expected_sha256=sha)) == (sha, size)


def test_a_corrupted_byte_in_a_late_range_is_detected(seaweed: SeaweedFS, s3: S3Backend) -> None:
    data = bytearray(store(s3, 6 * RANGE, seed=84))
    sha = s3.stat(KEY).sha256
    data[5 * RANGE + 17] ^= 0x01
    seaweed.client().put_object(
        Bucket=s3.bucket, Key=s3.full_key(KEY), Body=bytes(data), Metadata={"sha256": sha or ""}
    )
    reader = s3.open_reader(KEY)
    with pytest.raises(ChecksumMismatch, match="has sha256"):
        drain(reader)
    assert not reader.verified


def test_object_replaced_during_the_download_is_a_conflict(s3: S3Backend) -> None:
    store(s3, 12 * RANGE, seed=85)
    reader = s3.open_reader(KEY)
    chunks = iter(reader)
    next(chunks)
    store(s3, 12 * RANGE, seed=86)  # ranges requested from now on no longer match
    with pytest.raises(Conflict, match="changed"):
        for _ in chunks:
            pass
    assert s3_get_threads() == []


def test_cut_connections_resume_their_own_range(seaweed: SeaweedFS, s3: S3Backend) -> None:
    data = store(s3, 9 * RANGE + 1, seed=87)
    sha = hashlib.sha256(data).hexdigest()
    with FaultProxy(seaweed.s3_port, cut_after=2 * MiB + 1000, cuts=3, reset=True) as proxy:
        backend = backend_for(seaweed, s3.bucket, endpoint=proxy.url)
        gets = record_gets(backend)
        reader = backend.open_reader(KEY, expected_sha256=sha)
        assert isinstance(reader, S3Reader)
        assert drain(reader) == (sha, len(data))
        assert reader.verified
        assert proxy.cut_count == 3 and reader.resumes == 3
        planned = [(s, min(s + RANGE, len(data))) for s in range(0, len(data), RANGE)]
        assert len(gets) == len(planned) + 3  # one request more per cut
        assert set(planned) <= set(spans(gets))
        for start, end in spans(gets):
            # A planned range, or the rest of one from where its bytes stopped (a reset
            # can also lose everything received: then the whole range is asked again).
            assert end == min((start // RANGE + 1) * RANGE, len(data))


def test_closing_the_reader_stops_the_workers(s3: S3Backend) -> None:
    store(s3, 30 * RANGE, seed=88)
    reader = s3.open_reader(KEY)
    assert isinstance(reader, S3Reader)
    chunks = iter(reader)
    next(chunks)
    next(chunks)
    reader.close()
    assert s3_get_threads() == []
    assert reader.buffered_bytes == 0
    assert reader.requests <= WORKERS + 1  # the first range was not finished
    assert not reader.verified


@pytest.mark.parametrize(
    ("rewrite", "error", "message"),
    [
        (lambda r, size: None, Unsupported, "ignored a Range"),
        (lambda r, size: f"bytes 0-{r[1] - r[0]}/{size}", InternalError, "from byte 0"),
        (lambda r, size: f"bytes {r[0]}-{r[1]}/{size + 1}", Conflict, "changed"),
    ],
    ids=["range-ignored", "wrong-start", "other-size"],
)
def test_a_response_for_the_wrong_range_is_refused(
    s3: S3Backend, rewrite: Any, error: type[Exception], message: str
) -> None:
    """The reader checks Content-Range against what it asked for (a proxy or a server
    that ignores ``Range`` would otherwise splice the wrong bytes into the stream)."""
    size = 4 * RANGE
    store(s3, size, seed=89)

    def tamper(parsed: dict[str, Any], **_: Any) -> None:
        served = parsed.get("ContentRange", "")
        first, last = served.removeprefix("bytes ").split("/")[0].split("-")
        if int(first) > 0:
            replacement = rewrite((int(first), int(last)), size)
            if replacement is None:
                parsed.pop("ContentRange")
            else:
                parsed["ContentRange"] = replacement

    s3.client.meta.events.register("after-call.s3.GetObject", tamper)
    with pytest.raises(error, match=message):
        drain(s3.open_reader(KEY))
    assert s3_get_threads() == []


def test_read_options_are_validated() -> None:
    with pytest.raises(InvalidArgument, match="read_workers"):
        BackendOptions(read_workers=0)
    with pytest.raises(InvalidArgument, match="read_range_size"):
        BackendOptions(read_range_size=0)


# ---------------------------------------------------------------- a real outage


@pytest.fixture(scope="module")
def own_seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    with start_seaweedfs(tmp_path_factory.mktemp("seaweedfs-parallel")) as server:
        yield server


def test_server_stopped_mid_download_is_unavailable(own_seaweed: SeaweedFS) -> None:
    bucket = own_seaweed.create_bucket(f"par-{secrets.token_hex(3)}")
    options = BackendOptions(
        read_workers=WORKERS,
        read_range_size=RANGE,
        retry=RetryPolicy(attempts=2, initial_backoff=0.05, max_backoff=0.1),
        connect_timeout=2,
        read_timeout=10,
    )
    backend = backend_for(own_seaweed, bucket, options=options)
    store(backend, 20 * RANGE, seed=90)
    reader = backend.open_reader(KEY)
    chunks = iter(reader)
    received = len(next(chunks))
    own_seaweed.stop(kill=True)  # a crash, with ranges in flight and ranges still to ask
    try:
        with pytest.raises(Unavailable):
            for chunk in chunks:
                received += len(chunk)
        # What was fetched before the crash was delivered, in order, before the error.
        assert RANGE <= received <= (WORKERS + 1) * RANGE
        assert not reader.verified
        assert s3_get_threads() == []
    finally:
        own_seaweed.start()
