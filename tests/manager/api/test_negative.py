"""Invalid manifests are rejected by both the CRD schema and ``from_dict``, and both name
the same field (the JSON path) in the error."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from manager.api import VirtualMachine, VMMigration
from manager.api.schema import validator_for
from tests.manager.api.manifests import BASES, MIGRATION, VM
from virtrigaud.errors import ValidationError


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation: set (or, with DELETE, remove) the value at a dotted path."""

    def mutate(obj: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        target: Any = obj
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        if value is DELETE:
            del target[leaf]
        elif isinstance(target, list):
            target[int(leaf)] = value
        else:
            target[leaf] = value

    return mutate


DELETE = object()

# (kind, mutation, field named by the error)
CASES: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    # VirtualMachine
    ("VirtualMachine", _set("spec.imageRef", {"name": "ubuntu"}), "spec.importedDisk"),
    ("VirtualMachine", _set("spec.importedDisk", DELETE), "spec"),
    ("VirtualMachine", _set("spec.importedDisk.format", "iso"), "spec.importedDisk.format"),
    (
        "VirtualMachine",
        _set("spec.disks.1.importedDisk.format", "qcow3"),
        "spec.disks[1].importedDisk.format",
    ),
    ("VirtualMachine", _set("spec.importedDisk.diskID", DELETE), "spec.importedDisk.diskID"),
    ("VirtualMachine", _set("spec.importedDisk.source", "copy"), "spec.importedDisk.source"),
    ("VirtualMachine", _set("spec.providerRef", DELETE), "spec.providerRef"),
    ("VirtualMachine", _set("spec.powerState", True), "spec.powerState"),  # unquoted On
    ("VirtualMachine", _set("spec.firmware", "EFI"), "spec.firmware"),
    ("VirtualMachine", _set("spec.networks.0.mac", "52:54:00"), "spec.networks[0].mac"),
    ("VirtualMachine", _set("spec.networks.0.vlan", 5000), "spec.networks[0].vlan"),
    ("VirtualMachine", _set("spec.disks.1.name", "data0"), "spec.disks[1].name"),
    ("VirtualMachine", _set("spec.disks.0.sizeGiB", 0), "spec.disks[0].sizeGiB"),
    ("VirtualMachine", _set("spec.resources.cpu", "four"), "spec.resources.cpu"),
    ("VirtualMachine", _set("spec.imageref", {"name": "typo"}), "spec.imageref"),
    ("VirtualMachine", _set("metadata.name", "Bad_Name"), "metadata.name"),
    ("VirtualMachine", _set("spec.deletionPolicy", "Orphan"), "spec.deletionPolicy"),
    # VMMigration: storage rules (validation rule 3)
    ("VMMigration", _set("spec.storage.bucket", DELETE), "spec.storage.bucket"),
    ("VMMigration", _set("spec.storage.region", ""), "spec.storage.region"),
    ("VMMigration", _set("spec.storage", {"type": "http"}), "spec.storage.endpoint"),
    ("VMMigration", _set("spec.storage", {"type": "nfs"}), "spec.storage.path"),
    ("VMMigration", _set("spec.storage.type", "ftp"), "spec.storage.type"),
    ("VMMigration", _set("spec.storage.type", DELETE), "spec.storage.type"),
    ("VMMigration", _set("spec.storage.bucket", "Bad_Bucket"), "spec.storage.bucket"),
    (
        "VMMigration",
        _set("spec.storage", {"type": "nfs", "path": "relative/dir"}),
        "spec.storage.path",
    ),
    # VMMigration: required fields
    ("VMMigration", _set("spec.sourceName", DELETE), "spec.sourceName"),
    ("VMMigration", _set("spec.sourceNamespace", DELETE), "spec.sourceNamespace"),
    ("VMMigration", _set("spec.targetProviderRef", DELETE), "spec.targetProviderRef"),
    ("VMMigration", _set("spec.targetProviderRef.name", DELETE), "spec.targetProviderRef.name"),
    ("VMMigration", _set("spec.targetName", DELETE), "spec.targetName"),
    ("VMMigration", _set("spec.storage", DELETE), "spec.storage"),
    ("VMMigration", _set("spec", DELETE), "spec"),
    ("VMMigration", _set("metadata", DELETE), "metadata"),
    ("VMMigration", _set("metadata.name", DELETE), "metadata.name"),
    # VMMigration: durations and numbers
    (
        "VMMigration",
        _set("spec.retryPolicy", {"backoffDuration": "5 minutes"}),
        "spec.retryPolicy.backoffDuration",
    ),
    (
        "VMMigration",
        _set("spec.retryPolicy", {"maxBackoffDuration": "1d"}),
        "spec.retryPolicy.maxBackoffDuration",
    ),
    (
        "VMMigration",
        _set("spec.retryPolicy", {"backoffDuration": "2h"}),  # > default maxBackoff 30m
        "spec.retryPolicy.backoffDuration",
    ),
    ("VMMigration", _set("spec.retryPolicy", {"maxAttempts": -1}), "spec.retryPolicy.maxAttempts"),
    (
        "VMMigration",
        _set("spec.cleanupPolicy", {"deleteSource": "yes"}),
        "spec.cleanupPolicy.deleteSource",
    ),
    ("VMMigration", _set("spec.targetDiskFormat", "qcow3"), "spec.targetDiskFormat"),
    ("VMMigration", _set("spec.targetNamespace", "Prod"), "spec.targetNamespace"),
    (
        "VMMigration",
        _set("spec.targetResourceHints", {"cpu": 0}),
        "spec.targetResourceHints.cpu",
    ),
    ("VMMigration", _set("spec.sourcePowerPolicy", "PowerOff"), "spec.sourcePowerPolicy"),
    # VMMigration: status
    ("VMMigration", _set("status.progress", 150), "status.progress"),
    ("VMMigration", _set("status.progress", "45"), "status.progress"),
    ("VMMigration", _set("status.phase", "Done"), "status.phase"),
    ("VMMigration", _set("status.bytesTransferred", -1), "status.bytesTransferred"),
    ("VMMigration", _set("status.startTime", "2025-10-16"), "status.startTime"),
    ("VMMigration", _set("status.conditions.0.status", "Yes"), "status.conditions[0].status"),
    (
        "VMMigration",
        _set("status.conditions.0.lastTransitionTime", "yesterday"),
        "status.conditions[0].lastTransitionTime",
    ),
    (
        "VMMigration",
        _set("status.conditions.0.lastTransitionTime", DELETE),
        "status.conditions[0].lastTransitionTime",
    ),
    ("VMMigration", _set("status.disks.1.name", "vda"), "status.disks[1].name"),
    ("VMMigration", _set("status.disks.1.phase", "Uploading"), "status.disks[1].phase"),
    ("VMMigration", _set("status.disks.0.format", "iso"), "status.disks[0].format"),
    # Provider
    ("Provider", _set("spec.type", "hyperv"), "spec.type"),
    ("Provider", _set("spec.endpoint", DELETE), "spec.endpoint"),
    ("Provider", _set("spec.runtime.port", 70000), "spec.runtime.port"),
    ("Provider", _set("spec.runtime.replicas", -1), "spec.runtime.replicas"),
    ("Provider", _set("spec.runtime.image", DELETE), "spec.runtime.image"),
    (
        "Provider",
        _set("spec.runtime.resources.limits.cpu", "lots"),
        "spec.runtime.resources.limits.cpu",
    ),
    (
        "Provider",
        _set("spec.allowedStorageHosts", ["s3.example.com", "s3.example.com"]),
        "spec.allowedStorageHosts[1]",
    ),
    (
        "Provider",
        _set("status", {"capabilities": {"diskFormats": ["iso"]}}),
        "status.capabilities.diskFormats[0]",
    ),
    # Secret
    ("Secret", _set("data.accessKey", "not base64!"), "data.accessKey"),
    ("Secret", _set("stringData", {"bad key": "x"}), 'stringData["bad key"]'),
    # apiVersion / kind
    ("VMMigration", _set("apiVersion", "infra.virtrigaud.io/v1"), "apiVersion"),
    ("Provider", _set("kind", "VMMigration"), "kind"),
]


