"""Whole migrations in one-machine mode with the vSphere provider on either side.

``virtrigaud run -f DIR`` with real provider processes started by the launcher: a
vSphere provider against the session's vcsim and a libvirt provider against the
session's libvirtd, intermediate storage an NFS-style directory. vSphere -> libvirt
moves a running two-disk VM (snapshot, export from the snapshot chain, import into a
libvirt pool, domain created); libvirt -> vSphere moves a libvirt VM onto the
datastore (vmfs flat VMDKs, VM created on the distributed portgroup). Data is
compared byte for byte on the target.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim

from manager.store.sqlite import SQLiteStore
from providers.libvirt import domxml, volxml
from tests.providers.vsphere.helpers import Lab, MiB, pattern, qemu_img_raw
from tests.servers.libvirtd import LibvirtEnv, remove_domain, session_env
from tests.servers.vcsim import DATASTORE, PORTGROUP, Vcsim
from tests.support.onemachine import run

REPO = Path(__file__).resolve().parents[3]
PROVIDER = {"apiVersion": "infra.virtrigaud.io/v1beta1", "kind": "Provider"}


@pytest.fixture(scope="module")
def env(pytestconfig: pytest.Config) -> LibvirtEnv:
    return session_env(pytestconfig)


@pytest.fixture
def cleanup_libvirt(env: LibvirtEnv) -> Iterator[None]:
    yield
    conn = env.connect()
    try:
        for dom in conn.listAllDomains(0):
            if dom.name().startswith(env.name("vs-")):
                remove_domain(dom)
        for pool_name in (env.pool, env.pool2):
            pool = conn.storagePoolLookupByName(pool_name)
            pool.refresh(0)
            for vol in pool.listAllVolumes(0):
                if vol.name().startswith(env.name("vs-")) or vol.name().startswith("vs-"):
                    vol.delete(0)
    finally:
        conn.close()


def _vsphere_provider(vcsim: Vcsim) -> list[dict[str, Any]]:
    """The vSphere Provider; its Secret carries the test CA as ca.crt."""
    ca = vcsim.ca_file
    assert ca is not None
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "vcenter-creds", "namespace": "default"},
            "stringData": {**vcsim.credentials, "ca.crt": ca.read_text()},
        },
        {
            **PROVIDER,
            "metadata": {"name": "vcenter", "namespace": "default"},
            "spec": {
                "type": "vsphere",
                "endpoint": vcsim.url,
                "credentialsSecretRef": {"name": "vcenter-creds", "namespace": "default"},
                "defaults": {"datastore": DATASTORE},
            },
        },
    ]


def _libvirt_provider(env: LibvirtEnv) -> dict[str, Any]:
    return {
        **PROVIDER,
        "metadata": {"name": "kvm", "namespace": "default"},
        "spec": {"type": "libvirt", "endpoint": env.uri, "defaults": {"storagePool": env.pool2}},
    }


def _migration(  # noqa: PLR0917 - the manifest's fields
    source_provider: str, vm_id: str, target: str, name: str, hint: str, net: str, nfs: Path
) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "infra.virtrigaud.io/v1beta1",
            "kind": "VirtualMachine",
            "metadata": {"name": "app", "namespace": "default"},
            "spec": {"providerRef": {"name": source_provider}, "vmId": vm_id},
        },
        {
            "apiVersion": "infra.virtrigaud.io/v1beta1",
            "kind": "VMMigration",
            "metadata": {"name": "move", "namespace": "default"},
            "spec": {
                "sourceName": "app",
                "sourceNamespace": "default",
                "targetProviderRef": {"name": target, "namespace": "default"},
                "targetName": name,
                "targetStorageHint": hint,
                "targetNetworkHints": [{"name": "eth0", "network": net}],
                "storage": {"type": "nfs", "path": str(nfs)},
                "retryPolicy": {"maxAttempts": 1},
            },
        },
    ]


def _run(workdir: Path, manifests: list[Any]) -> dict[str, Any]:
    proc = run(workdir, manifests, timeout=300)
    out, err = proc.communicate(timeout=600)
    store = SQLiteStore(workdir / "state.db")
    try:
        migration = store.get("VMMigration", "default", "move")
    finally:
        store.close()
    status = json.dumps(migration.get("status"), indent=1)
    assert proc.returncode == 0, f"{out}\n{err}\n{status}"
    assert migration["status"]["phase"] == "Ready", migration["status"]
    return dict(migration)


def test_running_vsphere_vm_moves_to_libvirt(
    vs: Lab, vcsim: Vcsim, env: LibvirtEnv, cleanup_libvirt: None, tmp_path: Path
) -> None:
    first = pattern(3 * MiB, 31) + bytes(5 * MiB)
    second = bytes(MiB) + pattern(MiB, 32) + bytes(2 * MiB)
    disks = [
        (vs.put_disk(vs.name("mig-a"), first), len(first)),
        (vs.put_disk(vs.name("mig-b"), second), len(second)),
    ]
    vm_id = vs.make_vm(vs.name("mig"), disks, power_on=True, firmware="bios")
    nfs = tmp_path / "nfs"
    nfs.mkdir()
    target = env.name(f"vs-moved-{secrets.token_hex(2)}")
    manifests = [
        *_vsphere_provider(vcsim),
        _libvirt_provider(env),
        *_migration("vcenter", vm_id, "kvm", target, env.pool2, env.network, nfs),
    ]
    migration = _run(tmp_path, manifests)
    conn = env.connect()
    try:
        dom = conn.lookupByName(target)
        target_disks = [d for d in domxml.parse_domain(dom.XMLDesc(0)).disks if d.device == "disk"]
        assert len(target_disks) == 2
        for disk, data, index in zip(target_disks, (first, second), range(2), strict=True):
            raw = qemu_img_raw(Path(disk.path), disk.format, tmp_path / f"t{index}.raw")
            assert raw == data
    finally:
        conn.close()
    assert migration["status"]["snapshotId"]
    assert vs.prop(vm_id, "runtime.powerState") == "poweredOn"  # the source keeps running
    assert not vs.prop(vm_id, "snapshot")  # the migration snapshot was removed


def test_libvirt_vm_moves_to_vsphere(
    vs: Lab, vcsim: Vcsim, env: LibvirtEnv, cleanup_libvirt: None, tmp_path: Path
) -> None:
    conn = env.connect()
    data = pattern(2 * MiB, 33) + bytes(6 * MiB)
    try:
        pool = conn.storagePoolLookupByName(env.pool)
        name = env.name(f"vs-src-{secrets.token_hex(2)}.img")
        path = str(pool.createXML(volxml.build_volume(name, len(data), "raw"), 0).path())
        Path(path).write_bytes(data)
        plan = domxml.DomainPlan(
            name=env.name(f"vs-src-{secrets.token_hex(2)}"),
            vcpus=2,
            memory_mib=96,
            virt_type="qemu",
            disks=[domxml.DiskPlan(path, "raw", "virtio", "vda", boot_order=1)],
            nics=[domxml.NicPlan("network", env.network, "52:54:00:e2:e0:09")],
        )
        source_id = str(conn.defineXML(domxml.build_domain(plan)).UUIDString())
    finally:
        conn.close()
    nfs = tmp_path / "nfs"
    nfs.mkdir()
    target = vs.name("from-kvm")
    kvm = _libvirt_provider(env)
    kvm["spec"]["defaults"] = {"storagePool": env.pool}
    manifests = [
        *_vsphere_provider(vcsim),
        kvm,
        *_migration("kvm", source_id, "vcenter", target, DATASTORE, PORTGROUP, nfs),
    ]
    migration = _run(tmp_path, manifests)
    listed = vs.client.retrieve_all({vim.VirtualMachine: ["name"]}, "test: find the target")
    found = [o for o in listed if o.props.get("name") == target]
    assert len(found) == 1, migration["status"]
    vs.vms.append(found[0].ref)
    devices = vs.prop(found[0].moid, "config.hardware.device")
    disks = [d for d in devices if isinstance(d, vim.vm.device.VirtualDisk)]
    disk_paths = [str(getattr(d.backing, "fileName", "")) for d in disks]
    assert len(disk_paths) == 1
    folder_file = disk_paths[0].split("] ", 1)[1]
    flat = vs.root / folder_file.replace(".vmdk", "-flat.vmdk")
    vs.paths += [flat, vs.root / folder_file]
    assert flat.read_bytes() == data
    assert vs.prop(found[0].moid, "config.hardware.numCPU") == 2
