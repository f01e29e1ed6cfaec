"""ExportDisk / ImportDisk / DeleteDisk against vcsim, with real S3 and HTTP storage.

The round trip: a VMDK with known bytes is put on the datastore, a running VM uses
it, a snapshot is taken, the disk is exported from the snapshot to S3 (SeaweedFS)
and to HTTP (nginx WebDAV), each object is imported back as a new VMDK, a VM is
created from one of them and exported again. At every step the bytes are compared
with the original: objects through qemu-img (an independent reader), datastore files
directly in vcsim's datastore folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from manager.providerclient import ProviderClient
from providers.vsphere.driver import create
from providers.vsphere.imports import DEFAULT_FOLDER
from tests.providers.common.helpers import reference_digest
from tests.providers.vsphere.helpers import (
    TEST_FOLDER,
    Lab,
    MiB,
    config,
    failure,
    finish,
    op,
    pattern,
    qemu_img_raw,
    serve,
)
from tests.servers.faultproxy import FaultProxy
from tests.servers.nginx import NginxDav
from tests.servers.seaweedfs import SeaweedFS
from tests.servers.vcsim import DATASTORE, PORTGROUP, Vcsim
from virtrigaud import errors
from virtrigaud.provider.v1 import provider_pb2 as pb

SIZE = 12 * MiB
Location = Callable[[str], pb.StorageLocation]


@pytest.fixture
def s3(seaweed: SeaweedFS) -> Location:
    bucket = seaweed.create_bucket(f"vsphere-{secrets.token_hex(3)}")

    def location(key: str) -> pb.StorageLocation:
        return pb.StorageLocation(
            backend=pb.STORAGE_BACKEND_S3,
            url=f"s3://{bucket}/{key}",
            credentials=seaweed.credentials(),
            options={"endpoint": seaweed.endpoint},
        )

    return location


@pytest.fixture
def http(nginx: NginxDav) -> Location:
    base = f"{nginx.bearer_url.rstrip('/')}/vsphere-{secrets.token_hex(3)}"

    def location(key: str) -> pb.StorageLocation:
        return pb.StorageLocation(
            backend=pb.STORAGE_BACKEND_HTTP,
            url=f"{base}/{key}",
            credentials={"token": nginx.token},
            options={"base_url": base},
        )

    return location


def original_bytes() -> bytes:
    """12 MiB: 3 MiB of data, zeros, 1 MiB of other data at 9 MiB, zeros."""
    data = bytearray(SIZE)
    data[: 3 * MiB] = pattern(3 * MiB, 11)
    data[9 * MiB : 10 * MiB] = pattern(MiB, 12)
    return bytes(data)


def _disk_id(provider: ProviderClient, vm_id: str) -> str:
    return next(d.id for d in provider.describe_vm(vm_id).disks if d.device == pb.DISK_DEVICE_DISK)


def export(
    provider: ProviderClient,
    vm_id: str,
    location: pb.StorageLocation,
    *,
    snapshot: str = "",
    fmt: int = pb.DISK_FORMAT_UNSPECIFIED,
) -> pb.ExportResult:
    return finish(
        provider,
        provider.export_disk(
            pb.ExportDiskRequest(
                operation_id=op("export"),
                vm_id=vm_id,
                disk_id=_disk_id(provider, vm_id),
                snapshot_id=snapshot,
                destination=location,
                target_format=fmt,  # type: ignore[arg-type]
            )
        ),
    ).export_result


def import_request(
    location: pb.StorageLocation, result: pb.ExportResult, name: str
) -> pb.ImportDiskRequest:
    source = pb.StorageLocation()
    source.CopyFrom(location)
    source.url = result.url
    return pb.ImportDiskRequest(
        operation_id=op("import"),
        source=source,
        expected_sha256=result.sha256,
        expected_content_sha256=result.content_sha256,
        source_format=result.format,
        storage_hint=DATASTORE,
        target_volume_name=name,
    )


def imported_files(vs: Lab, name: str) -> tuple[Path, Path]:
    folder = vs.root / DEFAULT_FOLDER
    return folder / f"{name}.vmdk", folder / f"{name}-flat.vmdk"


def stored(seaweed: SeaweedFS, nginx: NginxDav, url: str) -> bytes:
    if url.startswith("s3://"):
        bucket, _, key = url[5:].partition("/")
        return bytes(seaweed.client().get_object(Bucket=bucket, Key=key)["Body"].read())
    path = url.split("/bearer/", 1)[1]
    return nginx.path_of("bearer", path).read_bytes()


def test_round_trip_through_s3_and_http(  # noqa: PLR0917 - pytest fixtures
    vs: Lab,
    provider: ProviderClient,
    s3: Location,
    http: Location,
    seaweed: SeaweedFS,
    nginx: NginxDav,
    tmp_path: Path,
) -> None:
    original = original_bytes()
    digest = reference_digest_of(original, tmp_path)
    path = vs.put_disk(vs.name("rt"), original)
    vm_id = vs.make_vm(vs.name("rt"), [(path, SIZE)], power_on=True)
    snap = finish(
        provider,
        provider.create_snapshot(
            pb.CreateSnapshotRequest(
                operation_id=op("snap"), vm_id=vm_id, name="migration", quiesce=True
            )
        ),
    ).snapshot_result.snapshot_id
    results = {
        "s3": (s3("rt/disk.vmdk"), export(provider, vm_id, s3("rt/disk.vmdk"), snapshot=snap)),
        "http": (
            http("rt/disk.qcow2"),
            export(provider, vm_id, http("rt/disk.qcow2"), snapshot=snap, fmt=pb.DISK_FORMAT_QCOW2),
        ),
    }
    for kind, (_location, result) in results.items():
        data = stored(seaweed, nginx, result.url)
        assert hashlib.sha256(data).hexdigest() == result.sha256, kind
        assert len(data) == result.size_bytes
        assert result.source_format == pb.DISK_FORMAT_VMDK
        assert result.virtual_size_bytes == SIZE
        assert result.content_sha256 == digest, kind
        fmt = "vmdk" if kind == "s3" else "qcow2"
        assert result.format == (pb.DISK_FORMAT_VMDK if kind == "s3" else pb.DISK_FORMAT_QCOW2)
        obj = tmp_path / f"object.{fmt}"
        obj.write_bytes(data)
        assert qemu_img_raw(obj, fmt, tmp_path / f"{kind}.raw") == original, kind
    # Both objects back onto the datastore as new VMDKs, byte for byte.
    names = {kind: vs.name(f"rt-{kind}") for kind in results}
    imported: dict[str, pb.ImportResult] = {}
    for kind, (location, result) in results.items():
        imported[kind] = finish(
            provider, provider.import_disk(import_request(location, result, names[kind]))
        ).import_result
        desc, flat = imported_files(vs, names[kind])
        assert imported[kind].disk_id == f"[{DATASTORE}] {DEFAULT_FOLDER}/{names[kind]}.vmdk"
        assert (imported[kind].size_bytes, imported[kind].format) == (SIZE, pb.DISK_FORMAT_VMDK)
        assert imported[kind].content_sha256 == digest
        assert imported[kind].sha256 == result.sha256
        assert flat.read_bytes() == original
        assert qemu_img_raw(desc, "vmdk", tmp_path / f"{kind}-ds.raw") == original
    # A VM from the imported disk, exported again: the same content.
    new_vm = finish(
        provider,
        provider.create_vm(
            pb.CreateVMRequest(
                operation_id=op("create"),
                name=vs.name("rt-target"),
                cpu=1,
                memory_mib=128,
                storage_hint=DATASTORE,
                disks=[
                    pb.DiskSpec(
                        imported=pb.ImportedDisk(
                            disk_id=imported["s3"].disk_id,
                            format=imported["s3"].format,
                            size_bytes=imported["s3"].size_bytes,
                        )
                    )
                ],
                nics=[pb.NicSpec(network=PORTGROUP)],
            )
        ),
    ).create_vm_result.vm_id
    vs.vms.append(vs.vm(new_vm))
    disk = next(d for d in provider.describe_vm(new_vm).disks)
    assert (disk.path, disk.virtual_size_bytes) == (imported["s3"].disk_id, SIZE)
    again = export(provider, new_vm, s3("rt/again.raw"), fmt=pb.DISK_FORMAT_RAW)
    assert again.content_sha256 == digest
    assert stored(seaweed, nginx, again.url) == original
    # DeleteDisk: refused while attached; removes descriptor + flat; idempotent.
    error = failure(
        provider,
        lambda: provider.delete_disk(
            pb.DeleteDiskRequest(operation_id=op("dd"), disk_id=imported["s3"].disk_id)
        ),
    )
    assert isinstance(error, errors.FailedPrecondition) and "attached" in error.message
    finish(provider, provider.delete_vm(pb.DeleteVMRequest(operation_id=op("d"), vm_id=new_vm)))
    for label in ("first", "again"):
        finish(
            provider,
            provider.delete_disk(
                pb.DeleteDiskRequest(operation_id=op(f"dd-{label}"), disk_id=imported["s3"].disk_id)
            ),
        )
        assert not any(p.exists() for p in imported_files(vs, names["s3"]))
    finish(
        provider,
        provider.delete_disk(
            pb.DeleteDiskRequest(operation_id=op("dd-http"), disk_id=imported["http"].disk_id)
        ),
    )
    finish(
        provider,
        provider.delete_snapshot(
            pb.DeleteSnapshotRequest(operation_id=op("unsnap"), vm_id=vm_id, snapshot_id=snap)
        ),
    )
    assert provider.describe_vm(vm_id).snapshots == []


def reference_digest_of(data: bytes, tmp_path: Path) -> str:
    raw = tmp_path / "reference.raw"
    raw.write_bytes(data)
    return reference_digest(raw)


def test_running_vm_without_snapshot_is_refused(
    vs: Lab, provider: ProviderClient, s3: Location
) -> None:
    path = vs.put_disk(vs.name("live"), pattern(MiB, 13))
    vm_id = vs.make_vm(vs.name("live"), [(path, MiB)], power_on=True)
    error = failure(
        provider,
        lambda: provider.export_disk(
            pb.ExportDiskRequest(
                operation_id=op("x"),
                vm_id=vm_id,
                disk_id=_disk_id(provider, vm_id),
                destination=s3("live.vmdk"),
            )
        ),
    )
    assert isinstance(error, errors.FailedPrecondition) and "snapshot" in error.message


def test_export_errors_are_typed(vs: Lab, provider: ProviderClient, s3: Location) -> None:
    empty = vs.make_vm(vs.name("empty"), [])
    cases = {
        "vm-999999": errors.NotFound,
        empty: errors.NotFound,  # no such disk
    }
    for vm_id, kind in cases.items():
        error = failure(
            provider,
            lambda vm_id=vm_id: provider.export_disk(  # type: ignore[misc]
                pb.ExportDiskRequest(
                    operation_id=op("x"), vm_id=vm_id, disk_id="2000", destination=s3("x.vmdk")
                )
            ),
        )
        assert isinstance(error, kind), error
    # vcsim's own VMs have 0-byte disks it made itself: no descriptor to read.
    own = next(vm for vm in provider.iter_vms(name_filter="DC0_H0_VM0"))
    finish(
        provider,
        provider.power(
            pb.PowerRequest(operation_id=op("off"), vm_id=own.id, action=pb.POWER_ACTION_OFF)
        ),
    )
    error = failure(
        provider,
        lambda: provider.export_disk(
            pb.ExportDiskRequest(
                operation_id=op("x"),
                vm_id=own.id,
                disk_id=_disk_id(provider, own.id),
                destination=s3("own.vmdk"),
            )
        ),
    )
    assert isinstance(error, errors.FailedPrecondition) and "descriptor" in error.message


def _wait_for_bytes(provider: ProviderClient, task_id: str) -> None:
    deadline = time.monotonic() + 120
    while provider.get_task(task_id).bytes_done == 0:
        assert time.monotonic() < deadline, "the transfer never moved bytes"
        time.sleep(0.02)


def test_cancelled_export_leaves_nothing(
    vs: Lab, provider: ProviderClient, s3: Location, seaweed: SeaweedFS
) -> None:
    size = 512 * MiB
    path = vs.put_disk(vs.name("big"), pattern(MiB, 14), size)
    vm_id = vs.make_vm(vs.name("big"), [(path, size)])
    before = sorted(p.name for p in vs.root.rglob("*"))
    location = s3("cancel/big.vmdk")
    task = provider.export_disk(
        pb.ExportDiskRequest(
            operation_id=op("cancel"),
            vm_id=vm_id,
            disk_id=_disk_id(provider, vm_id),
            destination=location,
        )
    )
    _wait_for_bytes(provider, task.id)
    provider.cancel_task(task.id)
    final = provider.wait_task(task.id, timeout=120)
    assert final.state == pb.TASK_STATE_CANCELLED
    assert final.error.code == pb.ERROR_CODE_CANCELLED
    bucket = location.url[5:].split("/", 1)[0]
    client = seaweed.client()
    assert "Contents" not in client.list_objects_v2(Bucket=bucket, Prefix="cancel/")
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert sorted(p.name for p in vs.root.rglob("*")) == before  # the datastore is untouched
    # (the scratch fixture asserts the provider's scratch directory is empty)


def test_import_refuses_bad_data_and_leaves_nothing(
    vs: Lab, provider: ProviderClient, s3: Location
) -> None:
    path = vs.put_disk(vs.name("src"), pattern(2 * MiB, 15))
    vm_id = vs.make_vm(vs.name("src"), [(path, 2 * MiB)])
    location = s3("bad/disk.vmdk")
    result = export(provider, vm_id, location)
    name = vs.name("imp")
    wrong = import_request(location, result, name)
    wrong.expected_sha256 = "0" * 64
    error = failure(provider, lambda: provider.import_disk(wrong))
    assert isinstance(error, errors.ChecksumMismatch)
    wrong = import_request(location, result, name)
    wrong.expected_content_sha256 = "1" * 64
    error = failure(provider, lambda: provider.import_disk(wrong))
    assert isinstance(error, errors.ChecksumMismatch)
    assert not any(p.exists() for p in imported_files(vs, name))
    missing = import_request(location, result, name)
    missing.source.url = location.url + ".missing"
    error = failure(provider, lambda: provider.import_disk(missing))
    assert isinstance(error, errors.NotFound)
    unknown_ds = import_request(location, result, name)
    unknown_ds.storage_hint = "no-such-datastore"
    error = failure(provider, lambda: provider.import_disk(unknown_ds))
    assert isinstance(error, errors.NotFound) and "no-such-datastore" in error.message
    qcow = import_request(location, result, name)
    qcow.target_format = pb.DISK_FORMAT_QCOW2
    error = failure(provider, lambda: provider.import_disk(qcow))
    assert isinstance(error, errors.Unsupported)
    # The name is still free: a good import succeeds, a second one collides, and a
    # re-submitted import of the same content returns the disk it made.
    good = finish(provider, provider.import_disk(import_request(location, result, name)))
    assert imported_files(vs, name)[1].read_bytes() == pattern(2 * MiB, 15)
    error = failure(
        provider,
        lambda: provider.import_disk(_without_content(import_request(location, result, name))),
    )
    assert isinstance(error, errors.AlreadyExists)
    again = finish(provider, provider.import_disk(import_request(location, result, name)))
    assert again.import_result.disk_id == good.import_result.disk_id
    assert again.import_result.content_sha256 == good.import_result.content_sha256
    finish(
        provider,
        provider.delete_disk(
            pb.DeleteDiskRequest(operation_id=op("dd"), disk_id=good.import_result.disk_id)
        ),
    )


def _without_content(request: pb.ImportDiskRequest) -> pb.ImportDiskRequest:
    request.expected_content_sha256 = ""
    return request


@pytest.fixture
def blocked_provider(vs: Lab, vcsim: Vcsim, scratch: Path) -> Iterator[tuple[ProviderClient, Path]]:
    """A provider whose import folder is a plain file: its folder cannot be made."""
    folder = f"vr-blocked-{vs.tag}"
    blocker = vs.root / folder
    blocker.write_text("not a folder")
    vs.paths.append(blocker)
    driver = create(config(vcsim, scratchDir=str(scratch), importFolder=folder))
    with serve(driver) as client:
        yield client, blocker
    driver.close()


def _exported(
    vs: Lab, provider: ProviderClient, s3: Location, label: str
) -> tuple[pb.StorageLocation, pb.ExportResult]:
    path = vs.put_disk(vs.name(label), pattern(MiB, 16))
    vm_id = vs.make_vm(vs.name(label), [(path, MiB)])
    location = s3(f"{label}/disk.vmdk")
    return location, export(provider, vm_id, location)


def test_import_folder_that_cannot_be_made_fails_cleanly(
    vs: Lab,
    provider: ProviderClient,
    blocked_provider: tuple[ProviderClient, Path],
    s3: Location,
) -> None:
    location, result = _exported(vs, provider, s3, "mk")
    blocked, blocker = blocked_provider
    before = sorted(p.name for p in vs.root.rglob("*"))
    error = failure(
        blocked, lambda: blocked.import_disk(import_request(location, result, vs.name("mk")))
    )
    assert isinstance(error, errors.FailedPrecondition) and "creating folder" in error.message
    assert blocker.read_text() == "not a folder"
    assert sorted(p.name for p in vs.root.rglob("*")) == before


def test_refused_datastore_upload_fails_cleanly(
    vs: Lab, provider: ProviderClient, s3: Location
) -> None:
    """The datastore refuses the PUT of the flat file (HTTP 500: a folder has its
    name): the import fails as Unavailable and no descriptor ever appears."""
    location, result = _exported(vs, provider, s3, "up")
    name = vs.name("up")
    desc, flat = imported_files(vs, name)
    flat.mkdir(parents=True)
    error = failure(provider, lambda: provider.import_disk(import_request(location, result, name)))
    assert isinstance(error, errors.Unavailable) and "HTTP 500" in error.message
    assert not desc.exists()
    # the scratch fixture asserts the provider's scratch directory is empty again


def test_datastore_download_resumes_after_a_dropped_connection(  # noqa: PLR0917 - fixtures
    vs: Lab,
    vcsim: Vcsim,
    scratch: Path,
    s3: Location,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """The connection reading the flat file is cut mid-way; the export continues with a
    Range request and the object still holds exactly the disk's content. (The proxy
    sees TLS only, so the resume is read from the provider's log.)"""
    data = pattern(16 * MiB, 17)
    path = vs.put_disk(vs.name("resume"), data)
    vm_id = vs.make_vm(vs.name("resume"), [(path, len(data))])
    with FaultProxy(vcsim.port, cut_after=6 * MiB) as proxy:
        cfg = config(vcsim, scratchDir=str(scratch))
        cfg = dataclasses.replace(cfg, endpoint=f"https://127.0.0.1:{proxy.port}/sdk")
        driver = create(cfg)
        with serve(driver) as provider:
            result = export(provider, vm_id, s3("resume/disk.raw"), fmt=pb.DISK_FORMAT_RAW)
        driver.close()
        assert proxy.cut_count == 1
    logged = capfd.readouterr().out
    assert "datastore_download_resume" in logged and "offset=" in logged
    assert result.content_sha256 == reference_digest_of(data, tmp_path)


