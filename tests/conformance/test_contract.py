"""The provider contract, as every provider must honour it.

Each test runs against every registered target (tests/conformance/targets.py) that
can back the methods named in its ``contract`` marker. Data tests compare the
SHA256 of the bytes that actually reached storage with what the provider reported.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable

import pytest

from manager.providerclient import raise_for_task
from tests.conformance.targets import ConformanceTarget
from virtrigaud import errors
from virtrigaud.provider.v1 import provider_pb2 as pb

contract = pytest.mark.contract
TASK_TIMEOUT = 600.0


def _op(label: str) -> str:
    return f"conformance/{label}/{uuid.uuid4().hex[:8]}"


def _finish(target: ConformanceTarget, task: pb.Task) -> pb.Task:
    return raise_for_task(target.client.wait_task(task.id, timeout=TASK_TIMEOUT))


def _error_of(call: Callable[[], pb.Task], target: ConformanceTarget) -> errors.VirtrigaudError:
    """The typed error of a mutating call, whether the RPC or its task reports it."""
    try:
        _finish(target, call())
    except errors.VirtrigaudError as exc:
        return exc
    raise AssertionError("the call succeeded")


def _stored(target: ConformanceTarget, url: str) -> pb.StorageLocation:
    """The location of an exported object, with the target's storage credentials."""
    location = target.export_location("unused")
    location.url = url
    return location


def _first_disk(target: ConformanceTarget) -> pb.Disk:
    vm = target.client.describe_vm(target.source_vm_id)
    disks = [d for d in vm.disks if d.device != pb.DISK_DEVICE_CDROM]
    assert disks, "the source VM must have a disk"
    return disks[0]


def _export(target: ConformanceTarget, disk_id: str, key: str, **kw: object) -> pb.Task:
    request = pb.ExportDiskRequest(
        operation_id=_op("export"),
        vm_id=target.source_vm_id,
        disk_id=disk_id,
        destination=target.export_location(key),
        **kw,  # type: ignore[arg-type]
    )
    return _finish(target, target.client.export_disk(request))


@contract("GetCapabilities")
def test_capabilities_describe_the_provider(target: ConformanceTarget) -> None:
    caps = target.client.get_capabilities()
    assert caps.provider_type == target.provider_type
    assert caps.export_formats and caps.import_formats
    assert pb.DISK_FORMAT_UNSPECIFIED not in caps.export_formats
    assert caps.native_format in caps.import_formats
    assert caps.storage_backends
    assert caps.max_concurrent_tasks >= 1


@contract("Validate")
def test_validate_reports_each_check(target: ConformanceTarget) -> None:
    good = target.client.validate(storage_hint=target.storage_hint, networks=[target.network])
    assert good.ok, [c.message for c in good.checks if not c.ok]
    assert any(target.storage_hint in c.name for c in good.checks)
    bad = target.client.validate(storage_hint="no-such-storage-zz9", networks=["no-such-net-zz9"])
    assert not bad.ok
    failed = {c.name: c.message for c in bad.checks if not c.ok}
    assert any("no-such-storage-zz9" in name + msg for name, msg in failed.items())
    assert any("no-such-net-zz9" in name + msg for name, msg in failed.items())


@contract("ListVMs")
def test_list_vms_pages_cover_every_vm_exactly_once(target: ConformanceTarget) -> None:
    everything = target.client.list_vms(page_size=1000)
    assert not everything.next_page_token
    paged = list(target.client.iter_vms(page_size=1))
    assert [vm.id for vm in paged] == [vm.id for vm in everything.vms]
    assert len({vm.id for vm in paged}) == len(paged)
    assert target.source_vm_id in {vm.id for vm in paged}
    with pytest.raises(errors.InvalidArgument, match="page_token"):
        target.client.list_vms(page_token="garbage!")


