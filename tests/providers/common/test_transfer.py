"""Disk images through real intermediate storage (SeaweedFS S3, nginx WebDAV, NFS dir).

The pipeline and the backends are tested on their own elsewhere; these tests prove
them together through ``providers.common.transfer``, the code every provider calls:
what arrives on the other side is checked with ``qemu-img compare``, the transport
SHA256 of the stored object and the content digest.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from providers.common import digest, qemu_img, transfer
from providers.runtime.tasks import TaskContext, TaskRegistry, TaskResult
from tests.servers.nginx import NginxDav
from tests.servers.seaweedfs import SeaweedFS
from virtrigaud import errors
from virtrigaud.formats import FORMAT_VALUES
from virtrigaud.provider.v1 import provider_pb2 as pb

from .helpers import BY_NAME, MIB, VARIANT_NAMES, ImageSet, pattern, write_raw

LOOPBACK = ("127.0.0.1",)
Location = Callable[[str], pb.StorageLocation]


def run(work: Callable[[TaskContext], TaskResult]) -> pb.Task:
    """Run ``work`` as a real task and return the finished task."""
    registry = TaskRegistry(max_workers=1)
    task = registry.submit(pb.TASK_KIND_EXPORT_DISK, secrets.token_hex(4), b"", work)
    registry.shutdown(grace=600)
    return registry.get(task.id)


def ok(task: pb.Task) -> pb.Task:
    assert task.state == pb.TASK_STATE_SUCCEEDED, task.error
    return task


@pytest.fixture(scope="module")
def s3_bucket(seaweed: SeaweedFS) -> str:
    return seaweed.create_bucket(f"transfer-{secrets.token_hex(3)}")


@pytest.fixture(params=["s3", "http", "nfs"])
def location(
    request: pytest.FixtureRequest, tmp_path: Path, seaweed: SeaweedFS, nginx: NginxDav
) -> Location:
    """key -> StorageLocation on one of the three real backends."""
    kind = request.param
    if kind == "s3":
        bucket = request.getfixturevalue("s3_bucket")

        def s3(key: str) -> pb.StorageLocation:
            return pb.StorageLocation(
                backend=pb.STORAGE_BACKEND_S3,
                url=f"s3://{bucket}/migrations/{key}",
                credentials=seaweed.credentials(),
                options={"base_url": f"s3://{bucket}/migrations", "endpoint": seaweed.endpoint},
            )

        return s3
    if kind == "http":
        base = f"{nginx.bearer_url.rstrip('/')}/{secrets.token_hex(3)}"

        def http(key: str) -> pb.StorageLocation:
            return pb.StorageLocation(
                backend=pb.STORAGE_BACKEND_HTTP,
                url=f"{base}/{key}",
                credentials={"token": nginx.token},
                options={"base_url": base},
            )

        return http
    root = tmp_path / "nfs"
    root.mkdir()

    def nfs(key: str) -> pb.StorageLocation:
        return pb.StorageLocation(
            backend=pb.STORAGE_BACKEND_NFS,
            url=f"nfs://{root}/{key}",
            options={"base_url": f"nfs://{root}"},
        )

    return nfs


def _export(
    src: Path, src_format: str, loc: pb.StorageLocation, target: pb.DiskFormat, scratch: Path
) -> pb.Task:
    request = pb.ExportDiskRequest(
        operation_id="x", vm_id="vm", disk_id="d", destination=loc, target_format=target
    )
    return run(
        lambda ctx: transfer.export_to_storage(
            src, src_format, request, ctx, allowed_hosts=LOOPBACK, scratch_dir=scratch
        )
    )


def _import(
    loc: pb.StorageLocation,
    exported: pb.ExportResult,
    dest: Path,
    target: str,
    scratch: Path,
    **overrides: object,
) -> pb.Task:
    request = pb.ImportDiskRequest(
        operation_id="y",
        source=loc,
        expected_sha256=exported.sha256,
        expected_content_sha256=exported.content_sha256,
        source_format=exported.format,
        target_volume_name=dest.name,
    )
    for name, value in overrides.items():
        setattr(request, name, value)

    def work(ctx: TaskContext) -> pb.ImportResult:
        out = transfer.import_from_storage(
            request, dest, target, ctx, allowed_hosts=LOOPBACK, scratch_dir=scratch
        )
        return pb.ImportResult(
            path=out.path,
            sha256=out.sha256,
            content_sha256=out.content_sha256,
            size_bytes=out.virtual_size,
        )

    return run(work)


def _stored_bytes(loc: pb.StorageLocation) -> bytes:
    backend, key = transfer.open_location(loc, LOOPBACK)
    with backend:
        return b"".join(backend.open_reader(key))


def _big_sparse_qcow2(tmp: Path) -> tuple[Path, Path]:
    """320 MiB virtual, ~72 MiB of data scattered, as qcow2 (and its raw original)."""
    raw = tmp / "big.raw"
    writes = tuple((i * 9 * MIB, pattern(i, 2 * MIB, compressible=i % 2 == 0)) for i in range(35))
    write_raw(raw, 320 * MIB, (*writes, (320 * MIB - 4, b"TAIL")))
    qcow = tmp / "big.qcow2"
    qemu_img.convert(raw, qcow, src_format="raw", dst_format="qcow2")
    return raw, qcow


def _dense_raw(tmp: Path, size: int = 200 * MIB) -> Path:
    path = tmp / "dense.raw"
    with path.open("wb") as f:
        for i in range(size // MIB):
            f.write(pattern(1000 + i, MIB, compressible=False))
    return path


def test_sparse_qcow2_to_vmdk_and_back_to_raw(location: Location, tmp_path: Path) -> None:
    raw, qcow = _big_sparse_qcow2(tmp_path)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    loc = location("disk-0.vmdk")
    task = ok(_export(qcow, "qcow2", loc, pb.DISK_FORMAT_VMDK, scratch))
    result = task.export_result
    stored = _stored_bytes(loc)
    assert hashlib.sha256(stored).hexdigest() == result.sha256
    assert len(stored) == result.size_bytes
    assert result.size_bytes < 110 * MIB  # sparse: only the data travels (72 MiB + metadata)
    assert result.content_sha256 == digest.content_digest(raw, "raw")
    assert task.bytes_done > 0 and task.percent == 100.0
    dest = tmp_path / "out" / "disk-0.raw"
    dest.parent.mkdir()
    imported = ok(_import(loc, result, dest, "raw", scratch)).import_result
    assert qemu_img.compare(raw, dest, a_format="raw", b_format="raw")
    assert imported.content_sha256 == result.content_sha256
    assert list(scratch.iterdir()) == []


def test_dense_raw_to_qcow2_and_back(location: Location, tmp_path: Path) -> None:
    raw = _dense_raw(tmp_path)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    loc = location("dense.qcow2")
    result = ok(_export(raw, "raw", loc, pb.DISK_FORMAT_QCOW2, scratch)).export_result
    assert result.size_bytes >= 200 * MIB  # incompressible data all travels
    assert hashlib.sha256(_stored_bytes(loc)).hexdigest() == result.sha256
    dest = tmp_path / "dense-in.qcow2"
    ok(_import(loc, result, dest, "qcow2", scratch))
    assert qemu_img.compare(raw, dest, a_format="raw", b_format="qcow2")


@pytest.mark.parametrize("obj", ["raw", "qcow2", "vmdk", "vdi", "vpc", "vhdx"])
@pytest.mark.parametrize("source", VARIANT_NAMES)
def test_every_format_pair_through_s3(  # noqa: PLR0917 - pytest fixtures
    images: ImageSet, source: str, obj: str, seaweed: SeaweedFS, s3_bucket: str, tmp_path: Path
) -> None:
    variant = BY_NAME[source]
    loc = pb.StorageLocation(
        backend=pb.STORAGE_BACKEND_S3,
        url=f"s3://{s3_bucket}/pairs/{source}-to-{obj}.{obj}",
        credentials=seaweed.credentials(),
        options={"endpoint": seaweed.endpoint},
    )
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    result = ok(
        _export(images.path(source), variant.format, loc, FORMAT_VALUES[obj], scratch)
    ).export_result
    assert result.content_sha256 == images.reference
    dest = tmp_path / f"back.{variant.format}"
    imported = ok(_import(loc, result, dest, variant.format, scratch)).import_result
    assert imported.content_sha256 == images.reference
    assert qemu_img.compare(images.base, dest, a_format="raw", b_format=variant.format)


def test_corrupted_object_is_refused_and_leaves_nothing(
    seaweed: SeaweedFS, s3_bucket: str, images: ImageSet, tmp_path: Path
) -> None:
    loc = pb.StorageLocation(
        backend=pb.STORAGE_BACKEND_S3,
        url=f"s3://{s3_bucket}/corrupt/disk.qcow2",
        credentials=seaweed.credentials(),
        options={"endpoint": seaweed.endpoint},
    )
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    result = ok(
        _export(images.path("qcow2"), "qcow2", loc, pb.DISK_FORMAT_QCOW2, scratch)
    ).export_result
    data = bytearray(_stored_bytes(loc))
    data[len(data) // 2] ^= 0xFF  # flip one byte behind the backend's back
    seaweed.client().put_object(Bucket=s3_bucket, Key="corrupt/disk.qcow2", Body=bytes(data))
    dest = tmp_path / "out" / "disk.qcow2"
    dest.parent.mkdir()
    failed = _import(loc, result, dest, "qcow2", scratch)
    assert failed.state == pb.TASK_STATE_FAILED
    assert failed.error.code == pb.ERROR_CODE_CHECKSUM_MISMATCH
    assert list(dest.parent.iterdir()) == []
    assert list(scratch.iterdir()) == []


def test_loopback_storage_is_refused_without_the_allow_list(seaweed: SeaweedFS) -> None:
    loc = pb.StorageLocation(
        backend=pb.STORAGE_BACKEND_S3,
        url="s3://bucket-x/k.raw",
        credentials=seaweed.credentials(),
        options={"endpoint": seaweed.endpoint},
    )
    with pytest.raises(errors.PermissionDenied, match=r"127\.0\.0\.1"):
        transfer.open_location(loc, allowed_hosts=())


@pytest.mark.parametrize(
    "url",
    [
        "nfs:///srv/m/../etc/passwd",
        "nfs:///srv/m/a/../../x",
        "nfs:///other/place.raw",
    ],
)
def test_object_urls_cannot_leave_the_storage_root(url: str) -> None:
    loc = pb.StorageLocation(
        backend=pb.STORAGE_BACKEND_NFS, url=url, options={"base_url": "nfs:///srv/m"}
    )
    with pytest.raises(errors.InvalidArgument):
        transfer.open_location(loc)


def test_import_without_any_digest_is_refused(nginx: NginxDav, tmp_path: Path) -> None:
    base = f"{nginx.open_url.rstrip('/')}/{secrets.token_hex(3)}"
    # An object put there by someone else: no sidecar digest, and none given.
    httpx.put(f"{base}/foreign.raw", content=b"\0" * 4096, timeout=10).raise_for_status()
    request = pb.ImportDiskRequest(
        operation_id="z",
        target_volume_name="foreign.raw",
        source=pb.StorageLocation(backend=pb.STORAGE_BACKEND_HTTP, url=f"{base}/foreign.raw"),
    )

    def work(ctx: TaskContext) -> None:
        transfer.import_from_storage(
            request, tmp_path / "foreign.raw", "raw", ctx, allowed_hosts=LOOPBACK
        )

    task = run(work)
    assert task.state == pb.TASK_STATE_FAILED
    assert task.error.code == pb.ERROR_CODE_FAILED_PRECONDITION
    assert "unverified" in task.error.message
    assert not (tmp_path / "foreign.raw").exists()