def _ids() -> list[str]:
    counts: dict[str, int] = {}
    out = []
    for kind, _, field in CASES:
        key = f"{kind}-{field}"
        counts[key] = counts.get(key, 0) + 1
        out.append(f"{key}-{counts[key]}")
    return out


def test_bases_are_valid() -> None:
    for kind, (base, from_dict) in BASES.items():
        assert validator_for(kind).errors(base) == []
        assert from_dict(base).to_dict() == validator_for(kind).default(base)


@pytest.mark.parametrize(("kind", "mutate", "field"), CASES, ids=_ids())
def test_rejected_by_schema_and_from_dict(
    kind: str, mutate: Callable[[dict[str, Any]], None], field: str
) -> None:
    base, from_dict = BASES[kind]
    obj = copy.deepcopy(base)
    mutate(obj)

    errors = validator_for(kind).errors(obj)
    assert {e.field for e in errors} == {field}, [str(e) for e in errors]
    with pytest.raises(ValidationError) as schema_exc:
        validator_for(kind).validate(obj)
    assert schema_exc.value.field == field
    assert str(schema_exc.value).startswith(f"{field}: ")

    with pytest.raises(ValidationError) as exc:
        from_dict(obj)
    assert exc.value.field == field
    assert str(exc.value).startswith(f"{field}: ")
    assert exc.value.reason  # a message beyond the field name


