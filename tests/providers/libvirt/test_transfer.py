"""ExportDisk / ImportDisk on real libvirtd + QEMU, through SeaweedFS (S3) and NFS.

The round trip is the issue's: a running two-disk VM is snapshotted, both disks are
exported while the guest keeps writing, imported into a second pool, and a VM built
from the imported volumes is started; what arrived is compared with the snapshot's
files by ``qemu-img compare`` (independent of the code under test) and by the content
digest. The other tests take each error path and check what is left behind: objects,
volumes (final and temporary) and scratch files.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from manager.providerclient import ProviderClient, RetryPolicy, raise_for_task
from providers.common import digest
from providers.common.progress import StagedContext
from providers.common.scratch import parse_size
from providers.libvirt import domxml, imports
from providers.libvirt.client import LibvirtClient
from providers.libvirt.driver import LibvirtDriver, create
from providers.libvirt.exports import ScratchSettings
from providers.runtime import server as runtime_server
from providers.runtime.driver import ProviderConfig
from providers.runtime.tasks import TaskContext, TaskRegistry, TaskResult
from tests.providers.libvirt.helpers import (
    Lab,
    MiB,
    SetupDisk,
    SetupNic,
    domain_xml,
    failure,
    finish,
    guest_write,
    has_pattern,
    image_info,
    op,
    write_pattern,
)
from tests.servers.libvirtd import LibvirtEnv
from tests.servers.seaweedfs import SeaweedFS
from virtrigaud import errors
from virtrigaud.provider.v1 import provider_pb2 as pb

LOOPBACK = ("127.0.0.1",)
QCOW2, RAW, VMDK = pb.DISK_FORMAT_QCOW2, pb.DISK_FORMAT_RAW, pb.DISK_FORMAT_VMDK


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bucket(seaweed: SeaweedFS) -> str:
    return seaweed.create_bucket(f"libvirt-{secrets.token_hex(3)}")


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    path = tmp_path / "scratch"
    path.mkdir()
    return path


@pytest.fixture
def nfs_root(tmp_path: Path) -> Path:
    path = tmp_path / "nfs"
    path.mkdir()
    return path


@contextlib.contextmanager
def serve(driver: LibvirtDriver) -> Iterator[ProviderClient]:
    running = runtime_server.start(driver, "127.0.0.1:0", max_tasks=2)
    client = ProviderClient(f"127.0.0.1:{running.port}", timeout=30, retry=RetryPolicy(attempts=1))
    try:
        yield client
    finally:
        client.close()
        running.stop(grace=30)
        driver.close()


@pytest.fixture
def xprovider(env: LibvirtEnv, scratch: Path) -> Iterator[ProviderClient]:
    """A provider with a scratch dir of its own and loopback storage allowed."""
    driver = LibvirtDriver(
        LibvirtClient(env.uri),
        default_pool=env.pool,
        domain_type="qemu",
        scratch=ScratchSettings(str(scratch)),
        allowed_storage_hosts=LOOPBACK,
    )
    with serve(driver) as client:
        yield client


def s3_location(seaweed: SeaweedFS, bucket: str, key: str) -> pb.StorageLocation:
    return pb.StorageLocation(
        backend=pb.STORAGE_BACKEND_S3,
        url=f"s3://{bucket}/{key}",
        credentials=seaweed.credentials(),
        options={"endpoint": seaweed.endpoint},
    )


def nfs_location(root: Path, key: str) -> pb.StorageLocation:
    return pb.StorageLocation(
        backend=pb.STORAGE_BACKEND_NFS,
        url=f"nfs://{root}/{key}",
        options={"base_url": f"nfs://{root}"},
    )


# -- helpers -----------------------------------------------------------------------------


def export(
    provider: ProviderClient,
    vm_id: str,
    disk_id: str,
    location: pb.StorageLocation,
    fmt: pb.DiskFormat = pb.DISK_FORMAT_UNSPECIFIED,
    *,
    snapshot_id: str = "",
) -> pb.Task:
    request = pb.ExportDiskRequest(
        operation_id=op("export"),
        vm_id=vm_id,
        disk_id=disk_id,
        snapshot_id=snapshot_id,
        destination=location,
        target_format=fmt,
    )
    return finish(provider, provider.export_disk(request))


def import_request(
    location: pb.StorageLocation,
    exported: pb.ExportResult,
    pool: str,
    name: str,
    fmt: pb.DiskFormat = pb.DISK_FORMAT_UNSPECIFIED,
) -> pb.ImportDiskRequest:
    source = pb.StorageLocation()
    source.CopyFrom(location)
    source.url = exported.url
    return pb.ImportDiskRequest(
        operation_id=op("import"),
        source=source,
        expected_sha256=exported.sha256,
        expected_content_sha256=exported.content_sha256,
        source_format=exported.format,
        target_format=fmt,
        storage_hint=pool,
        target_volume_name=name,
    )


def same_disk(a: str, a_fmt: str, b: str, b_fmt: str) -> bool:
    """``qemu-img compare`` (shared locks: either image may be in use by a VM)."""
    done = subprocess.run(
        ["qemu-img", "compare", "-U", "-f", a_fmt, "-F", b_fmt, a, b],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode in (0, 1), done.stderr
    return done.returncode == 0


def export_error(provider: ProviderClient, request: pb.ExportDiskRequest) -> errors.VirtrigaudError:
    return failure(provider, lambda: provider.export_disk(request))


def s3_bytes(seaweed: SeaweedFS, bucket: str, url: str) -> bytes:
    key = url.removeprefix(f"s3://{bucket}/")
    return bytes(seaweed.client().get_object(Bucket=bucket, Key=key)["Body"].read())


def nfs_bytes(url: str) -> bytes:
    return Path(url.removeprefix("nfs://")).read_bytes()


def volume_names(lv: Lab, pool: str) -> set[str]:
    return lv.pool_volume_names(pool)


def track_volume(lv: Lab, pool: str, name: str) -> None:
    lv.track_volume(str(lv.pool(pool).storageVolLookupByName(name).path()))


def two_disk_vm(env: LibvirtEnv, lv: Lab, label: str) -> tuple[Any, str, str]:
    """A VM with a qcow2 and a raw disk holding known data, a CD-ROM and a NIC."""
    a = lv.volume(env.name(f"{label}-a.qcow2"), 64 * MiB, "qcow2")
    b = lv.volume(env.name(f"{label}-b.img"), 48 * MiB, "raw")
    write_pattern(a, "qcow2", 0xA1, 0, 2 * MiB)
    write_pattern(a, "qcow2", 0xA2, 40 * MiB + 4096, 1 * MiB)
    write_pattern(a, "qcow2", 0xA3, 64 * MiB - 64 * 1024, 64 * 1024)
    write_pattern(b, "raw", 0xB1, 1 * MiB, 2 * MiB)
    write_pattern(b, "raw", 0xB2, 47 * MiB, 512 * 1024)
    dom = lv.define(
        domain_xml(
            env.name(label),
            [
                SetupDisk(a, "qcow2", "vda"),
                SetupDisk(b, "raw", "vdb"),
                SetupDisk("", "raw", "sda", bus="sata", device="cdrom"),
            ],
            [SetupNic("network", env.network, "52:54:00:30:00:01")],
        )
    )
    return dom, a, b


def small_vm(env: LibvirtEnv, lv: Lab, label: str) -> tuple[str, str]:
    """A stopped VM with one small qcow2 disk holding data: (vm id, disk path)."""
    path = lv.volume(env.name(f"{label}.qcow2"), 16 * MiB, "qcow2")
    write_pattern(path, "qcow2", 0x6E, 2 * MiB, 3 * MiB)
    dom = lv.define(domain_xml(env.name(label), [SetupDisk(path, "qcow2", "vda")]))
    return str(dom.UUIDString()), path


def snapshot(provider: ProviderClient, vm_id: str) -> str:
    task = finish(
        provider,
        provider.create_snapshot(
            pb.CreateSnapshotRequest(operation_id=op("snap"), vm_id=vm_id, name="migration")
        ),
    )
    return task.snapshot_result.snapshot_id


# -- the round trip ----------------------------------------------------------------------


def test_running_vm_round_trip_through_s3_and_nfs_into_a_second_pool(  # noqa: PLR0917 - fixtures
    env: LibvirtEnv,
    lv: Lab,
    xprovider: ProviderClient,
    seaweed: SeaweedFS,
    bucket: str,
    nfs_root: Path,
    scratch: Path,
) -> None:
    dom, a, b = two_disk_vm(env, lv, "trip")
    vm_id = str(dom.UUIDString())
    original_xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    dom.create()

    # A running VM's current disk is changing: only a snapshot can be exported.
    busy = failure(xprovider, lambda: xprovider.export_disk(_request(vm_id, "vda", nfs_root)))
    assert isinstance(busy, errors.FailedPrecondition)
    cdrom = failure(xprovider, lambda: xprovider.export_disk(_request(vm_id, "sda", nfs_root)))
    assert isinstance(cdrom, errors.InvalidArgument)

    snap = snapshot(xprovider, vm_id)
    sources = {disk: frozen_source(env, vm_id, snap, disk) for disk in ("vda", "vdb")}
    assert sources == {"vda": a, "vdb": b}
    fmts = {"vda": "qcow2", "vdb": "raw"}
    reference = {d: digest.content_digest(p, fmts[d], force_share=True) for d, p in sources.items()}
    # The guest writes on after the snapshot; none of it may reach the exports.
    guest_write(dom, "vda", 0xEE, 0, 1 * MiB)
    guest_write(dom, "vdb", 0xEF, 1 * MiB, 1 * MiB)

    plan = [  # (disk, where, object format)
        ("vda", "s3", QCOW2),
        ("vdb", "s3", VMDK),
        ("vda", "nfs", VMDK),
        ("vdb", "nfs", RAW),
    ]
    exported: dict[tuple[str, str], tuple[pb.StorageLocation, pb.ExportResult]] = {}
    for disk, where, fmt in plan:
        key = f"trip-{secrets.token_hex(3)}/{disk}.{pb.DiskFormat.Name(fmt)[12:].lower()}"
        location = (
            s3_location(seaweed, bucket, key) if where == "s3" else nfs_location(nfs_root, key)
        )
        task = export(xprovider, vm_id, disk, location, fmt, snapshot_id=snap)
        result = task.export_result
        stored = s3_bytes(seaweed, bucket, result.url) if where == "s3" else nfs_bytes(result.url)
        assert (result.format, len(stored)) == (fmt, result.size_bytes)
        assert hashlib.sha256(stored).hexdigest() == result.sha256
        assert result.content_sha256 == reference[disk]
        assert result.virtual_size_bytes == (64 if disk == "vda" else 48) * MiB
        assert task.bytes_done >= 2 * MiB  # the data travelled and was counted
        exported[(disk, where)] = (location, result)
    assert dom.isActive()  # the guest kept running through all exports
    assert list(scratch.iterdir()) == []

    imported: dict[tuple[str, str], pb.ImportResult] = {}
    targets = {  # (disk, where) -> volume format in the second pool
        ("vda", "s3"): pb.DISK_FORMAT_UNSPECIFIED,  # the pool's native qcow2
        ("vdb", "s3"): RAW,
        ("vda", "nfs"): RAW,
        ("vdb", "nfs"): QCOW2,
    }
    for (disk, where), fmt in targets.items():
        location, result = exported[(disk, where)]
        name = env.name(f"trip-{disk}-{where}")
        task = finish(
            xprovider,
            xprovider.import_disk(import_request(location, result, env.pool2, name, fmt)),
        )
        track_volume(lv, env.pool2, name)
        got = task.import_result
        want_fmt = QCOW2 if fmt == pb.DISK_FORMAT_UNSPECIFIED else fmt
        assert (got.disk_id, got.format) == (f"{env.pool2}/{name}", want_fmt)
        assert got.path == str(env.pool2_path / name)
        assert got.size_bytes == result.virtual_size_bytes
        assert (got.sha256, got.content_sha256) == (result.sha256, reference[disk])
        vol_fmt = "qcow2" if want_fmt == QCOW2 else "raw"
        assert same_disk(sources[disk], fmts[disk], got.path, vol_fmt)
        assert digest.content_digest(got.path, vol_fmt) == reference[disk]
        imported[(disk, where)] = got
    assert list(scratch.iterdir()) == []
    assert not any(n.startswith("vr-import-") for n in volume_names(lv, env.pool2))

    # A VM built from the imported volumes starts and sees the snapshot's data.
    name = env.name("trip-copy")
    lv.track_domain(name)
    created = finish(
        xprovider,
        xprovider.create_vm(
            pb.CreateVMRequest(
                operation_id=op("create"),
                name=name,
                cpu=1,
                memory_mib=64,
                storage_hint=env.pool2,
                power_on=True,
                disks=[
                    pb.DiskSpec(
                        imported=pb.ImportedDisk(
                            disk_id=imported[(d, "s3")].disk_id,
                            path=imported[(d, "s3")].path,
                            format=imported[(d, "s3")].format,
                        )
                    )
                    for d in ("vda", "vdb")
                ],
                nics=[pb.NicSpec(network=env.network, mac="52:54:00:30:00:02")],
            )
        ),
    )
    copy = xprovider.describe_vm(created.create_vm_result.vm_id)
    assert copy.power_state == pb.POWER_STATE_ON
    assert [d.path for d in copy.disks] == [imported[(d, "s3")].path for d in ("vda", "vdb")]
    assert [(n.network, n.mac) for n in copy.nics] == [(env.network, "52:54:00:30:00:02")]
    for disk in ("vda", "vdb"):
        vol = imported[(disk, "s3")]
        vol_fmt = "qcow2" if vol.format == QCOW2 else "raw"
        assert same_disk(sources[disk], fmts[disk], vol.path, vol_fmt)
    assert has_pattern(imported[("vda", "nfs")].path, "raw", 0xA2, 40 * MiB + 4096, MiB)

    # Deleting the snapshot merges the guest's writes back: the source is as it was.
    finish(
        xprovider,
        xprovider.delete_snapshot(
            pb.DeleteSnapshotRequest(operation_id=op("unsnap"), vm_id=vm_id, snapshot_id=snap)
        ),
    )
    assert not xprovider.describe_vm(vm_id).snapshots
    assert _disk_sources(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)) == _disk_sources(
        original_xml
    )
    dom.destroy()
    assert has_pattern(a, "qcow2", 0xEE, 0, 1 * MiB)
    assert has_pattern(b, "raw", 0xEF, 1 * MiB, 1 * MiB)
    assert not [p for p in os.listdir(env.pool_path) if ".migration-" in p]  # no overlays
    for location, result in exported.values():
        if location.backend == pb.STORAGE_BACKEND_S3:
            key = result.url.removeprefix(f"s3://{bucket}/")
            seaweed.client().delete_object(Bucket=bucket, Key=key)


def _request(vm_id: str, disk_id: str, root: Path, snapshot_id: str = "") -> pb.ExportDiskRequest:
    return pb.ExportDiskRequest(
        operation_id=op("export"),
        vm_id=vm_id,
        disk_id=disk_id,
        snapshot_id=snapshot_id,
        destination=nfs_location(root, f"{secrets.token_hex(4)}.img"),
    )


def frozen_source(env: LibvirtEnv, vm_id: str, snap: str, disk: str) -> str:
    client = LibvirtClient(env.uri)
    try:
        return LibvirtDriver(client).snapshot_disk_source(vm_id, snap, disk)
    finally:
        client.close()


def _disk_sources(xml: str) -> list[tuple[str, str, str]]:
    return [(d.target, d.path, d.format) for d in domxml.parse_domain(xml).disks]


# -- export: chains, guest-written headers, errors ---------------------------------------


def test_export_of_a_stopped_vm_flattens_its_backing_chain(
    env: LibvirtEnv, lv: Lab, xprovider: ProviderClient, nfs_root: Path, tmp_path: Path
) -> None:
    base = lv.volume(env.name("chain-base.qcow2"), 32 * MiB, "qcow2")
    write_pattern(base, "qcow2", 0x11, 0, 4 * MiB)
    top = str(env.pool_path / env.name("chain-top.qcow2"))
    relative = os.path.basename(base)  # resolved beside the top: by libvirt, not by us
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", relative, "-F", "qcow2", top],
        check=True,
        timeout=30,
    )
    lv.track_volume(top)
    write_pattern(top, "qcow2", 0x22, 2 * MiB, 4 * MiB)  # over the base and beyond it
    dom = lv.define(domain_xml(env.name("chain"), [SetupDisk(top, "qcow2", "vda")]))
    flat = tmp_path / "flat.raw"
    subprocess.run(
        ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", top, str(flat)],
        check=True,
        timeout=60,
    )
    for fmt in (QCOW2, RAW):
        task = export(xprovider, str(dom.UUIDString()), "vda", nfs_location(nfs_root, "c"), fmt)
        result = task.export_result
        obj = nfs_root / "c"
        name = "qcow2" if fmt == QCOW2 else "raw"
        assert '"backing-filename"' not in image_info(str(obj))  # self-contained
        assert same_disk(str(flat), "raw", str(obj), name)
        assert result.content_sha256 == digest.content_digest(flat, "raw")
        obj.unlink()


def test_a_raw_disk_holding_a_qcow2_header_is_exported_as_its_bytes(
    env: LibvirtEnv, lv: Lab, xprovider: ProviderClient, nfs_root: Path, tmp_path: Path
) -> None:
    # A guest wrote a qcow2 image, with a backing file on the host, into its raw disk.
    secret = tmp_path / "host-secret.raw"
    secret.write_bytes(b"HOST SECRET " * 100_000)
    header = tmp_path / "evil.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(secret), "-F", "raw", str(header)],
        check=True,
        timeout=30,
    )
    disk = lv.volume(env.name("evil.img"), 8 * MiB, "raw")
    with open(disk, "r+b") as handle:
        handle.write(header.read_bytes())
    dom = lv.define(domain_xml(env.name("evil"), [SetupDisk(disk, "raw", "vda")]))
    vm_id = str(dom.UUIDString())
    result = export(xprovider, vm_id, "vda", nfs_location(nfs_root, "evil.img")).export_result
    stored = (nfs_root / "evil.img").read_bytes()
    assert result.format == RAW
    assert stored == Path(disk).read_bytes()  # the disk's bytes, nothing of the host file
    assert b"HOST SECRET" not in stored
    # Imported as raw, libvirt's pool would probe it as qcow2: refused; as qcow2: fine.
    location = nfs_location(nfs_root, "evil.img")
    refused = failure(
        xprovider,
        lambda: xprovider.import_disk(
            import_request(location, result, env.pool2, env.name("evil-raw"), RAW)
        ),
    )
    assert isinstance(refused, errors.FailedPrecondition)
    assert env.name("evil-raw") not in volume_names(lv, env.pool2)
    name = env.name("evil-wrapped")
    got = finish(
        xprovider,
        xprovider.import_disk(import_request(location, result, env.pool2, name, QCOW2)),
    ).import_result
    track_volume(lv, env.pool2, name)
    assert same_disk(disk, "raw", got.path, "qcow2")
    assert '"backing-filename"' not in image_info(got.path)


def test_export_errors_are_typed_and_leave_nothing(  # noqa: PLR0917 - fixtures
    env: LibvirtEnv,
    lv: Lab,
    xprovider: ProviderClient,
    provider: ProviderClient,
    seaweed: SeaweedFS,
    bucket: str,
    nfs_root: Path,
    scratch: Path,
) -> None:
    vm_id, _ = small_vm(env, lv, "errs")
    cases: list[tuple[pb.ExportDiskRequest, type[errors.VirtrigaudError]]] = [
        (_request("7f0c2a8e-52a4-4c4f-9a53-3a3e0d1b7c11", "vda", nfs_root), errors.NotFound),
        (_request("not-a-uuid", "vda", nfs_root), errors.NotFound),
        (_request(vm_id, "vdz", nfs_root), errors.NotFound),
        (_request(vm_id, "vda", nfs_root, snapshot_id="no-such-snapshot"), errors.NotFound),
    ]
    # A qcow2 keeping its data in an external file cannot travel through a stream.
    split = str(env.pool_path / env.name("split.qcow2"))
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-o", f"data_file={split}.data", split, "8M"],
        check=True,
        timeout=30,
    )
    lv.track_volume(split)
    lv.track_volume(f"{split}.data")
    dom = lv.define(domain_xml(env.name("split"), [SetupDisk(split, "qcow2", "vda")]))
    cases.append((_request(str(dom.UUIDString()), "vda", nfs_root), errors.Unsupported))
    for request, expected in cases:
        error = export_error(xprovider, request)
        assert isinstance(error, expected), error
    # The default provider has no allow-list: loopback storage is refused.
    denied = failure(
        provider,
        lambda: provider.export_disk(
            pb.ExportDiskRequest(
                operation_id=op("ssrf"),
                vm_id=vm_id,
                disk_id="vda",
                destination=s3_location(seaweed, bucket, "ssrf/never.qcow2"),
            )
        ),
    )
    assert isinstance(denied, errors.PermissionDenied)
    assert "Contents" not in seaweed.client().list_objects_v2(Bucket=bucket, Prefix="ssrf/")
    assert list(nfs_root.iterdir()) == []
    assert list(scratch.iterdir()) == []


def test_cancelled_export_leaves_no_object_and_no_scratch(
    env: LibvirtEnv, lv: Lab, xprovider: ProviderClient, nfs_root: Path, scratch: Path
) -> None:
    disk = lv.volume(env.name("big.img"), 768 * MiB, "raw")
    block = os.urandom(MiB)
    with open(disk, "r+b") as handle:
        for offset in range(0, 768 * MiB, 2 * MiB):  # 384 MiB of data, every other MiB
            handle.seek(offset)
            handle.write(block)
    dom = lv.define(domain_xml(env.name("big"), [SetupDisk(disk, "raw", "vda")]))
    request = _request(str(dom.UUIDString()), "vda", nfs_root)
    request.target_format = QCOW2
    task = xprovider.export_disk(request)
    while (seen := xprovider.get_task(task.id)).bytes_done == 0:
        assert seen.state in (pb.TASK_STATE_PENDING, pb.TASK_STATE_RUNNING), seen.error
        time.sleep(0.02)
    xprovider.cancel_task(task.id)
    final = xprovider.wait_task(task.id, timeout=120, poll=0.05)
    assert final.state == pb.TASK_STATE_CANCELLED
    assert final.error.code == pb.ERROR_CODE_CANCELLED
    assert list(nfs_root.iterdir()) == []  # no object and no temporary file
    assert list(scratch.iterdir()) == []


def test_scratch_limit_refuses_a_copy_that_does_not_fit(
    env: LibvirtEnv, lv: Lab, nfs_root: Path, scratch: Path
) -> None:
    vm_id, _ = small_vm(env, lv, "tight")
    driver = create(
        ProviderConfig(
            endpoint=env.uri,
            options={"scratchDir": str(scratch), "scratchLimit": "1M", "domainType": "qemu"},
        )
    )
    with serve(driver) as client:
        error = export_error(client, _request(vm_id, "vda", nfs_root))
    assert isinstance(error, errors.OutOfSpace)
    assert list(nfs_root.iterdir()) == []
    assert list(scratch.iterdir()) == []


def test_options_and_capabilities(env: LibvirtEnv, tmp_path: Path) -> None:
    assert [parse_size(v, "x") for v in ("4096", "1K", "512M", "2G", "1TiB")] == [
        4096,
        1024,
        512 * MiB,
        2 << 30,
        1 << 40,
    ]
    for bad in ("", "-1", "1.5G", "ten"):
        with pytest.raises(errors.InvalidArgument):
            parse_size(bad, "scratchLimit")
    with pytest.raises(errors.InvalidArgument, match="scratchDir"):
        create(ProviderConfig(endpoint=env.uri, options={"scratchDir": str(tmp_path / "no")}))
    driver = create(ProviderConfig(endpoint=env.uri, options={"domainType": "qemu"}))
    try:
        caps = driver.capabilities()
    finally:
        driver.close()
    assert set(caps.export_formats) == {QCOW2, RAW, VMDK, *_OTHER_FORMATS}
    assert set(caps.import_formats) == {QCOW2, RAW}
    assert caps.native_format == QCOW2
    for feature in (
        pb.FEATURE_SPARSE_EXPORT,
        pb.FEATURE_CONTENT_DIGEST,
        pb.FEATURE_RESUMABLE_TRANSFER,
        pb.FEATURE_LIVE_EXPORT,
    ):
        assert feature in caps.features


_OTHER_FORMATS = (pb.DISK_FORMAT_VDI, pb.DISK_FORMAT_VPC, pb.DISK_FORMAT_VHDX)


# -- import: errors, cancellation ---------------------------------------------------------


@pytest.fixture
def small_export(
    env: LibvirtEnv, lv: Lab, xprovider: ProviderClient, seaweed: SeaweedFS, bucket: str
) -> tuple[pb.StorageLocation, pb.ExportResult, str]:
    """A small qcow2 disk exported to S3: (location, result, source disk path)."""
    vm_id, path = small_vm(env, lv, f"src-{secrets.token_hex(2)}")
    location = s3_location(seaweed, bucket, f"small-{secrets.token_hex(3)}/vda.qcow2")
    return location, export(xprovider, vm_id, "vda", location).export_result, path


def test_import_errors_are_typed_and_leave_no_volume(  # noqa: PLR0917 - fixtures
    env: LibvirtEnv,
    lv: Lab,
    xprovider: ProviderClient,
    small_export: tuple[pb.StorageLocation, pb.ExportResult, str],
    nfs_root: Path,
    scratch: Path,
) -> None:
    location, result, _ = small_export
    before = volume_names(lv, env.pool2)
    name = env.name("imp-err")

    def attempt(**changes: object) -> errors.VirtrigaudError:
        request = import_request(location, result, env.pool2, name)
        for field, value in changes.items():
            if isinstance(value, pb.StorageLocation):
                getattr(request, field).CopyFrom(value)
            else:
                setattr(request, field, value)
        return failure(xprovider, lambda: xprovider.import_disk(request))

    assert isinstance(attempt(expected_sha256="0" * 64), errors.ChecksumMismatch)
    assert isinstance(attempt(expected_content_sha256="1" * 64), errors.ChecksumMismatch)
    assert isinstance(attempt(storage_hint="vr-no-such-pool"), errors.NotFound)
    assert isinstance(attempt(target_format=VMDK), errors.Unsupported)
    assert isinstance(attempt(target_volume_name="x'<>&.qcow2"), errors.InvalidArgument)
    assert isinstance(attempt(target_volume_name=".hidden"), errors.InvalidArgument)
    missing = nfs_location(nfs_root, "never-exported.qcow2")
    assert isinstance(attempt(source=missing), errors.NotFound)
    assert volume_names(lv, env.pool2) == before  # no final and no temporary volume
    # A taken name is refused before any download: the source need not even exist.
    taken = lv.volume(env.name("taken.qcow2"), MiB, "qcow2", pool=env.pool2)
    content = Path(taken).read_bytes()
    collision = attempt(target_volume_name=env.name("taken.qcow2"), source=missing)
    assert isinstance(collision, errors.AlreadyExists)
    assert Path(taken).read_bytes() == content  # untouched
    behind = env.pool2_path / env.name("behind.qcow2")  # not created through libvirt
    lv.track_volume(str(behind))
    behind.write_bytes(b"not libvirt's")
    collision = attempt(target_volume_name=behind.name, source=missing)
    assert isinstance(collision, errors.AlreadyExists)
    assert behind.read_bytes() == b"not libvirt's"
    assert list(scratch.iterdir()) == []


def test_corrupted_object_in_s3_is_refused(  # noqa: PLR0917 - fixtures
    env: LibvirtEnv,
    lv: Lab,
    xprovider: ProviderClient,
    small_export: tuple[pb.StorageLocation, pb.ExportResult, str],
    seaweed: SeaweedFS,
    bucket: str,
    scratch: Path,
) -> None:
    location, result, _ = small_export
    data = bytearray(s3_bytes(seaweed, bucket, result.url))
    data[len(data) // 2] ^= 0x01  # one bit flipped behind the backend's back
    key = result.url.removeprefix(f"s3://{bucket}/")
    seaweed.client().put_object(Bucket=bucket, Key=key, Body=bytes(data))
    before = volume_names(lv, env.pool2)
    request = import_request(location, result, env.pool2, env.name("corrupt"))
    error = failure(xprovider, lambda: xprovider.import_disk(request))
    assert isinstance(error, errors.ChecksumMismatch)
    assert volume_names(lv, env.pool2) == before
    assert list(scratch.iterdir()) == []


class _CancelAt(TaskContext):
    """The task's context, cancelling the task when the import reaches ``stage``."""

    def __init__(self, parent: TaskContext, stage: str) -> None:
        self._parent, self._stage = parent, stage

    @property
    def cancel_event(self) -> threading.Event:
        return self._parent.cancel_event

    def cancelled(self) -> bool:
        return self._parent.cancelled()

    def check_cancelled(self) -> None:
        self._parent.check_cancelled()

    def set_stage(self, stage: str) -> None:
        self._parent.set_stage(stage)
        if stage == self._stage:
            self._parent.cancel_event.set()

    def progress(self, done: int, total: int | None = None) -> None:
        self._parent.progress(done, total)


