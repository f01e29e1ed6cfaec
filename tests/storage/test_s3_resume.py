"""Resumable S3 uploads: a restarted export continues instead of starting over."""

from __future__ import annotations

import json
from typing import Any

import pytest

from storage.base import ResumeState
from storage.s3 import S3Backend
from storage.s3_multipart import S3Writer
from tests.servers.seaweedfs import SeaweedFS
from tests.storage.conftest import LOOPBACK, OPTIONS
from tests.storage.streams import MiB, dense, digest, drain, prefix_of, pump
from virtrigaud.errors import ChecksumMismatch, NotFound

KEY = "virtrigaud/ns/vm-0000cafe/vda.qcow2"
SIZE = 100 * MiB + 777  # 13 parts of 8 MiB (the last one short)
PARTS = 13
SEED = 40


def fresh_backend(seaweed: SeaweedFS, bucket: str) -> S3Backend:
    """A new backend object, as a restarted provider process would create."""
    return S3Backend(
        bucket,
        "exports",
        endpoint=seaweed.endpoint,
        credentials=seaweed.credentials(),
        options=OPTIONS,
        allowed_hosts=LOOPBACK,
    )


def uploads_sent(backend: S3Backend) -> list[int]:
    sent: list[int] = []

    def hook(params: dict[str, Any], **_: Any) -> None:
        sent.append(int(params["PartNumber"]))

    backend.client.meta.events.register("provide-client-params.s3.UploadPart", hook)
    return sent


def interrupted_upload(backend: S3Backend, nbytes: int) -> ResumeState:
    """Write the first ``nbytes`` of the stream, then stop the writer without aborting."""
    writer = backend.open_writer(KEY)
    pump(writer, prefix_of(dense(SIZE, SEED), nbytes))
    state = writer.detach()
    assert state is not None
    # The state survives a round trip through JSON (it is persisted in task status).
    return ResumeState.from_dict(json.loads(json.dumps(state.to_dict())))


def finish(backend: S3Backend, state: ResumeState | None, seed: int = SEED) -> S3Writer:
    with backend.open_writer(KEY, resume=state) as writer:
        pump(writer, dense(SIZE, seed))  # the producer replays the stream from byte 0
        writer.commit()
    assert isinstance(writer, S3Writer)
    return writer


def assert_object_is_the_stream(backend: S3Backend) -> None:
    expected = digest(dense(SIZE, SEED))
    info = backend.stat(KEY)
    assert (info.sha256, info.size) == expected
    assert drain(backend.open_reader(KEY, expected_sha256=expected[0])) == expected
    assert list(backend.incomplete_uploads()) == []


def test_resume_with_saved_state_skips_uploaded_parts(seaweed: SeaweedFS, bucket: str) -> None:
    first = fresh_backend(seaweed, bucket)
    state = interrupted_upload(first, 5 * 8 * MiB + 3 * MiB)  # 5 full parts + a partial one
    assert [p.number for p in state.parts] == [1, 2, 3, 4, 5]
    assert all(p.sha256 and p.size == 8 * MiB for p in state.parts)
    assert state.committed_bytes == 40 * MiB
    with pytest.raises(NotFound):
        first.stat(KEY)  # nothing is visible while the upload is unfinished
    assert [u["UploadId"] for u in first.incomplete_uploads()] == [state.upload_id]

    second = fresh_backend(seaweed, bucket)
    sent = uploads_sent(second)
    writer = finish(second, state)
    assert sorted(sent) == list(range(6, PARTS + 1))  # parts 1-5 were not sent again
    assert writer.bytes_skipped == 40 * MiB
    assert writer.bytes_uploaded == SIZE - 40 * MiB
    assert_object_is_the_stream(second)


def test_resume_recovered_from_list_parts(seaweed: SeaweedFS, bucket: str) -> None:
    """The writer crashed before saving any state: ListParts + MD5 ETags recover it."""
    first = fresh_backend(seaweed, bucket)
    interrupted_upload(first, 7 * 8 * MiB + 1)

    second = fresh_backend(seaweed, bucket)
    state = second.recover_state(KEY)
    assert state is not None and [p.number for p in state.parts] == list(range(1, 8))
    assert all(p.sha256 is None for p in state.parts) and state.part_size == 8 * MiB
    sent = uploads_sent(second)
    writer = finish(second, state)
    assert sorted(sent) == list(range(8, PARTS + 1))
    assert writer.bytes_skipped == 7 * 8 * MiB
    assert_object_is_the_stream(second)


def test_resume_with_stale_state_uses_parts_finished_after_it(
    seaweed: SeaweedFS, bucket: str
) -> None:
    """State saved after 3 parts, crash after 6: parts 4-6 are verified by their ETags."""
    first = fresh_backend(seaweed, bucket)
    state = interrupted_upload(first, 6 * 8 * MiB)
    stale = ResumeState(state.key, state.upload_id, state.part_size, state.parts[:3])

    second = fresh_backend(seaweed, bucket)
    sent = uploads_sent(second)
    writer = finish(second, stale)
    assert sorted(sent) == list(range(7, PARTS + 1))
    assert writer.bytes_skipped == 6 * 8 * MiB
    assert_object_is_the_stream(second)


def test_resume_refuses_a_changed_source_and_aborts(seaweed: SeaweedFS, bucket: str) -> None:
    first = fresh_backend(seaweed, bucket)
    state = interrupted_upload(first, 3 * 8 * MiB)
    second = fresh_backend(seaweed, bucket)
    with pytest.raises(ChecksumMismatch, match="part 1 differs"):
        finish(second, state, seed=SEED + 1)
    assert list(second.incomplete_uploads()) == []  # a permanent error aborts the upload
    with pytest.raises(NotFound):
        second.stat(KEY)


def test_resume_refuses_a_shorter_source(seaweed: SeaweedFS, bucket: str) -> None:
    first = fresh_backend(seaweed, bucket)
    state = interrupted_upload(first, 3 * 8 * MiB)
    with (
        pytest.raises(ChecksumMismatch, match="already uploaded"),
        first.open_writer(KEY, resume=state) as writer,
    ):
        pump(writer, prefix_of(dense(SIZE, SEED), 2 * 8 * MiB + 5))
        writer.commit()
    assert list(first.incomplete_uploads()) == []


def test_resume_of_a_vanished_upload_starts_over(seaweed: SeaweedFS, bucket: str) -> None:
    first = fresh_backend(seaweed, bucket)
    state = interrupted_upload(first, 4 * 8 * MiB)
    assert first.abort_incomplete() == 1  # e.g. a bucket lifecycle rule removed it
    second = fresh_backend(seaweed, bucket)
    sent = uploads_sent(second)
    writer = finish(second, state)
    assert sorted(sent) == list(range(1, PARTS + 1))
    assert writer.bytes_skipped == 0
    assert_object_is_the_stream(second)


def test_nothing_to_recover(seaweed: SeaweedFS, bucket: str) -> None:
    backend = fresh_backend(seaweed, bucket)
    assert backend.recover_state(KEY) is None
    writer = backend.open_writer(KEY)
    pump(writer, prefix_of(dense(SIZE, SEED), MiB))  # less than one part: nothing uploaded
    assert writer.detach() is None
    assert list(backend.incomplete_uploads()) == []
