"""VirtualMachine controller through the runtime, against the memory driver served by
the real provider runtime: create from imported disks, adoption, power, finalizer."""

from __future__ import annotations

import time
from typing import Any

import pytest

from manager.api import Provider, VirtualMachine
from manager.connections import ProviderConnections
from manager.controllers import vmspec
from manager.controllers.provider import ProviderReconciler
from manager.controllers.virtualmachine import FINALIZER, VirtualMachineReconciler
from manager.providerclient import ProviderClient, raise_for_task
from manager.runtime.manager import Manager
from manager.store.base import ObjectKey
from manager.store.sqlite import SQLiteStore
from tests.manager.controllers.conftest import (
    Hypervisor,
    MiB,
    add_provider,
    set_endpoint,
    wait_for,
)
from tests.manager.store import factory
from virtrigaud import errors
from virtrigaud.provider.v1 import provider_pb2 as pb


def _get(store: SQLiteStore, name: str) -> dict[str, Any] | None:
    try:
        return store.get("VirtualMachine", "default", name)
    except errors.NotFound:
        return None


def _status(store: SQLiteStore, name: str) -> dict[str, Any]:
    found = _get(store, name)
    return dict((found or {}).get("status") or {})


def wait_phase(store: SQLiteStore, name: str, phase: str, timeout: float = 60) -> dict[str, Any]:
    status: dict[str, Any] = wait_for(
        lambda: _status(store, name),
        lambda s: s.get("phase") == phase,
        timeout,
        f"{name} phase {phase}",
    )
    return status


def _ready(status: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in status["conditions"] if c["type"] == "Ready")
    return found


def _reasons(store: SQLiteStore, name: str) -> list[str]:
    return [e.reason for e in store.events_for("VirtualMachine", "default", name)]


@pytest.fixture
def mem(store: SQLiteStore, hv: Hypervisor, running: Manager) -> Hypervisor:
    """A ready Provider "mem" served by the memory driver, controllers running."""
    add_provider(store, hv.endpoint)
    return hv


def web_vm(hv: Hypervisor, **spec: Any) -> dict[str, Any]:
    boot = hv.volume("web-boot.raw", b"\x01" * MiB)
    data = hv.volume("web-data.raw", b"\x02" * (2 * MiB))
    body = {
        "importedDisk": {"diskID": boot, "format": "raw", "source": "migration"},
        "disks": [{"name": "data", "importedDisk": {"diskID": data, "format": "raw"}}],
        "networks": [
            {"name": "eth0", "network": "default", "mac": "52:54:00:AA:BB:CC", "model": "e1000"}
        ],
        "resources": {"cpu": 2, "memoryMiB": 512},
        "firmware": "UEFI",
        **spec,
    }
    return factory.vm("web", provider_name="mem", **body)


def test_creates_a_vm_from_imported_disks(store: SQLiteStore, mem: Hypervisor) -> None:
    created = store.create(web_vm(mem))
    status = wait_phase(store, "web", "Ready")
    made = mem.by_name("web")
    assert made is not None and status["id"] == made.id
    assert (made.cpu, made.memory_mib, made.firmware) == (2, 512, pb.FIRMWARE_UEFI)
    assert [d.path for d in made.disks] == [
        str(mem.driver.volumes["default/web-boot.raw"]),
        str(mem.driver.volumes["default/web-data.raw"]),
    ]
    assert [(n.network, n.mac, n.model) for n in made.nics] == [
        ("default", "52:54:00:aa:bb:cc", "e1000")
    ]
    assert made.power_state == pb.POWER_STATE_ON  # powerState omitted: On
    assert status["powerState"] == "On"
    assert [(d["name"], d["sizeBytes"], d["format"]) for d in status["disks"]] == [
        ("disk0", MiB, "raw"),
        ("disk1", 2 * MiB, "raw"),
    ]
    ready = _ready(status)
    assert (ready["status"], ready["reason"]) == ("True", "VMReady")
    assert status["observedGeneration"] == 1
    assert status["provider"]["provider"] == "default/mem"
    assert "createTask" not in status["provider"]
    stored = store.get("VirtualMachine", "default", "web")
    assert stored["metadata"]["finalizers"] == [FINALIZER]
    assert "Created" in _reasons(store, "web")
    # The operation id was <uid>/<generation>/create: the same request under that id
    # returns the task that made this VM instead of creating a second one.
    vm = VirtualMachine.from_dict(stored)
    provider = store.get("Provider", "default", "mem")
    request = vmspec.create_request(
        vm, Provider.from_dict(provider), f"{created['metadata']['uid']}/1/create"
    )
    with ProviderClient(mem.endpoint) as client:
        task = raise_for_task(client.wait_task(client.create_vm(request).id, timeout=30))
    assert task.create_vm_result.vm_id == status["id"]
    assert len([v for v in mem.driver.vms.values() if v.name == "web"]) == 1