@contract("ListVMs", "DescribeVM")
def test_inventory_describes_disks_and_nics(target: ConformanceTarget) -> None:
    listed = {vm.id: vm for vm in target.client.iter_vms()}[target.source_vm_id]
    described = target.client.describe_vm(target.source_vm_id)
    assert described.name == listed.name
    assert described.cpu >= 1 and described.memory_mib > 0
    assert described.power_state != pb.POWER_STATE_UNSPECIFIED
    for disk in (d for d in described.disks if d.device == pb.DISK_DEVICE_DISK):
        assert disk.id and disk.path
        assert disk.format != pb.DISK_FORMAT_UNSPECIFIED
        assert disk.virtual_size_bytes > 0
    for nic in described.nics:
        assert nic.network and nic.mac
    by_filter = target.client.list_vms(name_filter=listed.name)
    assert listed.id in {vm.id for vm in by_filter.vms}
    assert all(vm.name == listed.name for vm in by_filter.vms)


@contract("DescribeVM")
def test_describe_unknown_vm_is_not_found(target: ConformanceTarget) -> None:
    with pytest.raises(errors.NotFound):
        target.client.describe_vm("virtrigaud-no-such-vm-0000")


@contract("CreateSnapshot", "DeleteSnapshot", "DescribeVM")
def test_snapshot_appears_and_is_removed(target: ConformanceTarget) -> None:
    before = {s.id for s in target.client.describe_vm(target.source_vm_id).snapshots}
    task = _finish(
        target,
        target.client.create_snapshot(
            pb.CreateSnapshotRequest(
                operation_id=_op("snap"), vm_id=target.source_vm_id, name="virtrigaud-conformance"
            )
        ),
    )
    snap_id = task.snapshot_result.snapshot_id
    assert snap_id and snap_id not in before
    assert snap_id in {s.id for s in target.client.describe_vm(target.source_vm_id).snapshots}
    _finish(
        target,
        target.client.delete_snapshot(
            pb.DeleteSnapshotRequest(
                operation_id=_op("unsnap"), vm_id=target.source_vm_id, snapshot_id=snap_id
            )
        ),
    )
    after = {s.id for s in target.client.describe_vm(target.source_vm_id).snapshots}
    assert after == before


@contract("ExportDisk", "GetTask", "DescribeVM")
def test_export_stores_the_bytes_it_reports(target: ConformanceTarget) -> None:
    disk = _first_disk(target)
    task = _export(target, disk.id, f"export-{uuid.uuid4().hex[:6]}.img")
    result = task.export_result
    stored = target.read_object(result.url)
    assert len(stored) == result.size_bytes
    assert hashlib.sha256(stored).hexdigest() == result.sha256
    assert result.virtual_size_bytes == disk.virtual_size_bytes
    assert task.bytes_total in (task.bytes_done, 0)
    assert task.percent == 100.0


@contract("ExportDisk", "GetTask", "DescribeVM")
def test_export_with_the_same_operation_id_is_one_task(target: ConformanceTarget) -> None:
    disk = _first_disk(target)
    request = pb.ExportDiskRequest(
        operation_id=_op("idem"),
        vm_id=target.source_vm_id,
        disk_id=disk.id,
        destination=target.export_location(f"idem-{uuid.uuid4().hex[:6]}.img"),
    )
    first = target.client.export_disk(request)
    second = target.client.export_disk(request)
    assert first.id == second.id
    _finish(target, first)
    assert target.client.export_disk(request).id == first.id  # also after it finished
    changed = pb.ExportDiskRequest()
    changed.CopyFrom(request)
    changed.destination.url += ".other"
    with pytest.raises(errors.InvalidArgument, match="operation_id"):
        target.client.export_disk(changed)


@contract("ExportDisk", "GetTask")
def test_export_of_an_unknown_disk_fails_with_not_found(target: ConformanceTarget) -> None:
    error = _error_of(
        lambda: target.client.export_disk(
            pb.ExportDiskRequest(
                operation_id=_op("missing"),
                vm_id=target.source_vm_id,
                disk_id="no-such-disk-zz9",
                destination=target.export_location("never.img"),
            )
        ),
        target,
    )
    assert isinstance(error, errors.NotFound)
    assert not target.object_exists(target.export_location("never.img").url)