@pytest.mark.parametrize(
    "stage",
    [
        "downloading",
        imports.STAGE_WRITING,
        imports.STAGE_FINALIZING,
        imports.STAGE_VERIFYING_VOLUME,
    ],
)
def test_import_cancelled_at_any_stage_leaves_no_volume(
    env: LibvirtEnv,
    lv: Lab,
    small_export: tuple[pb.StorageLocation, pb.ExportResult, str],
    scratch: Path,
    stage: str,
) -> None:
    location, result, _ = small_export
    name = env.name(f"cancel-{stage.replace(' ', '-')}")
    driver = LibvirtDriver(
        LibvirtClient(env.uri),
        default_pool=env.pool,
        scratch=ScratchSettings(str(scratch)),
        allowed_storage_hosts=LOOPBACK,
    )
    request = import_request(location, result, env.pool2, name)
    try:
        final = run_task(lambda ctx: driver.import_disk(request, _CancelAt(ctx, stage)))
    finally:
        driver.close()
    assert final.state == pb.TASK_STATE_CANCELLED, final.error
    names = volume_names(lv, env.pool2)
    assert name not in names
    assert imports.temporary_name(env.pool2, name) not in names
    assert list(scratch.iterdir()) == []


def run_task(work: Callable[[TaskContext], TaskResult]) -> pb.Task:
    """Run ``work`` as a real task of a registry of its own; the finished task."""
    registry = TaskRegistry(max_workers=1)
    task = registry.submit(pb.TASK_KIND_IMPORT_DISK, op("task"), b"", work)
    registry.shutdown(grace=120)
    return registry.get(task.id)