def test_a_ready_vm_is_left_alone(store: SQLiteStore, mem: Hypervisor) -> None:
    """No write loop: once Ready, status writes stop (the controller's own write does
    not keep waking it up with a changed status)."""
    store.create(web_vm(mem))
    wait_phase(store, "web", "Ready")
    version = store.get("VirtualMachine", "default", "web")["metadata"]["resourceVersion"]
    provider_version = store.get("Provider", "default", "mem")["metadata"]["resourceVersion"]
    time.sleep(1.0)  # any write loop would show within a second
    assert store.get("VirtualMachine", "default", "web")["metadata"]["resourceVersion"] == version
    assert (
        store.get("Provider", "default", "mem")["metadata"]["resourceVersion"] == provider_version
    )


def test_deleting_a_created_vm_deletes_it_and_its_disks(
    store: SQLiteStore, mem: Hypervisor
) -> None:
    store.create(web_vm(mem))
    vm_id = wait_phase(store, "web", "Ready")["id"]
    boot = mem.driver.volumes["default/web-boot.raw"]
    assert boot.exists()
    store.delete("VirtualMachine", "default", "web")
    wait_for(lambda: _get(store, "web"), lambda found: found is None, 60, "object gone")
    assert vm_id not in mem.driver.vms
    assert not boot.exists()  # deleted with its disks
    assert "Deleted" in _reasons(store, "web")


def test_retain_disks_annotation_keeps_the_disks(store: SQLiteStore, mem: Hypervisor) -> None:
    manifest = web_vm(mem)
    manifest["metadata"]["annotations"] = {"virtrigaud.io/retain-disks": "true"}
    store.create(manifest)
    vm_id = wait_phase(store, "web", "Ready")["id"]
    store.delete("VirtualMachine", "default", "web")
    wait_for(lambda: _get(store, "web"), lambda found: found is None, 60, "object gone")
    assert vm_id not in mem.driver.vms
    assert mem.driver.volumes["default/web-boot.raw"].exists()


def test_adopted_vm_is_described_never_created_and_never_deleted(
    store: SQLiteStore, mem: Hypervisor
) -> None:
    source = mem.driver.add_vm("legacy", {"vda": b"\x05" * MiB}, cpu=4, memory_mib=2048)
    before = set(mem.driver.vms)
    store.create(factory.vm("legacy", provider_name="mem", vmId=source.id))
    status = wait_phase(store, "legacy", "Ready")
    assert status["id"] == source.id
    assert status["powerState"] == "Off"  # no powerState: left as it is
    assert status["disks"] == [
        {
            "name": "vda",
            "id": "vda",
            "path": source.disks[0].path,
            "format": "raw",
            "sizeBytes": MiB,
        }
    ]
    assert _ready(status)["reason"] == "Adopted"
    assert set(mem.driver.vms) == before  # nothing created
    assert mem.driver.vms[source.id].power_state == pb.POWER_STATE_OFF
    assert "finalizers" not in store.get("VirtualMachine", "default", "legacy")["metadata"]
    assert "Adopted" in _reasons(store, "legacy")
    store.delete("VirtualMachine", "default", "legacy")
    assert _get(store, "legacy") is None  # no finalizer: gone at once
    assert source.id in mem.driver.vms
    assert mem.driver.volumes  # and its disk is still there
    assert all(p.exists() for p in mem.driver.volumes.values())


def test_adopted_vm_with_delete_policy_is_deleted_with_the_object(
    store: SQLiteStore, mem: Hypervisor
) -> None:
    source = mem.driver.add_vm("doomed", {"vda": b"\x05" * MiB})
    store.create(factory.vm("doomed", provider_name="mem", vmId=source.id, deletionPolicy="Delete"))
    wait_phase(store, "doomed", "Ready")
    assert store.get("VirtualMachine", "default", "doomed")["metadata"]["finalizers"] == [FINALIZER]
    store.delete("VirtualMachine", "default", "doomed")
    wait_for(lambda: _get(store, "doomed"), lambda found: found is None, 60, "object gone")
    assert source.id not in mem.driver.vms