@contract("ExportDisk")
def test_export_request_without_a_destination_is_invalid(target: ConformanceTarget) -> None:
    with pytest.raises(errors.InvalidArgument, match="destination"):
        target.client.export_disk(
            pb.ExportDiskRequest(operation_id=_op("bad"), vm_id=target.source_vm_id, disk_id="x")
        )


@contract("ExportDisk", "ImportDisk", "GetTask", "DescribeVM")
def test_import_refuses_a_wrong_checksum_and_leaves_nothing(target: ConformanceTarget) -> None:
    exported = _export(target, _first_disk(target).id, f"sum-{uuid.uuid4().hex[:6]}.img")
    name = f"vr-conf-{uuid.uuid4().hex[:6]}"
    bad = pb.ImportDiskRequest(
        operation_id=_op("import-bad"),
        source=target.export_location(exported.export_result.url.rsplit("/", 1)[-1]),
        expected_sha256="0" * 64,
        storage_hint=target.storage_hint,
        target_volume_name=name,
        source_format=exported.export_result.format,
    )
    bad.source.url = exported.export_result.url
    error = _error_of(lambda: target.client.import_disk(bad), target)
    assert isinstance(error, errors.ChecksumMismatch)
    good = pb.ImportDiskRequest()
    good.CopyFrom(bad)
    good.operation_id = _op("import-good")
    good.expected_sha256 = exported.export_result.sha256
    # The same volume name is free again: the failed import left nothing behind.
    task = _finish(target, target.client.import_disk(good))
    assert task.import_result.disk_id
    assert task.import_result.sha256 == exported.export_result.sha256


@contract("ExportDisk", "ImportDisk", "CreateVM", "DescribeVM", "Power", "DeleteVM", "GetTask")
def test_vm_lifecycle_from_imported_disks(target: ConformanceTarget) -> None:
    source = target.client.describe_vm(target.source_vm_id)
    disk = _first_disk(target)
    exported = _export(target, disk.id, f"life-{uuid.uuid4().hex[:6]}.img")
    imported = _finish(
        target,
        target.client.import_disk(
            pb.ImportDiskRequest(
                operation_id=_op("import"),
                source=pb.StorageLocation(
                    backend=target.export_location("x").backend,
                    url=exported.export_result.url,
                    credentials=target.export_location("x").credentials,
                    options=target.export_location("x").options,
                ),
                expected_sha256=exported.export_result.sha256,
                source_format=exported.export_result.format,
                storage_hint=target.storage_hint,
                target_volume_name=f"vr-life-{uuid.uuid4().hex[:6]}",
            )
        ),
    ).import_result
    name = f"vr-conformance-{uuid.uuid4().hex[:6]}"
    created = _finish(
        target,
        target.client.create_vm(
            pb.CreateVMRequest(
                operation_id=_op("create"),
                name=name,
                cpu=1,
                memory_mib=128,
                firmware=pb.FIRMWARE_BIOS,
                storage_hint=target.storage_hint,
                disks=[
                    pb.DiskSpec(
                        imported=pb.ImportedDisk(
                            disk_id=imported.disk_id,
                            path=imported.path,
                            format=imported.format,
                            size_bytes=imported.size_bytes,
                        )
                    )
                ],
                nics=[pb.NicSpec(network=target.network, mac="52:54:00:12:34:56")],
            )
        ),
    )
    vm_id = created.create_vm_result.vm_id
    vm = target.client.describe_vm(vm_id)
    assert vm.name == name
    assert (vm.cpu, vm.memory_mib) == (1, 128)
    assert [d.virtual_size_bytes for d in vm.disks if d.device == pb.DISK_DEVICE_DISK] == [
        source.disks[0].virtual_size_bytes
    ]
    assert [(n.network, n.mac) for n in vm.nics] == [(target.network, "52:54:00:12:34:56")]
    for action, state in (
        (pb.POWER_ACTION_ON, pb.POWER_STATE_ON),
        (pb.POWER_ACTION_OFF, pb.POWER_STATE_OFF),
    ):
        _finish(
            target,
            target.client.power(
                pb.PowerRequest(operation_id=_op("power"), vm_id=vm_id, action=action)
            ),
        )
        assert target.client.describe_vm(vm_id).power_state == state
    _finish(
        target,
        target.client.delete_vm(
            pb.DeleteVMRequest(operation_id=_op("delete"), vm_id=vm_id, delete_disks=True)
        ),
    )
    with pytest.raises(errors.NotFound):
        target.client.describe_vm(vm_id)