def test_a_volume_that_reads_back_wrong_is_deleted(
    env: LibvirtEnv,
    lv: Lab,
    small_export: tuple[pb.StorageLocation, pb.ExportResult, str],
    scratch: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    location, result, _ = small_export
    name = env.name("damaged")
    driver = LibvirtDriver(
        LibvirtClient(env.uri),
        default_pool=env.pool,
        scratch=ScratchSettings(str(scratch)),
        allowed_storage_hosts=LOOPBACK,
    )
    create_volume = driver.client.create_volume

    def damaging(pool: str, xml: str, clone_of: str = "") -> Any:
        made = create_volume(pool, xml, clone_of)
        write_pattern(made.path, "qcow2", 0x99, 0, 4096)  # the copy went wrong somehow
        return made

    monkeypatch.setattr(driver.client, "create_volume", damaging)
    request = import_request(location, result, env.pool2, name)
    try:
        final = run_task(lambda ctx: driver.import_disk(request, ctx))
    finally:
        driver.close()
    assert final.error.code == pb.ERROR_CODE_CHECKSUM_MISMATCH, final.error
    assert name not in volume_names(lv, env.pool2)
    assert list(scratch.iterdir()) == []


def test_progress_adds_up_over_stages_and_never_goes_back() -> None:
    registry = TaskRegistry(max_workers=1)
    seen: list[tuple[str, int, int]] = []

    def record(ctx: TaskContext) -> None:
        task = registry.get(ctx.task_id)
        seen.append((task.stage, task.bytes_done, task.bytes_total))

    def work(ctx: TaskContext) -> None:
        staged = StagedContext(ctx)
        for stage, steps in (("reading", [(0, 100), (60, 100), (100, 100)]), ("up", [(0, 40)])):
            staged.set_stage(stage)
            for done, total in steps:
                staged.progress(done, total)
                record(ctx)
        staged.progress(30, 40)
        staged.progress(10)  # a late, smaller report within the stage changes nothing
        record(ctx)

    task = registry.submit(pb.TASK_KIND_EXPORT_DISK, op("progress"), b"", work)
    registry.shutdown(grace=30)
    assert registry.get(task.id).state == pb.TASK_STATE_SUCCEEDED
    assert seen == [
        ("reading", 0, 100),
        ("reading", 60, 100),
        ("reading", 100, 100),
        ("up", 100, 140),
        ("up", 130, 140),
    ]


def test_one_import_per_volume_at_a_time() -> None:
    in_flight = imports.InFlight()
    with in_flight.claim("pool", "disk.qcow2"):
        with (
            pytest.raises(errors.AlreadyExists, match="being imported"),
            in_flight.claim("pool", "disk.qcow2"),
        ):
            pass
        with in_flight.claim("pool", "other.qcow2"), in_flight.claim("pool2", "disk.qcow2"):
            pass
    with in_flight.claim("pool", "disk.qcow2"):  # released when the first import ended
        pass


def test_an_import_resubmitted_after_a_restart_returns_the_finished_volume(
    env: LibvirtEnv,
    lv: Lab,
    xprovider: ProviderClient,
    small_export: tuple[pb.StorageLocation, pb.ExportResult, str],
) -> None:
    """A provider restart loses its tasks; the manager re-submits the same import. The
    finished volume is recognised by its content, not refused as a collision."""
    location, result, _ = small_export
    name = env.name(f"resubmit-{secrets.token_hex(2)}.qcow2")
    first = raise_for_task(
        xprovider.wait_task(
            xprovider.import_disk(import_request(location, result, env.pool2, name)).id
        )
    ).import_result
    track_volume(lv, env.pool2, name)
    again = raise_for_task(
        xprovider.wait_task(
            xprovider.import_disk(import_request(location, result, env.pool2, name)).id
        )
    ).import_result
    assert (again.disk_id, again.path, again.content_sha256) == (
        first.disk_id,
        first.path,
        first.content_sha256,
    )
    other = import_request(location, result, env.pool2, name)
    other.expected_content_sha256 = "2" * 64  # a different disk under the same name
    with pytest.raises(errors.AlreadyExists):
        raise_for_task(xprovider.wait_task(xprovider.import_disk(other).id))
