"""A real provider server (memory driver behind the real runtime, or libvirt), a store,
and the Provider + VirtualMachine controllers running over them."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from manager.connections import ProviderConnections
from manager.controllers.provider import ProviderReconciler
from manager.controllers.virtualmachine import (
    VirtualMachineReconciler,
    migration_watch,
    provider_watch,
)
from manager.runtime.manager import Manager
from manager.store.sqlite import SQLiteStore
from providers.runtime import server as runtime_server
from tests.fakes.memory_provider import MemoryProvider
from tests.manager.store import factory
from tests.servers.libvirtd import LibvirtEnv, session_env
from virtrigaud import errors

MiB = 1 << 20


def wait_for(
    read: Callable[[], Any], check: Callable[[Any], bool], timeout: float = 60.0, what: str = ""
) -> Any:
    """Poll ``read()`` until ``check`` accepts it; the last value is in the failure."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if check(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last value: {value!r}")
        time.sleep(0.05)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    with SQLiteStore(tmp_path / "state.db", poll_interval=0.05) as opened:
        yield opened


@pytest.fixture
def connections() -> Iterator[ProviderConnections]:
    made = ProviderConnections(timeout=10)
    yield made
    made.close()


@dataclass
class Hypervisor:
    """The memory driver and the real provider server in front of it."""

    driver: MemoryProvider
    server: runtime_server.RunningServer
    root: Path

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def volume(self, name: str, data: bytes) -> str:
        """A disk in pool "default" that CreateVM can attach; returns its disk id."""
        path = self.root / "pool-default" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        disk_id = f"default/{name}"
        self.driver.volumes[disk_id] = path
        return disk_id

    def by_name(self, name: str) -> Any:
        return next((vm for vm in self.driver.vms.values() if vm.name == name), None)


@pytest.fixture
def hv(tmp_path: Path) -> Iterator[Hypervisor]:
    root = tmp_path / "hv"
    driver = MemoryProvider(root=root, provider_type="libvirt")
    server = runtime_server.start(driver, "127.0.0.1:0", max_tasks=2)
    yield Hypervisor(driver, server, root)
    server.stop(grace=1.0)


def set_endpoint(store: SQLiteStore, name: str, endpoint: str) -> None:
    """What the launcher does: write status.endpoint (re-reading on a conflict, since
    the Provider controller may be writing the same status)."""
    for _ in range(20):
        current = store.get("Provider", "default", name)
        status = {**(current.get("status") or {}), "endpoint": endpoint}
        try:
            store.update_status({**current, "status": status})
            return
        except errors.Conflict:
            continue
    raise AssertionError("could not set the endpoint")


def add_provider(store: SQLiteStore, endpoint: str | None, name: str = "mem", **spec: Any) -> None:
    store.create(factory.provider(name, **spec))
    if endpoint:
        set_endpoint(store, name, endpoint)


@pytest.fixture
def running(store: SQLiteStore, connections: ProviderConnections) -> Iterator[Manager]:
    """The Provider and VirtualMachine controllers, as ``virtrigaud run`` wires them."""
    manager = Manager(store)
    manager.add(ProviderReconciler(store, connections, healthy_interval=30))
    manager.add(
        VirtualMachineReconciler(store, connections, refresh=5.0),
        workers=2,
        watches=[provider_watch(store), migration_watch()],
    )
    manager.start()
    yield manager
    manager.stop(30)


@pytest.fixture(scope="session")
def env(pytestconfig: pytest.Config) -> LibvirtEnv:
    return session_env(pytestconfig)