def test_adopting_an_unknown_vm_id_fails_saying_so(store: SQLiteStore, mem: Hypervisor) -> None:
    store.create(factory.vm("ghost", provider_name="mem", vmId="no-such-vm"))
    status = wait_phase(store, "ghost", "Failed")
    assert _ready(status)["reason"] == "VMNotFound"
    assert "no-such-vm" in status["message"]


def test_power_state_off_then_on(store: SQLiteStore, mem: Hypervisor) -> None:
    store.create(web_vm(mem, powerState="Off"))
    status = wait_phase(store, "web", "Ready")
    assert status["powerState"] == "Off"
    assert mem.driver.vms[status["id"]].power_state == pb.POWER_STATE_OFF
    current = store.get("VirtualMachine", "default", "web")
    current["spec"]["powerState"] = "On"
    store.update(current)
    status = wait_for(
        lambda: _status(store, "web"),
        lambda s: s.get("powerState") == "On" and s.get("phase") == "Ready",
        60,
        "powered on",
    )
    assert mem.driver.vms[status["id"]].power_state == pb.POWER_STATE_ON
    assert status["observedGeneration"] == 2
    assert status["provider"]["powerSeq"] == "1"
    assert "PowerChanged" in _reasons(store, "web")


def test_adopted_vm_with_explicit_power_state_is_powered(
    store: SQLiteStore, mem: Hypervisor
) -> None:
    source = mem.driver.add_vm("legacy", {"vda": b"\x05" * MiB})
    store.create(factory.vm("legacy", provider_name="mem", vmId=source.id, powerState="On"))
    wait_for(
        lambda: _status(store, "legacy"),
        lambda s: s.get("powerState") == "On" and s.get("phase") == "Ready",
        60,
        "adopted VM powered on",
    )
    assert mem.driver.vms[source.id].power_state == pb.POWER_STATE_ON


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"classRef": {"name": "small"}}, "spec.classRef"),
        ({"disks": [{"name": "scratch", "sizeGiB": 5}]}, "spec.disks[0].importedDisk"),
    ],
)
def test_unsupported_specs_fail_naming_the_field(
    store: SQLiteStore, mem: Hypervisor, spec: dict[str, Any], field: str
) -> None:
    before = set(mem.driver.vms)
    store.create(factory.vm("bad", provider_name="mem", **spec))
    status = wait_phase(store, "bad", "Failed")
    assert _ready(status)["reason"] == "InvalidSpec"
    assert status["message"].startswith(field)
    assert set(mem.driver.vms) == before


def test_a_create_the_provider_refuses_fails_with_its_message(
    store: SQLiteStore, mem: Hypervisor
) -> None:
    store.create(
        factory.vm("orphan", provider_name="mem", importedDisk={"diskID": "default/missing.raw"})
    )
    status = wait_phase(store, "orphan", "Failed")
    assert _ready(status)["reason"] == "CreateFailed"
    assert "disks[0].imported.disk_id" in status["message"]
    assert "CreateFailed" in _reasons(store, "orphan")


def test_waits_for_its_provider_then_creates(
    store: SQLiteStore, hv: Hypervisor, running: Manager
) -> None:
    add_provider(store, None)  # not started yet
    store.create(web_vm(hv))
    status = wait_for(
        lambda: _status(store, "web"),
        lambda s: s.get("phase") == "Pending" and _ready(s)["reason"] == "ProviderNotReady",
        60,
        "waiting for the provider",
    )
    assert "default/mem" in status["message"]
    assert hv.by_name("web") is None
    set_endpoint(store, "mem", hv.endpoint)  # now it runs
    wait_phase(store, "web", "Ready")
    assert hv.by_name("web") is not None


def _reconcile_until(
    reconciler: VirtualMachineReconciler, name: str, store: SQLiteStore, phase: str
) -> dict[str, Any]:
    key = ObjectKey("VirtualMachine", "default", name)
    status: dict[str, Any] = wait_for(
        lambda: (reconciler.reconcile(key), _status(store, name))[1],
        lambda s: s.get("phase") == phase,
        60,
        f"{name} {phase}",
    )
    return status


