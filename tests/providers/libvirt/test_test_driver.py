"""Domain logic on libvirt's built-in test driver (``test:///default``, no daemon)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from manager.providerclient import ProviderClient, RetryPolicy
from providers.libvirt.client import LibvirtClient
from providers.libvirt.driver import LibvirtDriver
from providers.runtime import server as runtime_server
from tests.providers.libvirt.helpers import finish, op
from virtrigaud.provider.v1 import provider_pb2 as pb


@pytest.fixture
def test_provider() -> Iterator[ProviderClient]:
    # one connection = one private copy of the test driver's default host
    driver = LibvirtDriver(LibvirtClient("test:///default"), domain_type="auto")
    running = runtime_server.start(driver, "127.0.0.1:0", max_tasks=1)
    client = ProviderClient(f"127.0.0.1:{running.port}", timeout=10, retry=RetryPolicy(attempts=1))
    yield client
    client.close()
    running.stop(grace=2)


def test_inventory_and_power_on_the_test_driver(test_provider: ProviderClient) -> None:
    [vm] = test_provider.list_vms().vms
    assert (vm.name, vm.power_state, vm.cpu, vm.memory_mib) == ("test", pb.POWER_STATE_ON, 2, 8192)
    assert [(d.id, d.path, d.device) for d in vm.disks] == [
        ("vda", "/guest/diskimage1", pb.DISK_DEVICE_DISK)
    ]
    assert [(n.network, n.mac) for n in vm.nics] == [("default", "aa:bb:cc:dd:ee:ff")]
    described = test_provider.describe_vm(vm.id)
    assert described.disks[0].virtual_size_bytes > 0  # outside any pool: blockInfo
    for action, state in (
        (pb.POWER_ACTION_OFF, pb.POWER_STATE_OFF),
        (pb.POWER_ACTION_ON, pb.POWER_STATE_ON),
    ):
        finish(
            test_provider,
            test_provider.power(pb.PowerRequest(operation_id=op("p"), vm_id=vm.id, action=action)),
        )
        assert test_provider.describe_vm(vm.id).power_state == state
