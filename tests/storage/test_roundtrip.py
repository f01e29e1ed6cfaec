"""300 MiB dense and sparse streams through every backend, verified by SHA256."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from storage.base import Backend
from storage.s3 import S3Backend
from storage.s3_multipart import S3Writer
from tests.storage.streams import MiB, dense, drain, pump, sparse

SIZE = 300 * MiB + 12_345  # not a multiple of the part or chunk size
STREAMS: dict[str, Callable[[int], Iterator[bytes]]] = {
    "dense": lambda size: dense(size, seed=300),
    "sparse": lambda size: sparse(size, seed=301),
}


@pytest.mark.parametrize("kind", sorted(STREAMS))
def test_large_round_trip(backend: Backend, kind: str) -> None:
    key = f"virtrigaud/big/vm-0badcafe/{kind}.raw"
    with backend.open_writer(key) as writer:
        sent_sha, sent_size = pump(writer, STREAMS[kind](SIZE))
        info = writer.commit()
    assert (info.sha256, info.size) == (sent_sha, SIZE) == (info.sha256, sent_size)

    stored = backend.stat(key)
    assert (stored.size, stored.sha256) == (SIZE, sent_sha)

    with backend.open_reader(key, expected_sha256=sent_sha, expected_size=SIZE) as reader:
        assert drain(reader) == (sent_sha, SIZE)
        assert reader.verified and reader.sha256 == sent_sha

    if isinstance(backend, S3Backend):
        assert isinstance(writer, S3Writer)
        parts = SIZE // backend.options.part_size + 1
        assert stored.etag is not None and stored.etag.strip('"').endswith(f"-{parts}")
        assert writer.parts_uploaded == parts and writer.bytes_uploaded == SIZE
        # Bounded memory: never more than workers + 1 part buffers alive.
        bound = (backend.options.workers + 1) * backend.options.part_size
        assert 0 < writer.peak_buffer_bytes <= bound
        assert list(backend.incomplete_uploads()) == []
