"""ListVMs / DescribeVM: what the provider reports equals what the test created."""

from __future__ import annotations

import pytest

from manager.providerclient import ProviderClient
from providers.vsphere import inventory
from providers.vsphere.client import VSphereClient
from providers.vsphere.driver import VSphereDriver
from tests.providers.vsphere.helpers import Lab, MiB, finish, op, pattern
from tests.servers.vcsim import DATASTORE, NETWORK
from virtrigaud import errors
from virtrigaud.provider.v1 import provider_pb2 as pb


def test_describe_reports_hardware_disks_nics_and_snapshots(
    vs: Lab, provider: ProviderClient
) -> None:
    a = vs.put_disk(vs.name("inv-a"), pattern(MiB, 3), 16 * MiB)
    b = vs.put_disk(vs.name("inv-b"), pattern(MiB, 4), 8 * MiB)
    vm_id = vs.make_vm(vs.name("inv"), [(a, 16 * MiB), (b, 8 * MiB)], nics=2)
    snap = finish(
        provider,
        provider.create_snapshot(
            pb.CreateSnapshotRequest(
                operation_id=op("snap"), vm_id=vm_id, name="first", description="before"
            )
        ),
    ).snapshot_result.snapshot_id
    vm = provider.describe_vm(vm_id)
    assert (vm.id, vm.name) == (vm_id, vs.name("inv"))
    assert (vm.cpu, vm.cpu_sockets, vm.memory_mib) == (2, 2, 256)
    assert vm.firmware == pb.FIRMWARE_UEFI
    assert vm.power_state == pb.POWER_STATE_OFF
    disks = [d for d in vm.disks if d.device == pb.DISK_DEVICE_DISK]
    assert [(d.path, d.virtual_size_bytes, d.bus, d.storage) for d in disks] == [
        (a, 16 * MiB, "scsi", DATASTORE),
        (b, 8 * MiB, "scsi", DATASTORE),
    ]
    assert all(d.format == pb.DISK_FORMAT_VMDK for d in disks)
    assert [d.boot for d in disks] == [True, False]
    assert disks[0].allocated_size_bytes >= 16 * MiB  # descriptor + flat file sizes
    assert [(n.network, n.mac, n.model) for n in vm.nics] == [
        (NETWORK, "00:50:56:3f:00:01", "vmxnet3"),
        (NETWORK, "00:50:56:3f:00:02", "vmxnet3"),
    ]
    assert [(s.id, s.name, s.description) for s in vm.snapshots] == [(snap, "first", "before")]
    assert vm.snapshots[0].create_time.seconds > 0
    listed = {v.id: v for v in provider.iter_vms(name_filter=vs.name("inv*"))}
    assert listed == {vm_id: vm}


def test_model_keeps_what_the_contract_has_no_field_for(vs: Lab, driver: VSphereDriver) -> None:
    path = vs.put_disk(vs.name("thin"), pattern(MiB, 5), 4 * MiB)
    vm_id = vs.make_vm(vs.name("thin"), [(path, 4 * MiB)])
    info = inventory.describe_vm(driver.client, vm_id)
    disk = next(d for d in info.disks if d.device == "disk")
    assert (disk.controller, disk.provisioning, disk.unit) == ("pvscsi", "thin", 0)
    assert disk.chain == ((path, path.replace(".vmdk", "-flat.vmdk")),)


def test_list_is_one_retrieval_whatever_the_vm_count(
    vs: Lab, driver: VSphereDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not one round trip per VM: the whole inventory is one RetrievePropertiesEx."""
    for index in range(6):
        vs.make_vm(vs.name(f"many{index}"), [])
    calls: list[int] = []
    original = VSphereClient.retrieve

    def counting(self: VSphereClient, specs: object, what: str) -> object:
        calls.append(1)
        return original(self, specs, what)  # type: ignore[arg-type]

    monkeypatch.setattr(VSphereClient, "retrieve", counting)
    vms = inventory.list_vms(driver.client)
    assert len(vms) >= 10
    assert len(calls) == 1


def test_unknown_vm_is_not_found(provider: ProviderClient) -> None:
    for vm_id in ("vm-999999", "virtrigaud-no-such-vm", "snapshot-1"):
        with pytest.raises(errors.NotFound):
            provider.describe_vm(vm_id)
