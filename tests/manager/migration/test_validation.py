"""Validation rules 1-6, each with its exact message; waiting vs failing; NIC mapping."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

import pytest

from manager.api import MigrationPhase, MigrationStorage, StorageType
from manager.migration import planner
from manager.migration.model import OtherMigration
from tests.manager.migration import flows
from tests.manager.migration.builders import (
    NOW,
    Driver,
    cond,
    events,
    failure,
    good_obs,
    provider,
    source_object,
    valid,
    vm,
)
from virtrigaud.provider.v1 import provider_pb2 as pb

TIMEOUT = 300.0


def _validate(obs_changes: dict[str, Any], *, advance: float = 0.0, **spec: Any) -> Driver:
    d, obs = flows.validating(**spec)
    d.step(dataclasses.replace(obs, **obs_changes), advance=advance)
    return d


WAITING = [
    (
        {"source_object": None},
        "SourceNotFound",
        "source VirtualMachine default/src not found",
    ),
    (
        {"source_object": source_object(vm_id=None), "source_vm": None},
        "SourceNotBound",
        "source VirtualMachine default/src is not bound to a VM yet "
        "(neither status.id nor spec.vmId is set)",
    ),
    (
        {"source_provider": provider("srcp", ready=False, message="connection refused")},
        "SourceProviderNotReady",
        "source Provider default/srcp is not ready: connection refused",
    ),
    (
        {"target_provider": None, "validation": None},
        "TargetProviderNotFound",
        "target Provider default/tgt not found",
    ),
    (
        {"target_provider": provider("tgt", ready=None)},
        "TargetProviderNotReady",
        "target Provider default/tgt is not ready: not checked yet",
    ),
    (
        {"secret_found": False},
        "SecretNotFound",
        "credentials Secret default/creds not found",
    ),
    (  # the target hypervisor is down (or refuses the login): may be an outage
        {
            "validation": valid(
                ("connection", False, "cannot connect to qemu:///system: connection refused"),
                ("storage:default", False, "not checked: no connection"),
            )
        },
        "TargetUnreachable",
        "target Provider default/tgt cannot reach its hypervisor: cannot connect to "
        "qemu:///system: connection refused",
    ),
    (  # the storage endpoint is down: may come back
        {"validation": valid(("intermediate-storage", False, "UNAVAILABLE: s3://b/k: timed out"))},
        "StorageUnreachable",
        "target Provider default/tgt cannot use the intermediate storage: UNAVAILABLE",
    ),
]


@pytest.mark.parametrize(("changes", "reason", "message"), WAITING)
def test_problems_time_can_fix_wait_then_fail(
    changes: dict[str, Any], reason: str, message: str
) -> None:
    storage = {"type": "nfs", "path": "/mnt/m", "credentialsSecretRef": {"name": "creds"}}
    d = _validate(changes, storage=storage)
    assert d.phase() is MigrationPhase.VALIDATING
    status, got_reason, got_message = cond(d.status, "Validated")
    assert (status, got_reason) == ("False", reason)
    assert got_message is not None and message in got_message
    d.step(dataclasses.replace(good_obs(), **changes), advance=TIMEOUT + 1)
    assert d.phase() is MigrationPhase.FAILED
    assert cond(d.status, "Failed")[1] == "ValidationFailed"
    assert d.status.message is not None and message in d.status.message
    assert d.status.retry_attempts is None  # validation burns no retry


def test_a_problem_that_goes_away_in_time_passes() -> None:
    d = _validate({"target_provider": provider("tgt", ready=False, message="starting")})
    assert d.phase() is MigrationPhase.VALIDATING
    d.step(good_obs(), advance=10)
    assert d.phase() is MigrationPhase.SNAPSHOTTING


DEFINITE = [
    (
        {"source_vm": failure(pb.ERROR_CODE_NOT_FOUND, "VM 'vm-1' not found")},
        "source VM vm-1 not found on Provider default/srcp: VM 'vm-1' not found",
    ),
    (
        {
            "validation": valid(
                ("connection", True, "ok"), ("storage:fast", False, "pool 'fast' does not exist")
            )
        },
        "target Provider default/tgt: pool 'fast' does not exist",
    ),
    (
        {
            "source_caps": pb.Capabilities(
                storage_backends=[pb.STORAGE_BACKEND_S3], features=[pb.FEATURE_SNAPSHOTS]
            )
        },
        "source Provider default/srcp cannot use nfs storage (it supports: s3)",
    ),
    (
        {"source_caps": pb.Capabilities(storage_backends=[pb.STORAGE_BACKEND_NFS])},
        "source Provider default/srcp does not support snapshots",
    ),
]


@pytest.mark.parametrize(("changes", "message"), DEFINITE)
def test_definite_problems_fail_at_once(changes: dict[str, Any], message: str) -> None:
    d = _validate(changes)
    assert d.phase() is MigrationPhase.FAILED
    assert d.status.message == message
    assert cond(d.status, "Validated")[::2] == ("False", message)
    assert cond(d.status, "Failed")[:2] == ("True", "ValidationFailed")
    assert events(d.step(good_obs())) == []  # terminal


def test_rule3_storage_configuration() -> None:
    d, obs = flows.validating()
    d.mig.spec.storage = MigrationStorage(type=StorageType.S3)  # no bucket
    d.step(obs)
    assert d.phase() is MigrationPhase.FAILED
    assert d.status.message == "spec.storage.bucket: required when storage type is s3"
    d, obs = flows.validating()
    d.mig.spec.storage = MigrationStorage(type=StorageType.HTTP)
    d.step(obs)
    assert d.status.message == "spec.storage.endpoint: required when storage type is http"


def test_rule5_target_format_must_be_storable() -> None:
    d = _validate({}, targetDiskFormat="vmdk")
    assert d.phase() is MigrationPhase.FAILED
    assert d.status.message == "disk vda: target Provider cannot store vmdk disks (it imports: raw)"


def test_rule5_target_name_taken_by_another_vm() -> None:
    from tests.manager.migration.builders import source_object as vm_object

    taken = vm_object()
    taken.metadata.name = "migrated"
    d = _validate({"target_object": taken})
    assert d.status.message == "target VirtualMachine default/migrated already exists"


def _other(name: str, created_delta: float, phase: MigrationPhase | None = None) -> OtherMigration:
    return OtherMigration("default", name, NOW + timedelta(seconds=created_delta - 60), phase)


def test_rule6_newer_migration_of_the_same_source_is_refused() -> None:
    d = _validate({"others": (_other("older", -30, MigrationPhase.EXPORTING),)})
    assert d.phase() is MigrationPhase.FAILED
    assert d.status.message == (
        "source VirtualMachine default/src is already being migrated by VMMigration "
        "default/older (created earlier)"
    )


def test_rule6_the_older_migration_proceeds() -> None:
    d = _validate({"others": (_other("newer", +30, MigrationPhase.VALIDATING),)})
    assert d.phase() is MigrationPhase.SNAPSHOTTING


def test_rule6_terminal_or_deleted_migrations_do_not_conflict() -> None:
    done = _other("older", -30, MigrationPhase.READY)
    gone = dataclasses.replace(_other("old2", -20, MigrationPhase.EXPORTING), deleting=True)
    d = _validate({"others": (done, gone)})
    assert d.phase() is MigrationPhase.SNAPSHOTTING


def test_all_problems_are_reported_together() -> None:
    d = _validate(
        {
            "source_vm": failure(pb.ERROR_CODE_NOT_FOUND, "gone"),
            "others": (_other("older", -30),),
        }
    )
    assert d.status.message == (
        "source VM vm-1 not found on Provider default/srcp: gone; source VirtualMachine "
        "default/src is already being migrated by VMMigration default/older (created earlier)"
    )


# -- NIC mapping -------------------------------------------------------------------------


def test_unmapped_nic_keeps_its_network_name_and_is_reported() -> None:
    two = vm(nics=(("net0", "default"), ("net1", "br-storage")))
    d, obs = flows.validating(two)
    plan = d.step(obs)
    note = (
        "source NIC net1 (network 'br-storage') has no targetNetworkHints entry; mapped to "
        "network 'br-storage' (same name as on the source)"
    )
    assert ("NetworkNotMapped", note) in events(plan)
    assert note in (cond(d.status, "Validated")[2] or "")
    _, nets = planner.validate_request(d.mig, two, obs.target_provider)
    assert nets == ["default", "br-storage"]  # rule 5 asks the target for both


def test_unmapped_nic_goes_to_the_target_default_network() -> None:
    two = vm(nics=(("net0", "default"), ("net1", "br-storage")))
    target = provider("tgt", defaults={"network": "lan", "storagePool": "fast"})
    d, obs = flows.validating(two)
    plan = d.step(dataclasses.replace(obs, target_provider=target))
    assert (
        "NetworkNotMapped",
        "source NIC net1 (network 'br-storage') has no targetNetworkHints entry; mapped to "
        "the target Provider's default network 'lan'",
    ) in events(plan)
    assert planner.validate_request(d.mig, two, target) == ("fast", ["default", "lan"])


def test_unreachable_target_network_fails_with_the_providers_words() -> None:
    two = vm(nics=(("net0", "default"), ("net1", "br-storage")))
    d, obs = flows.validating(two)
    checks = valid(
        ("network:default", True, "exists"),
        ("network:br-storage", False, "network 'br-storage' does not exist"),
    )
    d.step(dataclasses.replace(obs, validation=checks))
    assert d.status.message == "target Provider default/tgt: network 'br-storage' does not exist"
    assert d.phase() is MigrationPhase.FAILED
    assert cond(d.status, "Validated")[1] == "TargetNetworkInvalid"


def test_hints_by_nic_name_and_unused_hints() -> None:
    from manager.api import NetworkHint
    from manager.migration.target import map_nics

    nics = vm(nics=(("net0", "a"), ("net1", "b"))).nics
    hints = [
        NetworkHint(name="net1", bridge="br1"),
        NetworkHint(name="eth0", network="lan"),
        NetworkHint(network="x"),
    ]
    plans, notes = map_nics(list(nics), hints, None)
    assert [(p.source_id, p.name, p.network, p.bridge, p.note) for p in plans] == [
        ("net0", "net0", "a", None, plans[0].note),
        ("net1", "net1", None, "br1", None),
    ]
    assert plans[0].note is not None  # hint 0 names net1, so net0 has no hint
    assert notes == [
        "targetNetworkHints[1] (eth0) matches no source NIC; ignored",
        "targetNetworkHints[2] (x) matches no source NIC; ignored",
    ]


def test_a_vlan_tag_goes_onto_a_bridge_but_not_onto_a_named_network() -> None:
    from manager.api import NetworkHint
    from manager.migration.target import map_nics

    nics = list(vm(nics=(("net0", "vmbr0"), ("net1", "vmbr0"))).nics)
    for nic in nics:
        nic.vlan_id = 12
    hints = [NetworkHint(name="net0", network="lan"), NetworkHint(name="net1", bridge="br0")]
    to_network, to_bridge = map_nics(nics, hints, None)[0]
    assert (to_network.network, to_network.vlan) == ("lan", 0)
    assert to_network.note == (
        "VLAN tag 12 of source NIC net0 not carried: network 'lan' selects the segment on "
        "the target"
    )
    assert (to_bridge.bridge, to_bridge.vlan, to_bridge.note) == ("br0", 12, None)


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("UNAUTHENTICATED", "StorageAuthenticationFailed"),
        ("PERMISSION_DENIED", "StoragePermissionDenied"),
        ("NOT_FOUND", "StorageNotFound"),
        ("INVALID_ARGUMENT", "StorageInvalid"),
    ],
)
def test_a_refused_storage_probe_fails_before_the_snapshot(code: str, reason: str) -> None:
    d, obs = flows.validating(vm())
    refused = valid(("intermediate-storage", False, f"{code}: s3://b/k: refused"))
    plan = d.step(dataclasses.replace(obs, validation=refused))
    assert d.phase() is MigrationPhase.FAILED
    assert cond(d.status, "Validated")[1] == reason
    assert f"cannot use the intermediate storage: {code}: s3://b/k: refused" in (
        d.status.message or ""
    )
    assert not [a for a in plan.actions if type(a).__name__ == "ExportDisk"]
    assert d.status.snapshot_id is None
