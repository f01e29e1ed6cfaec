"""The libvirt provider as a conformance target (real libvirtd + QEMU).

``libvirt_conformance_target`` serves a real ``LibvirtDriver`` through
``providers.runtime.server.start`` against the session's libvirtd
(``tests.servers.libvirtd.session_env``: started if needed, with its own pools and
isolated network), with a source VM that has two disks holding known data and a NIC.

The contract methods it backs are listed with its ``TargetSpec`` in
``tests/conformance/targets.py``.
"""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from manager.providerclient import ProviderClient, RetryPolicy
from providers.libvirt import domxml, volxml
from providers.libvirt.client import LibvirtClient
from providers.libvirt.driver import LibvirtDriver
from providers.runtime import server as runtime_server
from tests.conformance.targets import ConformanceTarget
from tests.fakes.memory_provider import nfs_path
from tests.servers.libvirtd import LibvirtEnv, remove_domain, session_env
from virtrigaud.provider.v1 import provider_pb2 as pb

MiB = 1 << 20


def _volume_with_data(conn: libvirt.virConnect, env: LibvirtEnv, name: str, fmt: str) -> str:
    pool = conn.storagePoolLookupByName(env.pool)
    path = str(pool.createXML(volxml.build_volume(name, 32 * MiB, fmt), 0).path())
    subprocess.run(
        ["qemu-io", "-f", fmt, "-c", f"write -P 0x5c 0 {4 * MiB}", path],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return path


def _source_vm(conn: libvirt.virConnect, env: LibvirtEnv, tag: str) -> tuple[str, list[str]]:
    paths = [
        _volume_with_data(conn, env, env.name(f"conf-{tag}-a.qcow2"), "qcow2"),
        _volume_with_data(conn, env, env.name(f"conf-{tag}-b.img"), "raw"),
    ]
    plan = domxml.DomainPlan(
        name=env.name(f"conformance-{tag}"),
        vcpus=1,
        memory_mib=64,
        virt_type="qemu",
        disks=[
            domxml.DiskPlan(paths[0], "qcow2", "virtio", "vda", boot_order=1),
            domxml.DiskPlan(paths[1], "raw", "virtio", "vdb"),
        ],
        nics=[domxml.NicPlan("network", env.network, "52:54:00:c0:0f:01")],
    )
    return str(conn.defineXML(domxml.build_domain(plan)).UUIDString()), paths


def _remove(conn: libvirt.virConnect, vm_id: str, env: LibvirtEnv, tag: str) -> None:
    with contextlib.suppress(libvirt.libvirtError):
        remove_domain(conn.lookupByUUIDString(vm_id))
    pool = conn.storagePoolLookupByName(env.pool)
    pool.refresh(0)
    for vol in pool.listAllVolumes(0):  # the disks and any overlay a failed test left
        if vol.name().startswith(env.name(f"conf-{tag}-")):
            with contextlib.suppress(libvirt.libvirtError):
                vol.delete(0)


@pytest.fixture
def libvirt_conformance_target(
    pytestconfig: pytest.Config, tmp_path: Path
) -> Iterator[ConformanceTarget]:
    env = session_env(pytestconfig)
    conn = env.connect()
    tag = uuid.uuid4().hex[:6]
    vm_id, _ = _source_vm(conn, env, tag)
    driver = LibvirtDriver(LibvirtClient(env.uri), default_pool=env.pool, domain_type="qemu")
    running = runtime_server.start(driver, "127.0.0.1:0", max_tasks=2)
    exports = tmp_path / "exports"

    def location(key: str) -> pb.StorageLocation:
        return pb.StorageLocation(backend=pb.STORAGE_BACKEND_NFS, url=f"nfs://{exports / key}")

    client = ProviderClient(f"127.0.0.1:{running.port}", timeout=30, retry=RetryPolicy(attempts=2))
    try:
        yield ConformanceTarget(
            client=client,
            provider_type="libvirt",
            source_vm_id=vm_id,
            storage_hint=env.pool,
            network=env.network,
            export_location=location,
            read_object=lambda url: nfs_path(url).read_bytes(),
            object_exists=lambda url: nfs_path(url).exists(),
            slow_disk=None,
        )
    finally:
        client.close()
        running.stop(grace=5)
        try:
            _remove(conn, vm_id, env, tag)
        finally:
            conn.close()
