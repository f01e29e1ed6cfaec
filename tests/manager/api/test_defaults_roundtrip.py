"""Defaults are the documented ones and the same in the CRD and the types; objects
round-trip through to_dict/from_dict and through YAML."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from manager.api import (
    DiskFormat,
    Provider,
    Secret,
    SourcePowerPolicy,
    VirtualMachine,
    VMMigration,
    load_manifests,
    parse_manifest,
)
from manager.api.schema import validator_for
from tests.manager.api.manifests import BASES
from tests.manager.api.spec_examples import MINIMAL_MIGRATION, MINIMAL_VM, all_classified


def test_vmmigration_defaults() -> None:
    migration = VMMigration.from_dict(MINIMAL_MIGRATION)
    spec = migration.spec
    assert spec.cleanup_policy.delete_intermediate is True
    assert spec.cleanup_policy.delete_snapshot is True
    assert spec.cleanup_policy.delete_source is False
    assert spec.retry_policy.max_attempts == 3
    assert spec.retry_policy.backoff_duration == "5m"
    assert spec.retry_policy.max_backoff_duration == "30m"
    assert spec.source_power_policy is SourcePowerPolicy.KEEP
    assert spec.target_namespace is None
    assert spec.effective_target_namespace == "default"
    assert spec.target_disk_format is None
    assert migration.status is None

    defaulted = validator_for("VMMigration").default(MINIMAL_MIGRATION)
    assert defaulted["spec"]["cleanupPolicy"] == {
        "deleteIntermediate": True,
        "deleteSnapshot": True,
        "deleteSource": False,
    }
    assert defaulted["spec"]["retryPolicy"] == {
        "maxAttempts": 3,
        "backoffDuration": "5m",
        "maxBackoffDuration": "30m",
    }
    assert defaulted["spec"]["sourcePowerPolicy"] == "Keep"
    assert defaulted["spec"]["targetPowerPolicy"] == "Off"
    assert migration.to_dict() == defaulted


def test_partial_policies_are_completed_by_defaults() -> None:
    obj = copy.deepcopy(MINIMAL_MIGRATION)
    obj["spec"]["cleanupPolicy"] = {"deleteSource": True}
    obj["spec"]["retryPolicy"] = {"maxAttempts": 5, "backoffDuration": "10m"}
    migration = VMMigration.from_dict(obj)
    assert migration.spec.cleanup_policy.delete_source is True
    assert migration.spec.cleanup_policy.delete_intermediate is True
    assert migration.spec.retry_policy.max_backoff_duration == "30m"
    defaulted = validator_for("VMMigration").default(obj)
    assert defaulted["spec"]["cleanupPolicy"]["deleteSnapshot"] is True
    assert defaulted["spec"]["retryPolicy"]["maxBackoffDuration"] == "30m"
    assert migration.to_dict() == defaulted


def test_virtualmachine_imported_disk_format_defaults_to_qcow2() -> None:
    obj = copy.deepcopy(MINIMAL_VM)
    obj["spec"]["importedDisk"] = {"diskID": "d-boot"}
    obj["spec"]["disks"] = [{"name": "data", "importedDisk": {"diskID": "d-data"}}]
    vm = VirtualMachine.from_dict(obj)
    assert vm.spec.imported_disk is not None
    assert vm.spec.imported_disk.format is DiskFormat.QCOW2
    assert vm.spec.disks[0].imported_disk is not None
    assert vm.spec.disks[0].imported_disk.format is DiskFormat.QCOW2
    assert vm.spec.disks[0].format is None
    assert vm.spec.power_state is None
    defaulted = validator_for("VirtualMachine").default(obj)
    assert defaulted["spec"]["importedDisk"]["format"] == "qcow2"
    assert defaulted["spec"]["disks"][0]["importedDisk"]["format"] == "qcow2"
    assert vm.to_dict() == defaulted


def test_provider_runtime_defaults_apply_only_inside_runtime() -> None:
    obj: dict[str, Any] = {
        "apiVersion": "infra.virtrigaud.io/v1beta1",
        "kind": "Provider",
        "metadata": {"name": "kvm"},
        "spec": {"type": "libvirt", "endpoint": "qemu:///system"},
    }
    assert Provider.from_dict(obj).spec.runtime is None
    assert "runtime" not in validator_for("Provider").default(obj)["spec"]
    obj["spec"]["runtime"] = {"image": "provider:dev"}
    provider = Provider.from_dict(obj)
    assert provider.spec.runtime is not None
    assert provider.spec.runtime.replicas == 1
    assert provider.spec.runtime.port == 9443
    assert provider.to_dict() == validator_for("Provider").default(obj)


def test_secret_type_defaults_to_opaque() -> None:
    obj = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}
    assert Secret.from_dict(obj).type == "Opaque"
    assert validator_for("Secret").default(obj)["type"] == "Opaque"


def test_explicit_values_win_over_defaults() -> None:
    obj = copy.deepcopy(MINIMAL_MIGRATION)
    obj["spec"]["sourcePowerPolicy"] = "ShutdownBeforeSnapshot"
    obj["spec"]["cleanupPolicy"] = {"deleteIntermediate": False}
    migration = VMMigration.from_dict(obj)
    assert migration.spec.source_power_policy is SourcePowerPolicy.SHUTDOWN_BEFORE_SNAPSHOT
    assert migration.spec.cleanup_policy.delete_intermediate is False
    assert migration.to_dict()["spec"]["cleanupPolicy"]["deleteIntermediate"] is False


def test_nulls_are_pruned_like_the_api_server_does() -> None:
    obj = copy.deepcopy(MINIMAL_MIGRATION)
    obj["spec"]["targetStorageHint"] = None
    obj["spec"]["retryPolicy"] = None
    migration = VMMigration.from_dict(obj)
    assert migration.spec.target_storage_hint is None
    assert migration.spec.retry_policy.max_attempts == 3
    defaulted = validator_for("VMMigration").validate(obj)
    assert "targetStorageHint" not in defaulted
    assert migration.to_dict() == defaulted


ROUND_TRIP = [item.manifest for item in all_classified() if item.manifest is not None] + [
    base for base, _ in BASES.values()
]


@pytest.mark.parametrize("manifest", ROUND_TRIP)
def test_round_trip(manifest: dict[str, Any]) -> None:
    obj = parse_manifest(manifest)
    out = obj.to_dict()
    assert out == validator_for(obj.KIND).default(manifest)
    again = parse_manifest(out)
    assert again == obj
    assert again.to_dict() == out
    (reloaded,) = load_manifests(yaml.safe_dump(out))
    assert reloaded == obj


def test_to_dict_omits_unset_optionals() -> None:
    out = VMMigration.from_dict(MINIMAL_MIGRATION).to_dict()
    assert set(out) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(out["spec"]) == {
        "sourceName",
        "sourceNamespace",
        "targetProviderRef",
        "targetName",
        "storage",
        "cleanupPolicy",
        "retryPolicy",
        "sourcePowerPolicy",
        "targetPowerPolicy",
    }
    assert out["spec"]["targetProviderRef"] == {"name": "target-provider"}
    assert out["metadata"] == {"name": "fragment-host", "namespace": "default"}
