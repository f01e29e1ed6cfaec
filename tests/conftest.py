"""Fixtures shared by the whole suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from manager.providerclient import ProviderClient, RetryPolicy
from providers.runtime import server as runtime_server
from tests.fakes.memory_provider import MemoryProvider
from tests.servers.nginx import NginxDav, start_nginx_dav
from tests.servers.seaweedfs import SeaweedFS, start_seaweedfs

MiB = 1 << 20


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """One real S3 server (SeaweedFS) for the whole session."""
    with start_seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture(scope="session")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxDav]:
    """One real nginx WebDAV server (bearer, basic and open locations) for the session."""
    with start_nginx_dav(tmp_path_factory.mktemp("nginx")) as server:
        yield server


@pytest.fixture
def memory_driver(tmp_path: Path) -> MemoryProvider:
    """A memory provider seeded with one two-disk source VM."""
    driver = MemoryProvider(root=tmp_path / "hv")
    driver.add_vm("source-vm", {"vda": b"\x01" * (3 * MiB), "vdb": bytes(range(256)) * 4096})
    return driver


@pytest.fixture
def memory_server(memory_driver: MemoryProvider) -> Iterator[runtime_server.RunningServer]:
    running = runtime_server.start(memory_driver, "127.0.0.1:0", max_tasks=2)
    yield running
    running.stop(grace=1.0)


@pytest.fixture
def client(memory_server: runtime_server.RunningServer) -> Iterator[ProviderClient]:
    with ProviderClient(
        f"127.0.0.1:{memory_server.port}", timeout=10, retry=RetryPolicy(attempts=2)
    ) as c:
        yield c
