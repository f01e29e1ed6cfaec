"""Parametrizes the conformance suite over every registered provider target."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from manager.providerclient import ProviderClient, RetryPolicy
from providers.runtime import server as runtime_server
from tests.conformance.libvirt_target import libvirt_conformance_target
from tests.conformance.proxmox_target import proxmox_conformance_target
from tests.conformance.targets import TARGETS, ConformanceTarget
from tests.conformance.vsphere_target import vsphere_conformance_target
from tests.fakes.memory_provider import MemoryProvider, nfs_path
from virtrigaud.provider.v1 import provider_pb2 as pb

MiB = 1 << 20

# fixtures of other targets, used by name
__all__ = [
    "libvirt_conformance_target",
    "proxmox_conformance_target",
    "vsphere_conformance_target",
]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "contract(*methods): contract methods a conformance test needs"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "target" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("contract")
    needed = frozenset(marker.args) if marker else frozenset()
    specs = [spec for spec in TARGETS if needed <= spec.methods]
    metafunc.parametrize(
        "target", [s.fixture for s in specs], ids=[s.name for s in specs], indirect=True
    )


@pytest.fixture
def target(request: pytest.FixtureRequest) -> ConformanceTarget:
    value: ConformanceTarget = request.getfixturevalue(request.param)
    return value


@pytest.fixture
def memory_conformance_target(tmp_path: Path) -> Iterator[ConformanceTarget]:
    driver = MemoryProvider(root=tmp_path / "hv")
    source = driver.add_vm(
        "conformance-src", {"vda": bytes(range(256)) * 8192, "vdb": b"\xee" * (2 * MiB)}
    )
    slow = driver.add_vm("conformance-slow", {"vda": b"\x01" * (16 * MiB)})
    driver.slow_vms[slow.id] = 0.2
    running = runtime_server.start(driver, "127.0.0.1:0", max_tasks=2)
    exports = tmp_path / "exports"
    exports.mkdir()  # the mounted share

    def location(key: str) -> pb.StorageLocation:
        return pb.StorageLocation(backend=pb.STORAGE_BACKEND_NFS, url=f"nfs://{exports / key}")

    client = ProviderClient(f"127.0.0.1:{running.port}", timeout=10, retry=RetryPolicy(attempts=2))
    yield ConformanceTarget(
        client=client,
        provider_type="memory",
        source_vm_id=source.id,
        storage_hint="default",
        network="default",
        export_location=location,
        read_object=lambda url: nfs_path(url).read_bytes(),
        object_exists=lambda url: nfs_path(url).exists(),
        slow_disk=(slow.id, "vda"),
    )
    client.close()
    running.stop(grace=1)