@contract("CreateVM")
def test_create_vm_rejects_incomplete_requests(target: ConformanceTarget) -> None:
    cases = {
        "name": pb.CreateVMRequest(operation_id=_op("c"), cpu=1, memory_mib=128),
        "cpu": pb.CreateVMRequest(operation_id=_op("c"), name="x", memory_mib=128),
        "disks[0]": pb.CreateVMRequest(
            operation_id=_op("c"),
            name="x",
            cpu=1,
            memory_mib=128,
            disks=[pb.DiskSpec(bus="virtio")],
        ),
    }
    for field, request in cases.items():
        with pytest.raises(errors.InvalidArgument, match=field.replace("[", r"\[")):
            target.client.create_vm(request)


@contract("ExportDisk", "CancelTask", "GetTask")
def test_cancelled_export_stops_and_leaves_no_object(target: ConformanceTarget) -> None:
    if target.slow_disk is None:
        pytest.fail("a target registered for CancelTask must provide slow_disk")
    vm_id, disk_id = target.slow_disk
    location = target.export_location(f"cancel-{uuid.uuid4().hex[:6]}.img")
    task = target.client.export_disk(
        pb.ExportDiskRequest(
            operation_id=_op("cancel"), vm_id=vm_id, disk_id=disk_id, destination=location
        )
    )
    deadline = time.monotonic() + TASK_TIMEOUT
    while target.client.get_task(task.id).bytes_done == 0:
        assert time.monotonic() < deadline, "export never started moving bytes"
        time.sleep(0.05)
    target.client.cancel_task(task.id)
    final = target.client.wait_task(task.id, timeout=TASK_TIMEOUT)
    assert final.state == pb.TASK_STATE_CANCELLED
    assert final.error.code == pb.ERROR_CODE_CANCELLED
    assert not target.object_exists(location.url)


@contract("ExportDisk", "WatchTask", "DescribeVM")
def test_watch_streams_until_the_task_is_terminal(target: ConformanceTarget) -> None:
    disk = _first_disk(target)
    task = target.client.export_disk(
        pb.ExportDiskRequest(
            operation_id=_op("watch"),
            vm_id=target.source_vm_id,
            disk_id=disk.id,
            destination=target.export_location(f"watch-{uuid.uuid4().hex[:6]}.img"),
        )
    )
    updates = list(target.client.watch_task(task.id, timeout=TASK_TIMEOUT))
    assert updates and all(u.id == task.id for u in updates)
    assert updates[-1].state == pb.TASK_STATE_SUCCEEDED
    assert [u.bytes_done for u in updates] == sorted(u.bytes_done for u in updates)


@contract("GetTask", "CancelTask")
def test_unknown_tasks_are_not_found(target: ConformanceTarget) -> None:
    for call in (target.client.get_task, target.client.cancel_task):
        with pytest.raises(errors.NotFound):
            call("task-does-not-exist")


@contract("ExportDisk", "DeleteObject", "GetTask", "DescribeVM")
def test_delete_object_removes_an_export_and_is_idempotent(target: ConformanceTarget) -> None:
    exported = _export(target, _first_disk(target).id, f"del-{uuid.uuid4().hex[:6]}.img")
    url = exported.export_result.url
    assert target.object_exists(url)
    for label in ("first", "again"):
        _finish(
            target,
            target.client.delete_object(
                pb.DeleteObjectRequest(
                    operation_id=_op(f"delete-{label}"), location=_stored(target, url)
                )
            ),
        )
        assert not target.object_exists(url)


