"""Session fakepve + sshd (the node), per-test drivers and provider servers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from manager.providerclient import ProviderClient, RetryPolicy
from providers.proxmox.driver import ProxmoxDriver
from providers.runtime import server as runtime_server
from tests.providers.proxmox.env import PveEnv, session_env


@pytest.fixture(scope="session")
def pve_env(pytestconfig: pytest.Config) -> PveEnv:
    return session_env(pytestconfig)


@pytest.fixture
def pve_driver(pve_env: PveEnv) -> Iterator[ProxmoxDriver]:
    created = pve_env.driver()
    yield created
    created.close()


@pytest.fixture
def pve_provider(pve_driver: ProxmoxDriver) -> Iterator[ProviderClient]:
    running = runtime_server.start(pve_driver, "127.0.0.1:0", max_tasks=2)
    client = ProviderClient(f"127.0.0.1:{running.port}", timeout=30, retry=RetryPolicy(attempts=1))
    yield client
    client.close()
    running.stop(grace=5)