def test_import_leaves_vm_files_alone(vs: Lab) -> None:
    """The lab's own disks live in their folder; imports never write there."""
    assert not (vs.root / TEST_FOLDER / DEFAULT_FOLDER).exists()


def test_nfc_export_is_refused_clearly_on_vcsim_and_removes_its_clone(  # noqa: PLR0917
    vs: Lab,
    vcsim: Vcsim,
    scratch: Path,
    s3: Location,
    seaweed: SeaweedFS,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """exportMethod=nfc: vcsim has no ExportVm, so only the error path is provable here:
    a clear Unsupported error, the temporary linked clone removed again, the source's
    disk untouched and no object written."""
    data = pattern(MiB, 18)
    path = vs.put_disk(vs.name("nfc"), data)
    vm_id = vs.make_vm(vs.name("nfc"), [(path, MiB)], power_on=True)
    driver = create(config(vcsim, scratchDir=str(scratch), exportMethod="nfc"))
    with serve(driver) as provider:
        snap = finish(
            provider,
            provider.create_snapshot(
                pb.CreateSnapshotRequest(operation_id=op("s"), vm_id=vm_id, name="nfc")
            ),
        ).snapshot_result.snapshot_id
        location = s3("nfc/disk.vmdk")
        for snapshot in (snap, ""):
            if not snapshot:
                finish(
                    provider,
                    provider.power(
                        pb.PowerRequest(
                            operation_id=op("off"), vm_id=vm_id, action=pb.POWER_ACTION_OFF
                        )
                    ),
                )
            error = failure(
                provider,
                lambda snapshot=snapshot: provider.export_disk(  # type: ignore[misc]
                    pb.ExportDiskRequest(
                        operation_id=op("nfc"),
                        vm_id=vm_id,
                        disk_id=_disk_id(provider, vm_id),
                        snapshot_id=snapshot,
                        destination=location,
                    )
                ),
            )
            assert isinstance(error, errors.Unsupported) and "ExportVm" in error.message
        assert "nfc_export_clone" in capfd.readouterr().out  # the clone was really made
        assert [vm.name for vm in provider.iter_vms(name_filter="*-vr-export-*")] == []
    driver.close()
    assert (vs.root / TEST_FOLDER / f"{vs.name('nfc')}-flat.vmdk").read_bytes() == data
    bucket = location.url[5:].split("/", 1)[0]
    assert "Contents" not in seaweed.client().list_objects_v2(Bucket=bucket, Prefix="nfc/")


def test_cancelled_import_leaves_nothing_on_the_datastore(
    vs: Lab, provider: ProviderClient, tmp_path: Path
) -> None:
    """Cancelled while the flat file is being written: the partial file is deleted, no
    descriptor appears, and (scratch fixture) the provider's scratch is empty."""
    root = tmp_path / "nfs"
    root.mkdir()
    obj = root / "big.raw"
    size = 384 * MiB
    with open(obj, "wb") as handle:
        handle.write(pattern(MiB, 23))
        handle.truncate(size)
    sha = hashlib.sha256()
    with open(obj, "rb") as handle:
        while chunk := handle.read(8 * MiB):
            sha.update(chunk)
    name = vs.name("cancel-imp")
    task = provider.import_disk(
        pb.ImportDiskRequest(
            operation_id=op("imp"),
            source=pb.StorageLocation(
                backend=pb.STORAGE_BACKEND_NFS,
                url=f"nfs://{obj}",
                options={"base_url": f"nfs://{root}"},
            ),
            expected_sha256=sha.hexdigest(),
            source_format=pb.DISK_FORMAT_RAW,
            storage_hint=DATASTORE,
            target_volume_name=name,
        )
    )
    deadline = time.monotonic() + 120
    while provider.get_task(task.id).stage not in ("writing datastore", "verifying datastore"):
        assert time.monotonic() < deadline, "the import never reached the datastore"
        time.sleep(0.01)
    provider.cancel_task(task.id)
    final = provider.wait_task(task.id, timeout=120)
    assert final.state == pb.TASK_STATE_CANCELLED, final
    assert not any(p.exists() for p in imported_files(vs, name))


def test_delete_disk_only_deletes_imported_descriptors(vs: Lab, provider: ProviderClient) -> None:
    own = vs.put_disk(vs.name("own"), pattern(MiB, 24))  # a disk ImportDisk did not make
    junk = vs.root / DEFAULT_FOLDER / f"{vs.name('junk')}.vmdk"
    junk.parent.mkdir(exist_ok=True)
    junk.write_bytes(b"\x00not a descriptor")
    vs.paths.append(junk)
    for disk_id, match in (
        (own, "import folder"),
        (f"[{DATASTORE}] {DEFAULT_FOLDER}/{junk.name}", "not a VMDK descriptor"),
        ("[LocalDS_0] ../escape.vmdk", "inside the datastore"),
    ):
        error = failure(
            provider,
            lambda disk_id=disk_id: provider.delete_disk(  # type: ignore[misc]
                pb.DeleteDiskRequest(operation_id=op("dd"), disk_id=disk_id)
            ),
        )
        assert isinstance(error, errors.InvalidArgument) and match in error.message, error
    assert (vs.root / TEST_FOLDER / f"{vs.name('own')}-flat.vmdk").exists()
    assert junk.exists()
    gone = f"[{DATASTORE}] {DEFAULT_FOLDER}/{vs.name('never')}.vmdk"
    finish(provider, provider.delete_disk(pb.DeleteDiskRequest(operation_id=op("g"), disk_id=gone)))
