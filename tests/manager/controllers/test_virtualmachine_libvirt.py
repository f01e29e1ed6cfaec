"""VirtualMachine controller against the real libvirt provider (libvirtd + QEMU)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from manager.connections import ProviderConnections
from manager.runtime.manager import Manager
from manager.store.sqlite import SQLiteStore
from providers.libvirt.client import LibvirtClient
from providers.libvirt.driver import LibvirtDriver
from providers.runtime import server as runtime_server
from tests.manager.controllers.conftest import MiB, add_provider, wait_for
from tests.manager.store import factory
from tests.providers.libvirt.helpers import Lab, lab
from tests.servers.libvirtd import LibvirtEnv
from virtrigaud import errors


@pytest.fixture
def lv(env: LibvirtEnv, tmp_path: Path) -> Iterator[Lab]:
    with lab(env, tmp_path) as created:
        yield created


@pytest.fixture
def libvirt_endpoint(env: LibvirtEnv) -> Iterator[str]:
    driver = LibvirtDriver(LibvirtClient(env.uri), default_pool=env.pool, domain_type="qemu")
    running = runtime_server.start(driver, "127.0.0.1:0", max_tasks=2)
    yield f"127.0.0.1:{running.port}"
    running.stop(grace=5)


def _status(store: SQLiteStore, name: str) -> dict[str, Any]:
    try:
        return dict(store.get("VirtualMachine", "default", name).get("status") or {})
    except errors.NotFound:
        return {"gone": True}


def test_libvirt_vm_from_imported_disks_created_and_deleted(
    *,
    store: SQLiteStore,
    connections: ProviderConnections,
    running: Manager,
    env: LibvirtEnv,
    lv: Lab,
    libvirt_endpoint: str,
) -> None:
    boot = lv.volume(env.name("ctl-boot.qcow2"), 16 * MiB, "qcow2")
    data = lv.volume(env.name("ctl-data.img"), 8 * MiB, "raw")
    name = env.name("ctl-vm")
    lv.track_domain(name)
    add_provider(store, libvirt_endpoint, name="lv")
    store.create(
        factory.vm(
            name,
            provider_name="lv",
            importedDisk={"diskID": f"{env.pool}/{Path(boot).name}", "format": "qcow2"},
            disks=[
                {
                    "name": "data",
                    "importedDisk": {"diskID": f"{env.pool}/{Path(data).name}", "format": "raw"},
                }
            ],
            networks=[{"name": "eth0", "network": env.network, "mac": "52:54:00:10:20:30"}],
            resources={"cpu": 1, "memoryMiB": 64},
            powerState="Off",
        )
    )
    status = wait_for(
        lambda: _status(store, name), lambda s: s.get("phase") in ("Ready", "Failed"), 120, "Ready"
    )
    assert status["phase"] == "Ready", status
    dom = lv.domain(name)
    assert dom.UUIDString() == status["id"]
    assert dom.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF
    xml = ET.fromstring(dom.XMLDesc(0))
    sources = [s.get("file") for s in xml.findall("./devices/disk/source")]
    assert sources == [boot, data]
    assert [m.get("address") for m in xml.findall("./devices/interface/mac")] == [
        "52:54:00:10:20:30"
    ]
    assert xml.findtext("./memory") == str(64 * 1024)
    assert [(d["sizeBytes"], d["format"]) for d in status["disks"]] == [
        (16 * MiB, "qcow2"),
        (8 * MiB, "raw"),
    ]
    assert status["powerState"] == "Off"

    store.delete("VirtualMachine", "default", name)
    wait_for(lambda: _status(store, name), lambda s: s.get("gone") is True, 120, "object gone")
    with pytest.raises(libvirt.libvirtError):
        lv.conn.lookupByName(name)
    assert Path(boot).name not in lv.pool_volume_names()  # deleted with the VM