@contract("ExportDisk", "GetTask", "DescribeVM")
def test_export_reports_the_format_it_read(target: ConformanceTarget) -> None:
    disk = _first_disk(target)
    exported = _export(target, disk.id, f"fmt-{uuid.uuid4().hex[:6]}.img")
    assert exported.export_result.source_format == disk.format


def _import_exported(target: ConformanceTarget, result: pb.ExportResult, name: str) -> pb.Task:
    request = pb.ImportDiskRequest(
        operation_id=_op("import"),
        source=_stored(target, result.url),
        expected_sha256=result.sha256,
        source_format=result.format,
        storage_hint=target.storage_hint,
        target_volume_name=name,
    )
    return _finish(target, target.client.import_disk(request))


@contract("ExportDisk", "ImportDisk", "DeleteDisk", "CreateVM", "DeleteVM", "GetTask", "DescribeVM")
def test_delete_disk_removes_an_unattached_import_only(target: ConformanceTarget) -> None:
    exported = _export(target, _first_disk(target).id, f"dd-{uuid.uuid4().hex[:6]}.img")
    name = f"vr-dd-{uuid.uuid4().hex[:6]}"
    imported = _import_exported(target, exported.export_result, name).import_result

    def delete_disk(label: str) -> pb.Task:
        return target.client.delete_disk(
            pb.DeleteDiskRequest(operation_id=_op(label), disk_id=imported.disk_id)
        )

    created = _finish(
        target,
        target.client.create_vm(
            pb.CreateVMRequest(
                operation_id=_op("create"),
                name=f"vr-dd-vm-{uuid.uuid4().hex[:6]}",
                cpu=1,
                memory_mib=128,
                storage_hint=target.storage_hint,
                disks=[
                    pb.DiskSpec(
                        imported=pb.ImportedDisk(
                            disk_id=imported.disk_id,
                            path=imported.path,
                            format=imported.format,
                            size_bytes=imported.size_bytes,
                        )
                    )
                ],
            )
        ),
    )
    vm_id = created.create_vm_result.vm_id
    # Attached to a VM: refused, and the VM keeps its disk.
    error = _error_of(lambda: delete_disk("attached"), target)
    assert isinstance(error, errors.FailedPrecondition)
    assert len(target.client.describe_vm(vm_id).disks) == 1
    _finish(
        target,
        target.client.delete_vm(
            pb.DeleteVMRequest(operation_id=_op("delete-vm"), vm_id=vm_id, delete_disks=False)
        ),
    )
    _finish(target, delete_disk("first"))
    _finish(target, delete_disk("again"))  # gone already: success
    # The name is free again: importing it anew succeeds instead of AlreadyExists.
    again = _import_exported(target, exported.export_result, name).import_result
    assert again.disk_id == imported.disk_id
    _finish(target, delete_disk("cleanup"))


@contract("Validate")
def test_validate_probes_the_intermediate_storage(target: ConformanceTarget) -> None:
    location = target.export_location(f"probe-{uuid.uuid4().hex[:6]}.txt")
    response = target.client.validate(storage_probe=location)
    probe = [c for c in response.checks if c.name == "intermediate-storage"]
    assert len(probe) == 1 and probe[0].ok, probe
    assert not target.object_exists(location.url)  # written, read back and deleted
    # A location the provider cannot use is a failed check that says why ...
    bad = pb.StorageLocation()
    bad.CopyFrom(location)
    bad.url = "ftp://nowhere/x"
    (refused,) = [
        c for c in target.client.validate(storage_probe=bad).checks if c.name == probe[0].name
    ]
    assert not refused.ok and refused.message.startswith("INVALID_ARGUMENT: "), refused
    # ... and a request without one is refused as a whole.
    with pytest.raises(errors.InvalidArgument, match=r"storage_probe\.backend"):
        target.client.validate(storage_probe=pb.StorageLocation(url="nfs:///x"))
