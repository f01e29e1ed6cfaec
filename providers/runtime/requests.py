"""Checks every provider applies to incoming requests before a driver sees them.

Drivers can rely on these invariants (ids present, sizes positive, each disk spec has
a source, storage locations complete) and only check what is specific to their
hypervisor. Each failure is ``InvalidArgument`` naming the field.
"""

from __future__ import annotations

from virtrigaud import errors
from virtrigaud.provider.v1 import provider_pb2 as pb

MAX_NAME_LENGTH = 128


def _require(value: str, field: str) -> None:
    if not value:
        raise errors.InvalidArgument(f"{field}: required")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise errors.InvalidArgument(f"{field}: must not contain control characters")


def _check_name(value: str, field: str) -> None:
    _require(value, field)
    if len(value) > MAX_NAME_LENGTH:
        raise errors.InvalidArgument(f"{field}: longer than {MAX_NAME_LENGTH} characters")
    if "/" in value or "\\" in value or value in (".", ".."):
        raise errors.InvalidArgument(f"{field}: must not contain path separators")


def _check_location(loc: pb.StorageLocation, field: str) -> None:
    if loc.backend == pb.STORAGE_BACKEND_UNSPECIFIED:
        raise errors.InvalidArgument(f"{field}.backend: required (s3, http or nfs)")
    _require(loc.url, f"{field}.url")


def describe_vm(request: pb.DescribeVMRequest) -> None:
    _require(request.vm_id, "vm_id")


def list_vms(request: pb.ListVMsRequest) -> None:
    if request.page_size < 0:
        raise errors.InvalidArgument("page_size: must not be negative")


def create_vm(request: pb.CreateVMRequest) -> None:
    _check_name(request.name, "name")
    if request.cpu <= 0:
        raise errors.InvalidArgument("cpu: must be at least 1")
    if request.memory_mib <= 0:
        raise errors.InvalidArgument("memory_mib: must be positive")
    for index, disk in enumerate(request.disks):
        source = disk.WhichOneof("source")
        if source is None:
            raise errors.InvalidArgument(f"disks[{index}]: needs an image or an imported disk")
        if source == "imported":
            _require(disk.imported.disk_id, f"disks[{index}].imported.disk_id")
        elif not (disk.image.name or disk.image.path):
            raise errors.InvalidArgument(f"disks[{index}].image: name or path required")
        if disk.size_bytes < 0:
            raise errors.InvalidArgument(f"disks[{index}].size_bytes: must not be negative")
    for index, nic in enumerate(request.nics):
        _require(nic.network, f"nics[{index}].network")


def delete_vm(request: pb.DeleteVMRequest) -> None:
    _require(request.vm_id, "vm_id")


def power(request: pb.PowerRequest) -> None:
    _require(request.vm_id, "vm_id")
    if request.action == pb.POWER_ACTION_UNSPECIFIED:
        raise errors.InvalidArgument("action: required (ON, OFF, SHUTDOWN or REBOOT)")
    if request.graceful_timeout_seconds < 0:
        raise errors.InvalidArgument("graceful_timeout_seconds: must not be negative")


def create_snapshot(request: pb.CreateSnapshotRequest) -> None:
    _require(request.vm_id, "vm_id")
    _check_name(request.name, "name")


def delete_snapshot(request: pb.DeleteSnapshotRequest) -> None:
    _require(request.vm_id, "vm_id")
    _require(request.snapshot_id, "snapshot_id")


def export_disk(request: pb.ExportDiskRequest) -> None:
    _require(request.vm_id, "vm_id")
    _require(request.disk_id, "disk_id")
    _check_location(request.destination, "destination")


def import_disk(request: pb.ImportDiskRequest) -> None:
    _check_location(request.source, "source")
    _check_name(request.target_volume_name, "target_volume_name")
    for field in ("expected_sha256", "expected_content_sha256"):
        value = getattr(request, field)
        if value and (len(value) != 64 or any(c not in "0123456789abcdef" for c in value)):
            raise errors.InvalidArgument(f"{field}: must be 64 lowercase hex characters")


def delete_object(request: pb.DeleteObjectRequest) -> None:
    _check_location(request.location, "location")


def storage_probe(request: pb.ValidateRequest) -> None:
    _check_location(request.storage_probe, "storage_probe")


def delete_disk(request: pb.DeleteDiskRequest) -> None:
    _require(request.disk_id, "disk_id")


def task_id(value: str) -> None:
    _require(value, "task_id")
