"""Behaviour every backend shares, run against S3 (SeaweedFS), HTTP (nginx) and NFS."""

from __future__ import annotations

import hashlib

import pytest

from storage.base import Backend
from storage.http import HTTPBackend
from storage.nfs import NFSBackend
from storage.s3 import S3Backend
from tests.storage.conftest import Tamper
from tests.storage.streams import MiB, dense, drain, pump
from tests.storage.test_keys import BAD_KEYS
from virtrigaud.errors import ChecksumMismatch, FailedPrecondition, InvalidArgument, NotFound

KEY = "virtrigaud/default/vm-1234abcd/vda.qcow2"


def put(backend: Backend, key: str, data: bytes) -> str:
    with backend.open_writer(key) as writer:
        writer.write(data)
        info = writer.commit()
    assert info.sha256 is not None
    return info.sha256


def test_small_object_round_trip_with_stored_digest(backend: Backend) -> None:
    data = b"hello, intermediate storage\n" * 1000
    sha = put(backend, KEY, data)
    assert sha == hashlib.sha256(data).hexdigest()
    info = backend.stat(KEY)
    assert (info.size, info.sha256) == (len(data), sha)
    with backend.open_reader(KEY) as reader:
        assert reader.read_all() == data
        assert reader.verified and reader.sha256 == sha


def test_empty_object(backend: Backend) -> None:
    sha = put(backend, "empty.raw", b"")
    assert sha == hashlib.sha256(b"").hexdigest()
    assert backend.stat("empty.raw").size == 0
    reader = backend.open_reader("empty.raw", expected_sha256=sha, expected_size=0)
    assert reader.read_all() == b""
    assert reader.verified


def test_reader_from_offset(backend: Backend) -> None:
    data = b"".join(dense(3 * MiB + 17, seed=5))
    put(backend, KEY, data)
    offset = MiB + 12345
    with backend.open_reader(KEY, offset=offset) as reader:
        assert reader.read_all() == data[offset:]
        assert reader.sha256 is None  # the prefix was not read: only the size is checked
    assert backend.open_reader(KEY, offset=len(data)).read_all() == b""
    with pytest.raises(InvalidArgument):
        backend.open_reader(KEY, offset=len(data) + 1)


def test_writes_copy_caller_buffers(backend: Backend) -> None:
    """The caller may reuse its buffer after write() returns."""
    buffer = bytearray(256 * 1024)
    expected = hashlib.sha256()
    with backend.open_writer(KEY) as writer:
        for i in range(12):
            buffer[:] = bytes([i]) * len(buffer)
            expected.update(buffer)
            writer.write(memoryview(buffer))
        writer.commit()
    assert drain(backend.open_reader(KEY)) == (expected.hexdigest(), 12 * len(buffer))


def test_overwrite_replaces_bytes_and_digest(backend: Backend) -> None:
    put(backend, KEY, b"first version" * 100)
    second = b"second" * 50
    sha = put(backend, KEY, second)
    assert backend.stat(KEY).sha256 == sha
    assert backend.open_reader(KEY).read_all() == second


def test_nothing_visible_before_commit_or_after_failure(backend: Backend) -> None:
    writer = backend.open_writer(KEY)
    writer.write(b"x" * (2 * MiB))
    with pytest.raises(NotFound):
        backend.stat(KEY)
    writer.abort()
    with pytest.raises(NotFound):
        backend.stat(KEY)
    with pytest.raises(RuntimeError, match="boom"), backend.open_writer(KEY) as failing:
        failing.write(b"y" * MiB)
        raise RuntimeError("boom")
    with pytest.raises(NotFound):
        backend.stat(KEY)
    assert list(backend.list("")) == []
    with pytest.raises(FailedPrecondition):
        failing.write(b"late")


def test_writer_without_commit_aborts_on_exit(backend: Backend) -> None:
    with backend.open_writer(KEY) as writer:
        writer.write(b"never committed")
    with pytest.raises(NotFound):
        backend.stat(KEY)


