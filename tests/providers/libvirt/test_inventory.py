"""ListVMs / DescribeVM against real libvirtd + QEMU."""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Mapping
from typing import Any

import libvirt

from manager.providerclient import ProviderClient
from providers.libvirt import inventory
from providers.libvirt.client import LibvirtClient, open_connection
from providers.libvirt.driver import LibvirtDriver
from tests.providers.libvirt.helpers import Lab, MiB, SetupDisk, SetupNic, domain_xml, write_pattern
from tests.servers.libvirtd import LibvirtEnv
from virtrigaud.provider.v1 import provider_pb2 as pb

# Accessors served from the handle libvirt-python already holds (no RPC).
LOCAL_METHODS = frozenset({"name", "UUIDString", "UUID", "key", "getName", "ID", "isAlive"})
LIBVIRT_TYPES = (
    libvirt.virConnect,
    libvirt.virDomain,
    libvirt.virStoragePool,
    libvirt.virStorageVol,
    libvirt.virDomainSnapshot,
    libvirt.virNetwork,
    libvirt.virInterface,
)


class Counting:
    """Wraps a libvirt object; counts every remote method call made through it."""

    def __init__(self, target: Any, counter: collections.Counter[str]) -> None:
        self._target = target
        self._counter = counter

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if name.startswith("_") or not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            if name not in LOCAL_METHODS:
                self._counter[f"{type(self._target).__name__}.{name}"] += 1
            return _wrap(attr(*args, **kwargs), self._counter)

        return call


def _wrap(value: Any, counter: collections.Counter[str]) -> Any:
    if isinstance(value, LIBVIRT_TYPES):
        return Counting(value, counter)
    if isinstance(value, list):
        return [_wrap(v, counter) for v in value]
    if isinstance(value, tuple):
        return tuple(_wrap(v, counter) for v in value)
    return value


def counting_opener(
    counter: collections.Counter[str],
) -> Callable[[str, Mapping[str, str]], Any]:
    def opener(uri: str, credentials: Mapping[str, str]) -> Any:
        return Counting(open_connection(uri, credentials), counter)

    return opener


def _inventory_domain(env: LibvirtEnv, lv: Lab) -> tuple[Any, dict[str, str]]:
    a = lv.volume(env.name("inv-a.qcow2"), 64 * MiB, "qcow2")
    b = lv.volume(env.name("inv-b.img"), 32 * MiB, "raw")
    iso = lv.volume(env.name("inv-c.iso"), 1 * MiB, "raw")
    write_pattern(a, "qcow2", 0xA1, 0, 3 * MiB)
    write_pattern(b, "raw", 0xB2, 4 * MiB, 2 * MiB)
    dom = lv.define(
        domain_xml(
            env.name("inventory"),
            [
                SetupDisk(a, "qcow2", "vda"),
                SetupDisk(b, "raw", "vdb"),
                SetupDisk(iso, "raw", "sda", bus="sata", device="cdrom"),
            ],
            [
                SetupNic("network", env.network, "52:54:00:10:00:01"),
                SetupNic("bridge", env.bridge, "52:54:00:10:00:02", model="e1000"),
            ],
        )
    )
    return dom, {"a": a, "b": b, "iso": iso}


def test_describe_reports_disks_cdrom_and_nics(
    env: LibvirtEnv, lv: Lab, driver: LibvirtDriver
) -> None:
    dom, paths = _inventory_domain(env, lv)
    vm = driver.describe_vm(dom.UUIDString())
    assert (vm.id, vm.name) == (dom.UUIDString(), env.name("inventory"))
    assert (vm.cpu, vm.cpu_sockets, vm.memory_mib) == (2, 1, 64)
    assert vm.firmware == pb.FIRMWARE_BIOS
    assert vm.power_state == pb.POWER_STATE_OFF
    by_id = {d.id: d for d in vm.disks}
    assert set(by_id) == {"vda", "vdb", "sda"}
    vda, vdb, cd = by_id["vda"], by_id["vdb"], by_id["sda"]
    assert (vda.path, vda.format, vda.virtual_size_bytes, vda.bus, vda.device, vda.boot) == (
        paths["a"],
        pb.DISK_FORMAT_QCOW2,
        64 * MiB,
        "virtio",
        pb.DISK_DEVICE_DISK,
        True,
    )
    assert (vdb.path, vdb.format, vdb.virtual_size_bytes, vdb.boot) == (
        paths["b"],
        pb.DISK_FORMAT_RAW,
        32 * MiB,
        False,
    )
    for disk in (vda, vdb):
        assert disk.storage == env.pool
        # allocation as the file system reports it, read independently of libvirt
        assert disk.allocated_size_bytes == os.stat(disk.path).st_blocks * 512
    assert vdb.allocated_size_bytes >= 2 * MiB
    assert (cd.device, cd.path, cd.bus) == (pb.DISK_DEVICE_CDROM, paths["iso"], "sata")
    assert [(n.id, n.network, n.mac, n.model) for n in vm.nics] == [
        ("net0", env.network, "52:54:00:10:00:01", "virtio"),
        ("net1", f"bridge:{env.bridge}", "52:54:00:10:00:02", "e1000"),
    ]
    assert list(vm.snapshots) == []


def test_list_and_describe_agree_and_see_power_state(
    env: LibvirtEnv, lv: Lab, provider: ProviderClient
) -> None:
    dom, _ = _inventory_domain(env, lv)
    listed = list(provider.iter_vms(name_filter=env.name("inventory")))
    assert [vm.id for vm in listed] == [dom.UUIDString()]
    described = provider.describe_vm(dom.UUIDString())
    assert listed[0] == described
    dom.create()
    assert provider.describe_vm(dom.UUIDString()).power_state == pb.POWER_STATE_ON
    [running] = provider.list_vms(name_filter=env.name("inventory")).vms
    assert running.power_state == pb.POWER_STATE_ON
    dom.suspend()
    assert provider.describe_vm(dom.UUIDString()).power_state == pb.POWER_STATE_SUSPENDED
    dom.destroy()


def test_listing_many_domains_costs_one_call_per_domain(env: LibvirtEnv, lv: Lab) -> None:
    count = 150
    for i in range(count):
        lv.define(domain_xml(env.name(f"bulk-{i:03d}"), []))
    dom, _ = _inventory_domain(env, lv)  # one domain with disks joined to pool volumes

    calls: collections.Counter[str] = collections.Counter()
    client = LibvirtClient(env.uri, opener=counting_opener(calls))
    try:
        vms = inventory.list_vms(client, f"{env.prefix}-*")
    finally:
        client.close()
    assert len(vms) == count + 1
    with_disks = next(vm for vm in vms if vm.id == dom.UUIDString())
    assert {d.id: d.virtual_size for d in with_disks.disks} == {
        "vda": 64 * MiB,
        "vdb": 32 * MiB,
        "sda": 1 * MiB,
    }
    active_pools = len(lv.conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE))
    for setup in ("virConnect.setKeepAlive", "virConnect.close"):  # connection, not listing
        calls.pop(setup, None)
    assert calls == {
        # one call per domain, nothing else per domain
        "virDomain.XMLDesc": count + 1,
        # constant: all domains with their state, domains having snapshots, the pools
        "virConnect.getAllDomainStats": 1,
        "virConnect.listAllDomains": 1,
        "virConnect.listAllStoragePools": 1,
        # per pool; volumes listed only in the pool holding referenced disks
        "virStoragePool.XMLDesc": active_pools,
        "virStoragePool.listAllVolumes": 1,
        # only the three volumes the domain references, whatever the pool holds
        "virStorageVol.XMLDesc": 3,
    }