@pytest.mark.parametrize("vm_survived", [True, False])
def test_a_create_task_lost_with_a_provider_restart_is_recovered(
    store: SQLiteStore, connections: ProviderConnections, hv: Hypervisor, vm_survived: bool
) -> None:
    add_provider(store, hv.endpoint)
    ProviderReconciler(store, connections).reconcile(ObjectKey("Provider", "default", "mem"))
    reconciler = VirtualMachineReconciler(store, connections)
    made = hv.driver.add_vm("web", {"vda": b"\x01" * MiB}) if vm_survived else None
    created = store.create(web_vm(hv))
    store.update_status(  # what a previous run left: a task id the provider forgot
        {**created, "status": {"phase": "Provisioning", "provider": {"createTask": "gone"}}}
    )
    status = _reconcile_until(reconciler, "web", store, "Ready")
    assert "createTask" not in status["provider"]
    named = [vm for vm in hv.driver.vms.values() if vm.name == "web"]
    assert len(named) == 1  # never created twice
    if made is not None:
        assert status["id"] == made.id  # found again by name
    else:
        assert status["id"] == named[0].id  # submitted again


def test_a_retryable_create_failure_is_retried_after_its_backoff_not_at_once(
    store: SQLiteStore, mem: Hypervisor
) -> None:
    mem.driver.inject["create_vm"] = errors.Unavailable("hypervisor busy")
    store.create(web_vm(mem))
    status = wait_for(
        lambda: _status(store, "web"),
        lambda s: s.get("provider", {}).get("createAttempt") == "1",
        60,
        "first retry scheduled",
    )
    assert _ready(status)["reason"] == "CreateRetrying"
    assert "hypervisor busy" in status["message"] and "retry 1 in 5s" in status["message"]
    assert "createRetryAt" in status["provider"]
    time.sleep(1.0)  # the status write woke the controller: it must still wait
    assert _reasons(store, "web").count("CreateRetrying") == 1
    assert _status(store, "web")["provider"]["createAttempt"] == "1"
    del mem.driver.inject["create_vm"]
    status = wait_phase(store, "web", "Ready", timeout=60)
    assert "createRetryAt" not in status["provider"]
    assert len([v for v in mem.driver.vms.values() if v.name == "web"]) == 1


def test_a_cold_migration_holds_its_source_off_until_it_fails(
    store: SQLiteStore, mem: Hypervisor
) -> None:
    source = mem.driver.add_vm("legacy", {"vda": b"\x05" * MiB})  # off, as after the shutdown
    store.create(
        factory.migration("cold", source="legacy", sourcePowerPolicy="ShutdownBeforeSnapshot")
    )
    store.create(factory.vm("legacy", provider_name="mem", vmId=source.id, powerState="On"))
    status = wait_phase(store, "legacy", "Ready")
    assert "power held by VMMigration default/cold (cold migration)" in _ready(status)["message"]
    assert status["powerState"] == "Off"
    assert mem.driver.vms[source.id].power_state == pb.POWER_STATE_OFF
    assert "PowerChanged" not in _reasons(store, "legacy")
    # The migration failed: the hold ends and spec.powerState On applies again.
    migration = store.get("VMMigration", "default", "cold")
    store.update_status({**migration, "status": {"phase": "Failed"}})
    wait_for(
        lambda: _status(store, "legacy"),
        lambda s: s.get("powerState") == "On",
        60,
        "source powered on once the hold ended",
    )
    assert mem.driver.vms[source.id].power_state == pb.POWER_STATE_ON


def test_a_source_exported_without_a_snapshot_is_held_off_until_the_migration_ends(
    store: SQLiteStore, mem: Hypervisor
) -> None:
    source = mem.driver.add_vm("plain", {"vda": b"\x06" * MiB})  # off
    created = store.create(factory.migration("warm", source="plain"))
    snapshotted = {
        "type": "Snapshotted",
        "status": "True",
        "reason": "SourceOffNoSnapshot",
        "lastTransitionTime": "2026-11-26T10:00:00Z",
    }
    store.update_status({**created, "status": {"phase": "Exporting", "conditions": [snapshotted]}})
    store.create(factory.vm("plain", provider_name="mem", vmId=source.id, powerState="On"))
    status = wait_phase(store, "plain", "Ready")
    assert "power held by VMMigration default/warm" in _ready(status)["message"]
    assert mem.driver.vms[source.id].power_state == pb.POWER_STATE_OFF
    migration = store.get("VMMigration", "default", "warm")
    store.update_status({**migration, "status": {**migration["status"], "phase": "Ready"}})
    wait_for(
        lambda: _status(store, "plain"),
        lambda s: s.get("powerState") == "On",
        60,
        "powered on once the migration was Ready",
    )