def test_list_stat_delete(backend: Backend) -> None:
    put(backend, "virtrigaud/ns/a-11111111/vda.qcow2", b"a" * 10)
    put(backend, "virtrigaud/ns/a-11111111/vdb.qcow2", b"b" * 20)
    put(backend, "virtrigaud/other/c-22222222/vda.raw", b"c" * 30)
    listed = {(o.key, o.size) for o in backend.list("virtrigaud/ns/")}
    assert listed == {
        ("virtrigaud/ns/a-11111111/vda.qcow2", 10),
        ("virtrigaud/ns/a-11111111/vdb.qcow2", 20),
    }
    assert {o.key for o in backend.list("virtrigaud/ns/a-11111111/vd")} == {
        "virtrigaud/ns/a-11111111/vda.qcow2",
        "virtrigaud/ns/a-11111111/vdb.qcow2",
    }
    assert len(list(backend.list(""))) == 3
    backend.delete("virtrigaud/ns/a-11111111/vda.qcow2")
    backend.delete("virtrigaud/ns/a-11111111/vda.qcow2")  # idempotent
    backend.delete("never/existed.raw")
    with pytest.raises(NotFound):
        backend.stat("virtrigaud/ns/a-11111111/vda.qcow2")
    with pytest.raises(NotFound):
        backend.open_reader("virtrigaud/ns/a-11111111/vda.qcow2")
    assert {o.key for o in backend.list("virtrigaud/")} == {
        "virtrigaud/ns/a-11111111/vdb.qcow2",
        "virtrigaud/other/c-22222222/vda.raw",
    }


@pytest.mark.parametrize("key", BAD_KEYS)
def test_key_traversal_rejected_before_any_io(backend: Backend, key: str) -> None:
    for call in (
        lambda: backend.open_writer(key),
        lambda: backend.open_reader(key),
        lambda: backend.stat(key),
        lambda: backend.delete(key),
        lambda: backend.url(key),
    ):
        with pytest.raises(InvalidArgument):
            call()
    assert list(backend.list("")) == []


@pytest.mark.parametrize("prefix", ["../", "/etc/", "a/../..", "a//", "a\\b/"])
def test_list_prefix_traversal_rejected(backend: Backend, prefix: str) -> None:
    with pytest.raises(InvalidArgument):
        backend.list(prefix)


def test_percent_encoded_dots_stay_literal(backend: Backend) -> None:
    key = "a/%2e%2e/%2E%2E/x.raw"
    put(backend, key, b"literal")
    assert [o.key for o in backend.list("")] == [key]
    assert backend.open_reader(key).read_all() == b"literal"
    if isinstance(backend, HTTPBackend):
        assert backend.url(key).endswith("/a/%252e%252e/%252E%252E/x.raw")


def test_expected_digest_mismatch_fails_before_reading(backend: Backend) -> None:
    put(backend, KEY, b"payload")
    with pytest.raises(ChecksumMismatch, match="stored with"):
        backend.open_reader(KEY, expected_sha256="0" * 64)
    with pytest.raises(InvalidArgument):
        backend.open_reader(KEY, expected_sha256="not-hex")


def test_corrupted_object_detected(backend: Backend, tamper: Tamper) -> None:
    data = b"".join(dense(4 * MiB, seed=9))
    sha = put(backend, KEY, data)
    tamper(KEY, lambda b: b[:MiB] + bytes([b[MiB] ^ 0xFF]) + b[MiB + 1 :])
    with pytest.raises(ChecksumMismatch, match="sha256"):  # against the stored digest
        drain(backend.open_reader(KEY))
    with pytest.raises(ChecksumMismatch):  # against the caller's digest and size
        drain(backend.open_reader(KEY, expected_sha256=sha, expected_size=len(data)))


def test_truncated_object_detected(backend: Backend, tamper: Tamper) -> None:
    data = b"".join(dense(4 * MiB, seed=10))
    sha = put(backend, KEY, data)
    tamper(KEY, lambda b: b[: -MiB // 2])
    with pytest.raises(ChecksumMismatch):
        drain(backend.open_reader(KEY))
    with pytest.raises(ChecksumMismatch, match="truncated"):
        drain(backend.open_reader(KEY, expected_sha256=sha, expected_size=len(data)))
    with pytest.raises(ChecksumMismatch, match="truncated"):  # from an offset: size check
        drain(backend.open_reader(KEY, offset=MiB, expected_size=len(data)))


def test_extended_object_detected(backend: Backend, tamper: Tamper) -> None:
    data = b"".join(dense(MiB, seed=11))
    put(backend, KEY, data)
    tamper(KEY, lambda b: b + b"extra")
    with pytest.raises(ChecksumMismatch, match="longer"):
        drain(backend.open_reader(KEY, expected_size=len(data)))


def test_writer_reports_streamed_digest(backend: Backend) -> None:
    with backend.open_writer(KEY) as writer:
        sha, size = pump(writer, dense(5 * MiB + 3, seed=12))
        assert writer.bytes_written == size
        info = writer.commit()
    assert (info.sha256, info.size) == (sha, size)
    scheme = {S3Backend: "s3://", HTTPBackend: "http://", NFSBackend: "nfs://"}[type(backend)]
    assert backend.url(KEY).startswith(scheme) and backend.url(KEY).endswith("/" + KEY)
