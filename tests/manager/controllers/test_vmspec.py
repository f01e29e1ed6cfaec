"""VirtualMachine spec -> CreateVMRequest mapping (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from manager.api import PowerState, Provider, VirtualMachine
from manager.controllers import vmspec
from tests.manager.store import factory
from virtrigaud import errors
from virtrigaud.provider.v1 import provider_pb2 as pb

GiB = 1 << 30


def request(vm: dict[str, Any], provider: dict[str, Any] | None = None) -> pb.CreateVMRequest:
    vm["metadata"]["uid"] = "uid-1"
    return vmspec.create_request(
        VirtualMachine.from_dict(vm), Provider.from_dict(provider or factory.provider()), "op-1"
    )


def test_imported_disks_resources_firmware_and_labels() -> None:
    made = request(
        factory.vm(
            "web",
            importedDisk={"diskID": "pool/web-vda", "path": "/p/web-vda", "sizeGiB": 10},
            disks=[
                {
                    "name": "data",
                    "bus": "scsi",
                    "sizeGiB": 20,
                    "importedDisk": {"diskID": "pool/web-vdb", "format": "raw"},
                }
            ],
            resources={"cpu": 4, "memoryMiB": 4096},
            firmware="UEFI",
            powerState="Off",
        )
    )
    assert (made.operation_id, made.name, made.cpu, made.memory_mib) == ("op-1", "web", 4, 4096)
    assert made.firmware == pb.FIRMWARE_UEFI and made.power_on is False
    boot, data = made.disks
    assert boot.imported == pb.ImportedDisk(
        disk_id="pool/web-vda", path="/p/web-vda", format=pb.DISK_FORMAT_QCOW2
    )
    assert boot.size_bytes == 10 * GiB  # sizeGiB: the size to grow the disk to
    assert (data.imported.disk_id, data.imported.format) == ("pool/web-vdb", pb.DISK_FORMAT_RAW)
    assert (data.bus, data.size_bytes) == ("scsi", 20 * GiB)
    assert made.labels == {
        "virtrigaud.io/object": "VirtualMachine/default/web",
        "virtrigaud.io/uid": "uid-1",
    }


def test_image_ref_and_defaults() -> None:
    made = request(factory.vm("web", imageRef={"name": "debian-12"}))
    assert made.disks[0].image.name == "debian-12"
    assert (made.cpu, made.memory_mib) == (vmspec.DEFAULT_CPU, vmspec.DEFAULT_MEMORY_MIB)
    assert made.firmware == pb.FIRMWARE_UNSPECIFIED
    assert made.power_on is True  # powerState omitted on a created VM: On


def test_nics_keep_mac_and_map_bridges_per_provider_type() -> None:
    networks = [
        {"name": "eth0", "network": "default", "mac": "52:54:00:AB:CD:EF", "model": "e1000"},
        {"name": "eth1", "bridge": "br0", "vlan": 12},
        {"name": "eth2"},
    ]
    libvirt = factory.provider(defaults={"network": "fallback"})
    nics = request(factory.vm(networks=networks), libvirt).nics
    assert [(n.network, n.mac, n.model, n.vlan_id) for n in nics] == [
        ("default", "52:54:00:ab:cd:ef", "e1000", 0),
        ("bridge:br0", "", "", 12),
        ("fallback", "", "", 0),
    ]
    proxmox = factory.provider(type_="proxmox", defaults={"network": "vmbr0"})
    assert request(factory.vm(networks=networks), proxmox).nics[1].network == "br0"


def test_a_nic_without_any_network_names_the_field() -> None:
    with pytest.raises(errors.ValidationError) as caught:
        request(factory.vm(networks=[{"name": "eth0"}, {"name": "eth1"}]))
    assert caught.value.field == "spec.networks[0]"


def test_power_wishes() -> None:
    created = VirtualMachine.from_dict(factory.vm())
    adopted = VirtualMachine.from_dict(factory.vm(vmId="x"))
    adopted_off = VirtualMachine.from_dict(factory.vm(vmId="x", powerState="Off"))
    assert vmspec.desired_power(created) is PowerState.ON
    assert vmspec.desired_power(adopted) is None  # keeps its state
    assert vmspec.desired_power(adopted_off) is PowerState.OFF
