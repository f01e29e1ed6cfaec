"""Session libvirtd + pools + network, and per-test drivers, servers and labs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from manager.providerclient import ProviderClient, RetryPolicy
from providers.libvirt.client import LibvirtClient
from providers.libvirt.driver import LibvirtDriver
from providers.runtime import server as runtime_server
from tests.providers.libvirt.helpers import Lab, lab
from tests.servers.libvirtd import LibvirtEnv, session_env


@pytest.fixture(scope="session")
def env(pytestconfig: pytest.Config) -> LibvirtEnv:
    return session_env(pytestconfig)


@pytest.fixture
def lv(env: LibvirtEnv, tmp_path: Path) -> Iterator[Lab]:
    with lab(env, tmp_path) as created:
        yield created


@pytest.fixture
def driver(env: LibvirtEnv) -> Iterator[LibvirtDriver]:
    created = LibvirtDriver(LibvirtClient(env.uri), default_pool=env.pool, domain_type="qemu")
    yield created
    created.close()


@pytest.fixture
def provider(driver: LibvirtDriver) -> Iterator[ProviderClient]:
    running = runtime_server.start(driver, "127.0.0.1:0", max_tasks=2)
    client = ProviderClient(f"127.0.0.1:{running.port}", timeout=30, retry=RetryPolicy(attempts=1))
    yield client
    client.close()
    running.stop(grace=5)
