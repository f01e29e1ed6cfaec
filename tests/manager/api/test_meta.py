"""Durations, timestamps, conditions and the helpers on the kinds."""

from __future__ import annotations

import base64
import copy
from datetime import UTC, datetime, timedelta, timezone

import pytest

from manager.api import (
    Condition,
    ConditionStatus,
    DeletionPolicy,
    ImportedDiskRef,
    ObjectMeta,
    ObjectReference,
    RetryPolicy,
    Secret,
    VirtualMachine,
    VirtualMachineSpec,
    VMMigration,
    find_condition,
    format_duration,
    format_time,
    parse_duration,
    parse_time,
    set_condition,
)
from tests.manager.api.manifests import MIGRATION, VM
from virtrigaud.errors import ValidationError


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5m", 300), ("1h", 3600), ("90s", 90), ("1h30m", 5400), ("1.5h", 5400), ("250ms", 0.25)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["5", "m", "1d", "", "5 m", "-5m", "5m "])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValidationError) as exc:
        parse_duration(text, "spec.retryPolicy.backoffDuration")
    assert exc.value.field == "spec.retryPolicy.backoffDuration"


def test_format_duration() -> None:
    assert [format_duration(s) for s in (300, 5400, 90, 0, 3600)] == [
        "5m",
        "1h30m",
        "1m30s",
        "0s",
        "1h",
    ]
    assert parse_duration(format_duration(5430)) == 5430


def test_retry_backoff_is_exponential_and_capped() -> None:
    policy = RetryPolicy()
    assert [policy.delay_before_retry(n) for n in (1, 2, 3, 4, 5)] == [
        300,
        600,
        1200,
        1800,
        1800,
    ]
    fast = RetryPolicy(backoff_duration="10s", max_backoff_duration="25s")
    assert [fast.delay_before_retry(n) for n in (1, 2, 3)] == [10, 20, 25]


def test_timestamps() -> None:
    parsed = parse_time("2025-10-16T12:00:00+02:00")
    assert parsed == datetime(2025, 10, 16, 10, 0, tzinfo=UTC)
    assert format_time(parsed) == "2025-10-16T10:00:00Z"
    assert format_time(datetime(2025, 1, 1, 0, 0, 0, 500000, tzinfo=UTC)).endswith(".500000Z")
    assert parse_time("2025-10-16t10:00:00.123456789z").microsecond == 123456
    for bad in ("2025-10-16", "2025-10-16T10:00:00", "yesterday", "2025-10-16 10:00:00Z"):
        with pytest.raises(ValueError, match="not an RFC 3339 timestamp"):
            parse_time(bad)
    with pytest.raises(ValueError, match="month must be"):
        parse_time("2025-13-01T00:00:00Z")
    local = datetime(2025, 1, 1, 1, 0, tzinfo=timezone(timedelta(hours=1)))
    assert format_time(local) == "2025-01-01T00:00:00Z"


def test_set_condition_keeps_transition_time_while_status_is_unchanged() -> None:
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    t1 = t0 + timedelta(minutes=5)
    conditions: list[Condition] = []
    set_condition(
        conditions, Condition(type="Ready", status=ConditionStatus.FALSE, last_transition_time=t0)
    )
    set_condition(
        conditions,
        Condition(
            type="Ready", status=ConditionStatus.FALSE, last_transition_time=t1, reason="Waiting"
        ),
    )
    (ready,) = conditions
    assert ready.last_transition_time == t0
    assert ready.reason == "Waiting"
    set_condition(
        conditions, Condition(type="Ready", status=ConditionStatus.TRUE, last_transition_time=t1)
    )
    found = find_condition(conditions, "Ready")
    assert found is not None
    assert found.status is ConditionStatus.TRUE
    assert found.last_transition_time == t1
    assert find_condition(conditions, "Failed") is None


def test_target_namespace_defaults_to_source_namespace() -> None:
    migration = VMMigration.from_dict(MIGRATION)
    assert migration.spec.effective_target_namespace == "default"
    obj = copy.deepcopy(MIGRATION)
    obj["spec"]["targetNamespace"] = "production"
    assert VMMigration.from_dict(obj).spec.effective_target_namespace == "production"


def test_deletion_policy_defaults() -> None:
    created = VirtualMachine.from_dict(VM)
    assert not created.spec.adopted
    assert created.spec.effective_deletion_policy is DeletionPolicy.DELETE
    obj = copy.deepcopy(VM)
    del obj["spec"]["importedDisk"]
    obj["spec"]["vmId"] = "vm-42"
    adopted = VirtualMachine.from_dict(obj)
    assert adopted.spec.effective_deletion_policy is DeletionPolicy.RETAIN
    obj["spec"]["deletionPolicy"] = "Delete"
    assert VirtualMachine.from_dict(obj).spec.effective_deletion_policy is DeletionPolicy.DELETE


def test_secret_values() -> None:
    secret = Secret.from_dict(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "creds"},
            "data": {
                "accessKey": base64.b64encode(b"AKIA").decode(),
                "token": base64.b64encode(b"old").decode(),
            },
            "stringData": {"token": "new"},
        }
    )
    assert secret.decoded() == {"accessKey": b"AKIA", "token": b"new"}
    assert secret.get("accessKey") == "AKIA"
    assert secret.get("missing") is None


def test_status_types() -> None:
    obj = copy.deepcopy(MIGRATION)
    obj["status"]["disks"][0].update(
        {
            "id": "disk-0",
            "exportTaskRef": "task-1",
            "bytesTransferred": 1024,
            "totalBytes": 4096,
            "checksum": "sha256:" + "a" * 64,
            "contentChecksum": "sha256:" + "b" * 64,
            "intermediateStorageURL": "s3://vm-migrations/m1/vda.qcow2",
            "importedDiskId": "vm1-vda",
            "format": "qcow2",
            "sizeBytes": 4096,
            "attempt": 2,
        }
    )
    obj["status"]["sourcePoweredOff"] = True
    migration = VMMigration.from_dict(obj)
    assert migration.status is not None
    disk = migration.status.disks[0]
    assert disk.intermediate_storage_url == "s3://vm-migrations/m1/vda.qcow2"
    assert disk.imported_disk_id == "vm1-vda"
    assert disk.attempt == 2
    assert migration.status.source_powered_off is True
    assert migration.to_dict()["status"]["disks"][0] == obj["status"]["disks"][0]


def test_objects_built_in_python_can_be_validated() -> None:
    vm = VirtualMachine(
        metadata=ObjectMeta(name="migrated", namespace="default"),
        spec=VirtualMachineSpec(
            provider_ref=ObjectReference(name="libvirt"),
            imported_disk=ImportedDiskRef(disk_id="migrated-vda"),
        ),
    )
    vm.validate()
    assert vm.to_dict()["spec"]["importedDisk"] == {"diskID": "migrated-vda", "format": "qcow2"}
    vm.spec.image_ref = ObjectReference(name="ubuntu")
    with pytest.raises(ValidationError) as exc:
        vm.validate()
    assert exc.value.field == "spec.importedDisk"
    vm.spec.image_ref = None
    vm.metadata.name = "Not A Name"
    with pytest.raises(ValidationError) as exc:
        vm.validate()
    assert exc.value.field == "metadata.name"