def test_messages_explain_the_problem() -> None:
    obj = copy.deepcopy(MIGRATION)
    del obj["spec"]["storage"]["bucket"]
    with pytest.raises(ValidationError) as exc:
        VMMigration.from_dict(obj)
    assert str(exc.value) == "spec.storage.bucket: required when storage type is s3"
    (error,) = validator_for("VMMigration").errors(obj)
    assert str(error) == "spec.storage.bucket: bucket is required when storage type is s3"

    obj = copy.deepcopy(VM)
    obj["spec"]["imageRef"] = {"name": "ubuntu"}
    with pytest.raises(ValidationError, match="mutually exclusive"):
        VirtualMachine.from_dict(obj)
    (error,) = validator_for("VirtualMachine").errors(obj)
    assert "mutually exclusive" in error.reason

    obj = copy.deepcopy(VM)
    obj["spec"]["disks"][1]["importedDisk"]["format"] = "qcow3"
    with pytest.raises(ValidationError, match="qcow2, vmdk, raw, vdi, vhdx"):
        VirtualMachine.from_dict(obj)


def test_adopted_vm_needs_no_boot_source() -> None:
    obj = copy.deepcopy(VM)
    del obj["spec"]["importedDisk"]
    obj["spec"]["vmId"] = "vm-1234"
    assert validator_for("VirtualMachine").errors(obj) == []
    vm = VirtualMachine.from_dict(obj)
    assert vm.spec.adopted


def test_s3_region_is_optional() -> None:
    """The reference's rule 3 lists region for s3; it is optional here (see the CRD
    description): S3-compatible servers such as MinIO or SeaweedFS need none."""
    obj = copy.deepcopy(MIGRATION)
    obj["spec"]["storage"] = {
        "type": "s3",
        "bucket": "vm-migrations",
        "endpoint": "minio.example.com:9000",
        "prefix": "team-a/",
    }
    assert validator_for("VMMigration").errors(obj) == []
    storage = VMMigration.from_dict(obj).spec.storage
    assert storage.region is None
    assert storage.prefix == "team-a/"
