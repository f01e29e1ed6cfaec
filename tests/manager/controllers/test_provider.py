"""Provider controller against real provider servers (memory driver and libvirt)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from manager.connections import ProviderConnections
from manager.controllers.provider import ProviderReconciler
from manager.providerclient import ProviderClient
from manager.store.base import ObjectKey
from manager.store.sqlite import SQLiteStore
from providers.libvirt.client import LibvirtClient
from providers.libvirt.driver import LibvirtDriver
from providers.runtime import server as runtime_server
from tests.fakes.memory_provider import MemoryProvider
from tests.manager.controllers.conftest import Hypervisor, add_provider
from tests.servers.libvirtd import LibvirtEnv
from virtrigaud.provider.v1 import provider_pb2 as pb

KEY = ObjectKey("Provider", "default", "mem")


def _status(store: SQLiteStore, name: str = "mem") -> dict:  # type: ignore[type-arg]
    return dict(store.get("Provider", "default", name).get("status") or {})


def _ready(status: dict) -> dict:  # type: ignore[type-arg]
    return next(c for c in status["conditions"] if c["type"] == "Ready")


def test_healthy_provider_records_capabilities_and_ready(
    store: SQLiteStore, connections: ProviderConnections, hv: Hypervisor
) -> None:
    add_provider(store, hv.endpoint)
    reconciler = ProviderReconciler(store, connections, healthy_interval=40)
    result = reconciler.reconcile(KEY)
    status = _status(store)
    assert status["ready"] is True
    assert status["endpoint"] == hv.endpoint
    assert status["capabilities"] == {
        "providerType": "libvirt",
        "version": "test",
        "diskFormats": ["raw"],
        "storageBackends": ["nfs"],
        "features": ["Snapshots", "ImportedDisks", "ImageClone"],
        "maxConcurrentTasks": 2,  # the served registry's worker count
    }
    assert status["lastHealthCheck"].endswith("Z")
    assert status["observedGeneration"] == 1
    ready = _ready(status)
    assert (ready["status"], ready["reason"]) == ("True", "HealthCheckSucceeded")
    assert hv.endpoint in ready["message"]
    assert result.requeue_after == 40
    events = store.events_for("Provider", "default", "mem")
    assert [(e.type, e.reason) for e in events] == [("Normal", "ProviderReady")]


def test_a_second_pass_right_after_does_not_check_again(
    store: SQLiteStore, connections: ProviderConnections, hv: Hypervisor
) -> None:
    add_provider(store, hv.endpoint)
    reconciler = ProviderReconciler(store, connections, healthy_interval=40)
    reconciler.reconcile(KEY)
    version = store.get("Provider", "default", "mem")["metadata"]["resourceVersion"]
    again = reconciler.reconcile(KEY)  # e.g. woken by its own status write
    assert store.get("Provider", "default", "mem")["metadata"]["resourceVersion"] == version
    assert again.requeue_after is not None and 0 < again.requeue_after <= 40


def test_unhealthy_provider_is_not_ready_with_a_clear_message_and_requeued(
    store: SQLiteStore, connections: ProviderConnections, hv: Hypervisor
) -> None:
    add_provider(store, hv.endpoint)
    reconciler = ProviderReconciler(store, connections, healthy_interval=40, unhealthy_interval=7)
    reconciler.reconcile(KEY)
    hv.server.stop(grace=0.5)
    spec_change = store.get("Provider", "default", "mem")
    spec_change["spec"]["defaults"] = {"network": "default"}  # new generation: check now
    store.update(spec_change)
    result = reconciler.reconcile(KEY)
    status = _status(store)
    assert status["ready"] is False
    ready = _ready(status)
    assert (ready["status"], ready["reason"]) == ("False", "HealthCheckFailed")
    assert hv.endpoint in ready["message"] and "SERVING" in ready["message"]
    assert status["message"] == ready["message"]
    assert status["observedGeneration"] == 2
    assert result.requeue_after == 7
    reasons = [e.reason for e in store.events_for("Provider", "default", "mem")]
    assert reasons == ["ProviderReady", "ProviderNotReady"]


def test_provider_without_endpoint_is_not_ready(
    store: SQLiteStore, connections: ProviderConnections
) -> None:
    add_provider(store, None)
    ProviderReconciler(store, connections).reconcile(KEY)
    status = _status(store)
    assert status["ready"] is False
    assert _ready(status)["reason"] == "EndpointMissing"
    assert "status.endpoint is empty" in status["message"]


def test_provider_serving_another_type_is_not_ready(
    store: SQLiteStore, connections: ProviderConnections, tmp_path: Path
) -> None:
    running = runtime_server.start(MemoryProvider(root=tmp_path), "127.0.0.1:0")
    try:
        add_provider(store, f"127.0.0.1:{running.port}")
        ProviderReconciler(store, connections).reconcile(KEY)
    finally:
        running.stop(grace=0.5)
    status = _status(store)
    assert status["ready"] is False
    assert _ready(status)["reason"] == "TypeMismatch"
    assert "'memory'" in status["message"] and "'libvirt'" in status["message"]


@pytest.fixture
def libvirt_server(env: LibvirtEnv) -> Iterator[runtime_server.RunningServer]:
    driver = LibvirtDriver(LibvirtClient(env.uri), default_pool=env.pool, domain_type="qemu")
    running = runtime_server.start(driver, "127.0.0.1:0", max_tasks=2)
    yield running
    running.stop(grace=2)


def test_real_libvirt_provider_is_ready_with_its_capabilities(
    store: SQLiteStore,
    connections: ProviderConnections,
    libvirt_server: runtime_server.RunningServer,
) -> None:
    add_provider(store, f"127.0.0.1:{libvirt_server.port}")
    ProviderReconciler(store, connections).reconcile(KEY)
    status = _status(store)
    assert status["ready"] is True, status
    caps = status["capabilities"]
    assert caps["providerType"] == "libvirt"
    with ProviderClient(f"127.0.0.1:{libvirt_server.port}") as client:
        served = client.get_capabilities()
    names = {
        pb.DiskFormat.Name(f).removeprefix("DISK_FORMAT_").lower() for f in served.export_formats
    }
    names |= {
        pb.DiskFormat.Name(f).removeprefix("DISK_FORMAT_").lower() for f in served.import_formats
    }
    assert {"qcow2", "raw"} <= set(caps["diskFormats"])
    assert set(caps["diskFormats"]) == names - {"vpc"}  # VHD has no API enum value
    assert caps["storageBackends"] == ["s3", "http", "nfs"]
    assert {"Snapshots", "ImportedDisks", "ImageClone"} <= set(caps["features"])
    assert "QEMU" in status["message"]  # the hypervisor version the provider read
