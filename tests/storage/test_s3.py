"""S3 specifics against SeaweedFS: multipart, digests, memory bound, aborts, errors."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import pytest

from storage import BackendOptions
from storage.s3 import S3Backend, S3Reader
from storage.s3_multipart import MAX_OBJECT_SIZE, MAX_PART_SIZE, MAX_PARTS, PartSchedule, S3Writer
from tests.servers.faultproxy import FaultProxy
from tests.servers.seaweedfs import SeaweedFS
from tests.storage.conftest import FAST_RETRY, LOOPBACK, OPTIONS
from tests.storage.streams import MiB, dense, drain, prefix_of, pump
from virtrigaud.errors import AuthenticationError, Conflict, InvalidArgument, NotFound

KEY = "virtrigaud/ns/vm-12345678/vda.qcow2"


def make_backend(seaweed: SeaweedFS, bucket: str, **overrides: Any) -> S3Backend:
    params: dict[str, Any] = {
        "endpoint": seaweed.endpoint,
        "credentials": seaweed.credentials(),
        "options": OPTIONS,
        "allowed_hosts": LOOPBACK,
    }
    params.update(overrides)
    return S3Backend(bucket, "exports", **params)


def test_part_schedule_reaches_five_tib_without_oversized_parts() -> None:
    schedule = PartSchedule(8 * MiB)
    sizes = [schedule.size(n) for n in range(1, MAX_PARTS + 1)]
    assert sum(sizes) >= MAX_OBJECT_SIZE
    assert sizes == sorted(sizes)
    assert max(sizes) <= MAX_PART_SIZE and min(sizes) == 8 * MiB
    assert schedule.size(1000) == 8 * MiB and schedule.size(1001) == 16 * MiB
    with pytest.raises(InvalidArgument):
        PartSchedule(4 * MiB)  # below S3's minimum part size
    with pytest.raises(InvalidArgument, match="5 TiB"):
        PartSchedule(5 * MiB)  # doubling every 1000 parts would stop short of 5 TiB


def test_small_object_is_one_put_with_metadata(seaweed: SeaweedFS, s3_backend: S3Backend) -> None:
    data = b"tiny disk"
    with s3_backend.open_writer(KEY) as writer:
        writer.write(data)
        info = writer.commit()
    head = seaweed.client().head_object(Bucket=s3_backend.bucket, Key=f"exports/{KEY}")
    assert head["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest() == info.sha256
    assert list(s3_backend.incomplete_uploads()) == []


def test_multipart_digest_stored_as_tag(seaweed: SeaweedFS, s3_backend: S3Backend) -> None:
    with s3_backend.open_writer(KEY) as writer:
        sha, size = pump(writer, dense(20 * MiB + 1, seed=20))
        writer.commit()
    tags = seaweed.client().get_object_tagging(Bucket=s3_backend.bucket, Key=f"exports/{KEY}")
    assert {t["Key"]: t["Value"] for t in tags["TagSet"]} == {"sha256": sha}
    assert s3_backend.stat(KEY).sha256 == sha
    assert drain(s3_backend.open_reader(KEY)) == (sha, size)


def test_memory_budget_limits_buffers(seaweed: SeaweedFS, bucket: str) -> None:
    options = BackendOptions(
        part_size=8 * MiB, workers=4, max_buffer_bytes=16 * MiB, retry=FAST_RETRY
    )
    backend = make_backend(seaweed, bucket, options=options)
    with backend.open_writer(KEY) as writer:
        sha, _ = pump(writer, dense(60 * MiB, seed=21))
        writer.commit()
    assert isinstance(writer, S3Writer)
    assert writer.peak_buffer_bytes == 16 * MiB  # two parts in flight, never more
    assert writer.parts_uploaded == 8
    assert backend.stat(KEY).sha256 == sha


def test_abort_leaves_no_incomplete_upload(seaweed: SeaweedFS, s3_backend: S3Backend) -> None:
    writer = s3_backend.open_writer(KEY)
    pump(writer, dense(30 * MiB, seed=22))
    assert len(list(s3_backend.incomplete_uploads())) == 1
    writer.abort()
    assert list(s3_backend.incomplete_uploads()) == []
    with pytest.raises(NotFound):
        s3_backend.stat(KEY)
    # An exception inside the with block aborts too.
    with pytest.raises(KeyError), s3_backend.open_writer(KEY) as failing:
        pump(failing, dense(20 * MiB, seed=23))
        raise KeyError("producer failed")
    assert list(s3_backend.incomplete_uploads()) == []
    raw = seaweed.client().list_multipart_uploads(Bucket=s3_backend.bucket)
    assert raw.get("Uploads", []) == []


def test_abort_incomplete_cleans_detached_uploads(s3_backend: S3Backend) -> None:
    for name in ("a.raw", "b.raw"):
        writer = s3_backend.open_writer(f"virtrigaud/ns/vm-1/{name}")
        pump(writer, dense(9 * MiB, seed=24))
        assert writer.detach() is not None
    assert s3_backend.abort_incomplete("virtrigaud/ns/", older_than=3600) == 0  # too young
    assert s3_backend.abort_incomplete("virtrigaud/other/") == 0
    assert s3_backend.abort_incomplete("virtrigaud/ns/") == 2
    assert list(s3_backend.incomplete_uploads()) == []


def test_wrong_secret_is_authentication_error_without_the_secret(
    seaweed: SeaweedFS, bucket: str
) -> None:
    wrong = "Wr0ngSecretValue-" + "x" * 20
    backend = make_backend(
        seaweed, bucket, credentials={**seaweed.credentials(), "secretKey": wrong}
    )
    for call in (
        lambda: backend.stat(KEY),
        lambda: backend.open_reader(KEY),
        lambda: list(backend.list("")),
        lambda: _write(backend, b"small"),
        lambda: _write(backend, b"".join(dense(9 * MiB, seed=25))),
    ):
        with pytest.raises(AuthenticationError) as caught:
            call()
        text = str(caught.value)
        assert "SignatureDoesNotMatch" in text and "secretKey" in text
        assert wrong not in text and seaweed.secret_key not in text


def test_unknown_access_key(seaweed: SeaweedFS, bucket: str) -> None:
    backend = make_backend(
        seaweed, bucket, credentials={**seaweed.credentials(), "accessKey": "NOSUCHKEY"}
    )
    with pytest.raises(AuthenticationError, match="InvalidAccessKeyId"):
        _write(backend, b"x")


def test_missing_bucket_is_not_found_naming_it(seaweed: SeaweedFS) -> None:
    backend = make_backend(seaweed, "no-such-bucket-here")
    for call in (
        lambda: backend.stat(KEY),
        lambda: _write(backend, b"small"),
        lambda: _write(backend, b"".join(dense(9 * MiB, seed=26))),
        lambda: list(backend.list("")),
    ):
        with pytest.raises(NotFound, match="no-such-bucket-here"):
            call()


def test_missing_key_is_not_found(s3_backend: S3Backend) -> None:
    with pytest.raises(NotFound, match=r"vda\.qcow2"):
        s3_backend.stat(KEY)


def test_broken_download_resumes_with_range(seaweed: SeaweedFS, s3_backend: S3Backend) -> None:
    with s3_backend.open_writer(KEY) as writer:
        sha, size = pump(writer, dense(24 * MiB, seed=27))
        writer.commit()
    with FaultProxy(seaweed.s3_port, cut_after=5 * MiB) as proxy:
        backend = make_backend(seaweed, s3_backend.bucket, endpoint=proxy.url)
        reader = backend.open_reader(KEY)
        assert isinstance(reader, S3Reader)
        assert drain(reader) == (sha, size)
        assert reader.verified
        assert proxy.cut_count == 1 and reader.resumes == 1
        # Every GET is ranged and pinned; the three 8 MiB ranges were asked for once
        # each, and the cut one again from where its bytes stopped.
        heads = b"".join(proxy.requests).lower()
        gets = len(re.findall(rb"^get /[^?\s]*\s", heads, re.MULTILINE))  # not ?tagging
        ranges = re.findall(rb"range: bytes=(\d+)-(\d+)", heads)
        assert gets == len(ranges) == reader.requests == 4
        assert heads.count(b"if-match:") == gets
        spans = sorted((int(a), int(b) + 1) for a, b in ranges)
        planned = [(0, 8 * MiB), (8 * MiB, 16 * MiB), (16 * MiB, 24 * MiB)]
        resumed = [span for span in spans if span not in planned]
        assert sorted(set(spans) - set(resumed)) == planned and len(resumed) == 1
        start, end = resumed[0]
        assert (start // (8 * MiB) + 1) * 8 * MiB == end  # the rest of one planned range
        assert 0 < start % (8 * MiB) <= 5 * MiB


def test_reader_is_pinned_to_the_object_it_stated(s3_backend: S3Backend) -> None:
    with s3_backend.open_writer(KEY) as writer:
        pump(writer, dense(12 * MiB, seed=28))
        writer.commit()
    reader = s3_backend.open_reader(KEY)
    with s3_backend.open_writer(KEY) as writer:  # replaced before the reader's first GET
        pump(writer, dense(13 * MiB, seed=29))
        writer.commit()
    with pytest.raises(Conflict, match="changed"):
        drain(reader)


def _write(backend: S3Backend, data: bytes) -> None:
    with backend.open_writer(KEY) as writer:
        pump(writer, prefix_of([data], len(data)))
        writer.commit()


def test_signer_takes_the_known_payload_digest() -> None:
    """The body digest the writer computed is what gets signed: botocore does not rehash."""
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from storage.s3 import _KnownPayloadSigV4Auth
    from storage.s3_multipart import _ViewBody

    auth = _KnownPayloadSigV4Auth(Credentials("AKID", "secret"), "s3", "us-east-1")
    body = memoryview(b"part bytes")
    marker = "ab" * 32  # not the body's digest: proves the given value is used as is
    known = AWSRequest(method="PUT", url="http://s3.test/b/k", data=_ViewBody(body, marker))
    auth.add_auth(known)
    assert known.headers["X-Amz-Content-SHA256"] == marker
    plain = AWSRequest(method="PUT", url="http://s3.test/b/k", data=_ViewBody(body))
    auth.add_auth(plain)
    assert plain.headers["X-Amz-Content-SHA256"] == hashlib.sha256(body).hexdigest()


def test_uploads_are_signed_with_their_body_digest_and_recycle_buffers(
    seaweed: SeaweedFS, bucket: str
) -> None:
    """Over plain HTTP every PUT is signed with the real SHA256 of the bytes it sends,
    and the writer reuses part buffers instead of allocating one per part."""
    options = BackendOptions(part_size=8 * MiB, workers=2, retry=FAST_RETRY)
    backend = make_backend(seaweed, bucket, options=options)
    sent: list[tuple[str, str, str]] = []
    buffers: list[object] = []  # kept alive, so distinct identities mean distinct buffers

    def observe(request: Any, event_name: str, **_: Any) -> None:
        body = request.body
        start = body.tell()
        data = body.read()
        body.seek(start)
        operation = event_name.rsplit(".", 1)[-1]
        signed = request.headers["X-Amz-Content-SHA256"]  # bytes once prepared
        signed = signed.decode() if isinstance(signed, bytes) else signed
        sent.append((operation, signed, hashlib.sha256(data).hexdigest()))
        view = getattr(body, "_view", None)
        if operation == "UploadPart" and view is not None:
            buffer = view.obj
            if all(buffer is not b for b in buffers):
                buffers.append(buffer)

    backend.client.meta.events.register("before-send.s3.UploadPart", observe)
    backend.client.meta.events.register("before-send.s3.PutObject", observe)
    with backend.open_writer(KEY) as writer:
        sha, size = pump(writer, dense(60 * MiB + 5, seed=25))
        writer.commit()
    with backend.open_writer("small.raw") as writer:
        writer.write(b"small object")
        writer.commit()
    parts = [s for s in sent if s[0] == "UploadPart"]
    assert len(parts) == 8 and [s[0] for s in sent].count("PutObject") == 1
    for operation, signed, actual in sent:
        assert signed == actual, operation
    assert len(buffers) <= options.workers + 1  # 8 parts, at most 3 buffers
    assert drain(backend.open_reader(KEY)) == (sha, size)
    backend.close()
