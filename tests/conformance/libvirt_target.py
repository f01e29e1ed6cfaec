"""The libvirt provider as a conformance target (real libvirtd + QEMU).

``libvirt_conformance_target`` serves a real ``LibvirtDriver`` through
``providers.runtime.server.start`` against the session's libvirtd
(``tests.servers.libvirtd.session_env``: started if needed, with its own pools and
isolated network), with a source VM that has two disks holding known data and a NIC.
Exports go to an NFS directory under the test's tmp dir; the provider's scratch
directory is another one, checked to be empty again when the test ends.

``slow_disk`` is a VM with one 1 GiB raw volume holding 768 MiB of data spread over
it: reading and uploading it takes long enough for the suite to cancel the export
while bytes move (no throttling knob: the volume is simply big). It is made once per
session (writing it takes a few seconds) and removed with the session's pools.

Every volume a test leaves in the session's pool (imports) and every domain whose
disks live there is removed after the test. The contract methods the target backs
are listed with its ``TargetSpec`` in ``tests/conformance/targets.py``.
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
from providers.libvirt.exports import ScratchSettings
from providers.runtime import server as runtime_server
from tests.conformance.targets import ConformanceTarget
from tests.fakes.memory_provider import nfs_path
from tests.servers.libvirtd import LibvirtEnv, remove_domain, session_env
from virtrigaud.provider.v1 import provider_pb2 as pb

MiB = 1 << 20
SLOW_SIZE = 1024 * MiB
SLOW_RUN = 16 * MiB  # 48 runs of data, one every 21 MiB: 768 MiB of data
SLOW_RUNS = 48

_SLOW_KEY = pytest.StashKey[tuple[str, str]]()


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


def _slow_vm(pytestconfig: pytest.Config, conn: libvirt.virConnect, env: LibvirtEnv) -> str:
    """The session's VM with a big disk (made on first use; see the module docstring)."""
    existing = pytestconfig.stash.get(_SLOW_KEY, None)
    if existing is not None and existing[0] == env.prefix:
        return existing[1]
    pool = conn.storagePoolLookupByName(env.pool)
    name = env.name("conf-slow.img")
    path = str(pool.createXML(volxml.build_volume(name, SLOW_SIZE, "raw"), 0).path())
    block = bytes(range(1, 256)) * (MiB // 255) + b"\x5a" * (MiB % 255)
    with open(path, "r+b") as handle:
        for run in range(SLOW_RUNS):
            handle.seek(run * 21 * MiB)
            for _ in range(SLOW_RUN // MiB):
                handle.write(block)
    plan = domxml.DomainPlan(
        name=env.name("conformance-slow"),
        vcpus=1,
        memory_mib=64,
        virt_type="qemu",
        disks=[domxml.DiskPlan(path, "raw", "virtio", "vda", boot_order=1)],
    )
    vm_id = str(conn.defineXML(domxml.build_domain(plan)).UUIDString())
    pytestconfig.stash[_SLOW_KEY] = (env.prefix, vm_id)
    return vm_id


def _pool_volumes(conn: libvirt.virConnect, env: LibvirtEnv) -> set[str]:
    pool = conn.storagePoolLookupByName(env.pool)
    pool.refresh(0)
    return {vol.name() for vol in pool.listAllVolumes(0)}


def _remove_new(conn: libvirt.virConnect, env: LibvirtEnv, volumes_before: set[str]) -> None:
    """Domains with disks in the session pool and volumes that appeared in it."""
    for dom in conn.listAllDomains(0):
        if dom.name() == env.name("conformance-slow"):
            continue
        with contextlib.suppress(libvirt.libvirtError):
            disks = domxml.parse_domain(dom.XMLDesc(0)).disks
            if any(d.path.startswith(f"{env.pool_path}/") for d in disks):
                remove_domain(dom)
    pool = conn.storagePoolLookupByName(env.pool)
    pool.refresh(0)
    for vol in pool.listAllVolumes(0):
        if vol.name() not in volumes_before:
            with contextlib.suppress(libvirt.libvirtError):
                vol.delete(0)


@pytest.fixture
def libvirt_conformance_target(
    pytestconfig: pytest.Config, tmp_path: Path
) -> Iterator[ConformanceTarget]:
    env = session_env(pytestconfig)
    conn = env.connect()
    slow_vm = _slow_vm(pytestconfig, conn, env)
    volumes_before = _pool_volumes(conn, env)
    tag = uuid.uuid4().hex[:6]
    vm_id, _ = _source_vm(conn, env, tag)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    driver = LibvirtDriver(
        LibvirtClient(env.uri),
        default_pool=env.pool,
        domain_type="qemu",
        scratch=ScratchSettings(str(scratch)),
    )
    running = runtime_server.start(driver, "127.0.0.1:0", max_tasks=2)
    exports = tmp_path / "exports"
    exports.mkdir()

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
            slow_disk=(slow_vm, "vda"),
        )
    finally:
        client.close()
        running.stop(grace=30)
        try:
            _remove_new(conn, env, volumes_before)
        finally:
            conn.close()
    assert list(scratch.iterdir()) == [], "the provider left scratch files behind"
