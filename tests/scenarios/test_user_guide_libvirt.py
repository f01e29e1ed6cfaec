"""The user guide's scenarios 4-6 through the engine, libvirt to libvirt, real servers.

Each test writes the manifests a user would, runs ``virtrigaud run -f`` (one-machine
mode: real provider processes, real libvirtd + QEMU, real SeaweedFS or an NFS-style
directory) and then checks the data that arrived (content digests of every target
volume against the source disk), the final status fields and the events. The
cross-hypervisor scenarios (1-3) are in ``test_user_guide_cross.py``.

4. A VM with three disks of different sizes and formats (qcow2, raw, vmdk) and
   ``targetDiskFormat: raw``: every disk arrives as a raw volume with the same content.
5. ``targetResourceHints`` (CPU, memory, boot disk size) and ``targetNetworkHints`` are
   applied on the target and visible in DescribeVM.
6. Cleanup: after Ready nothing is left in intermediate storage (S3) and no migration
   snapshot remains on the source; with ``deleteSource: true`` the source VM is deleted
   only after the target was validated, and a migration that fails keeps its source.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from manager.store.sqlite import SQLiteStore
from providers.common import digest, qemu_img
from providers.libvirt import volxml
from providers.libvirt.driver import LibvirtDriver
from providers.libvirt.driver import create as create_driver
from providers.runtime.driver import ProviderConfig
from tests.servers.libvirtd import LibvirtEnv, session_env
from tests.servers.seaweedfs import SeaweedFS
from tests.support.libvirt_vms import Source, define_source, remove_all
from tests.support.onemachine import run
from virtrigaud.provider.v1 import provider_pb2 as pb

MiB = 1 << 20
GiB = 1 << 30
API = "infra.virtrigaud.io/v1beta1"


@pytest.fixture(scope="module")
def env(pytestconfig: pytest.Config) -> LibvirtEnv:
    return session_env(pytestconfig)


@pytest.fixture
def cleanup(env: LibvirtEnv) -> Iterator[None]:
    yield
    remove_all(env)


@pytest.fixture
def driver(env: LibvirtEnv) -> Iterator[LibvirtDriver]:
    """The target side's DescribeVM, as the provider answers it."""
    made = create_driver(ProviderConfig(endpoint=env.uri, options={"storagePool": env.pool2}))
    yield made
    made.close()


def _manifests(env: LibvirtEnv, src: Source, storage: dict[str, Any], **spec: Any) -> list[Any]:
    def provider(name: str, pool: str) -> dict[str, Any]:
        return {
            "apiVersion": API,
            "kind": "Provider",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"type": "libvirt", "endpoint": env.uri, "defaults": {"storagePool": pool}},
        }

    return [
        provider("kvm-a", env.pool),
        provider("kvm-b", env.pool2),
        {
            "apiVersion": API,
            "kind": "VirtualMachine",
            "metadata": {"name": "app", "namespace": "default"},
            "spec": {"providerRef": {"name": "kvm-a"}, "vmId": src.uuid},
        },
        {
            "apiVersion": API,
            "kind": "VMMigration",
            "metadata": {"name": "move", "namespace": "default"},
            "spec": {
                "sourceName": "app",
                "sourceNamespace": "default",
                "targetProviderRef": {"name": "kvm-b"},
                "targetName": env.name("moved"),
                "targetStorageHint": env.pool2,
                "storage": storage,
                **spec,
            },
        },
    ]


def _migrate(tmp_path: Path, manifests: list[Any], expect: int = 0) -> dict[str, Any]:
    proc = run(tmp_path, manifests)
    out, err = proc.communicate(timeout=1200)
    assert proc.returncode == expect, f"{out}\n{err}"
    store = SQLiteStore(tmp_path / "state.db")
    try:
        migration = store.get("VMMigration", "default", "move")
        migration["events"] = [
            (e.reason, e.message) for e in store.events_for("VMMigration", "default", "move")
        ]
        target = [o for o in store.list("VirtualMachine") if o["metadata"]["name"] != "app"]
        migration["target"] = target[0] if target else None
        migration["source_object"] = [
            o for o in store.list("VirtualMachine") if o["metadata"]["name"] == "app"
        ]
        return migration
    finally:
        store.close()


def _target_volumes(env: LibvirtEnv, status: dict[str, Any]) -> list[tuple[str, str]]:
    conn = env.connect()
    try:
        pool = conn.storagePoolLookupByName(env.pool2)
        out = []
        for disk in status["disks"]:
            vol = pool.storageVolLookupByName(disk["importedDiskId"].split("/", 1)[1])
            out.append((str(vol.path()), _volume_format(vol)))
        return out
    finally:
        conn.close()


def _volume_format(vol: Any) -> str:
    return volxml.parse_volume(vol.XMLDesc(0)).format


def _digests(src: Source) -> list[str]:
    return [digest.content_digest(p, f, force_share=True) for p, f in src.disks]


def _same_content(want: list[str], arrived: list[tuple[str, str]]) -> None:
    got = [digest.content_digest(path, fmt, force_share=True) for path, fmt in arrived]
    assert got == want


def test_scenario_4_three_disks_of_different_formats_arrive_raw(
    env: LibvirtEnv, cleanup: None, tmp_path: Path
) -> None:
    src = define_source(
        env,
        [("qcow2", 64 * MiB, 0x11), ("raw", 40 * MiB, 0x22), ("vmdk", 24 * MiB, 0x33)],
        label="multi",
    )
    nfs = tmp_path / "nfs"
    nfs.mkdir()
    migration = _migrate(
        tmp_path,
        _manifests(env, src, {"type": "nfs", "path": str(nfs)}, targetDiskFormat="raw"),
    )
    status = migration["status"]
    assert status["phase"] == "Ready" and status["progress"] == 100
    assert [d["sourceFormat"] for d in status["disks"]] == ["qcow2", "raw", "vmdk"]
    assert [d["format"] for d in status["disks"]] == ["raw", "raw", "raw"]
    arrived = _target_volumes(env, status)
    assert [fmt for _, fmt in arrived] == ["raw", "raw", "raw"]
    _same_content(_digests(src), arrived)
    converted = {c["type"]: c for c in status["conditions"]}["Converted"]
    assert converted["status"] == "True" and converted["reason"] == "ConvertedOnSource"
    assert "qcow2 -> raw" in converted["message"] and "vmdk -> raw" in converted["message"]
    reasons = [reason for reason, _ in migration["events"]]
    assert {"ExportCompleted", "ImportCompleted", "VMCreated", "MigrationCompleted"} <= set(reasons)


def test_scenario_5_resource_and_network_hints_show_on_the_target(
    env: LibvirtEnv, cleanup: None, driver: LibvirtDriver, tmp_path: Path
) -> None:
    src = define_source(env, [("qcow2", 48 * MiB, 0x44)], vcpus=1, memory_mib=64, label="hint")
    nfs = tmp_path / "nfs"
    nfs.mkdir()
    migration = _migrate(
        tmp_path,
        _manifests(
            env,
            src,
            {"type": "nfs", "path": str(nfs)},
            targetResourceHints={"cpu": 2, "memory": 192, "disk": 1},
            targetNetworkHints=[{"name": "eth0", "network": env.network}],
        ),
    )
    assert migration["status"]["phase"] == "Ready"
    target_id = migration["target"]["status"]["id"]
    described = driver.describe_vm(target_id)
    assert (described.cpu, described.memory_mib) == (2, 192)
    disks = [d for d in described.disks if d.device == pb.DISK_DEVICE_DISK]
    assert [d.virtual_size_bytes for d in disks] == [GiB]  # grown by the disk hint
    assert [(n.network, n.mac) for n in described.nics] == [(env.network, src.mac)]
    # Growing the disk kept the source's data; the added space reads as zeros.
    ((path, fmt),) = _target_volumes(env, migration["status"])
    ((src_path, src_fmt),) = src.disks
    assert qemu_img.compare(src_path, path, a_format=src_fmt, b_format=fmt, force_share=True)
    source = driver.describe_vm(src.uuid)
    assert source.cpu == 1 and source.memory_mib == 64  # the source is untouched


def test_scenario_6_cleanup_leaves_nothing_and_deletes_the_source_last(
    env: LibvirtEnv, cleanup: None, seaweed: SeaweedFS, tmp_path: Path
) -> None:
    src = define_source(env, [("qcow2", 32 * MiB, 0x55), ("raw", 16 * MiB, 0x66)], label="gone")
    want = _digests(src)  # the source's disks go with it
    bucket = seaweed.create_bucket(f"scn-{secrets.token_hex(3)}")
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s3", "namespace": "default"},
        "stringData": {"accessKey": seaweed.access_key, "secretKey": seaweed.secret_key},
    }
    storage = {
        "type": "s3",
        "bucket": bucket,
        "region": "us-east-1",
        "endpoint": seaweed.endpoint,
        "credentialsSecretRef": {"name": "s3"},
    }
    manifests = [secret, *_manifests(env, src, storage, cleanupPolicy={"deleteSource": True})]
    migration = _migrate(tmp_path, manifests)
    status = migration["status"]
    assert status["phase"] == "Ready"
    cleaned = {c["type"]: c for c in status["conditions"]}["CleanedUp"]
    assert cleaned["status"] == "True", cleaned
    assert f"source VM {src.uuid}" in cleaned["message"]
    assert seaweed.client().list_objects_v2(Bucket=bucket).get("Contents", []) == []
    # The source domain and its VirtualMachine object are gone ...
    conn = env.connect()
    try:
        with pytest.raises(libvirt.libvirtError):
            conn.lookupByUUIDString(src.uuid)
    finally:
        conn.close()
    assert migration["source_object"] == []
    # ... and only after the target was validated (Ready came first).
    reasons = [reason for reason, _ in migration["events"]]
    assert reasons.index("MigrationCompleted") < reasons.index("CleanupCompleted")
    _same_content(want, _target_volumes(env, status))


def test_scenario_6_a_failed_migration_never_deletes_its_source(
    env: LibvirtEnv, cleanup: None, tmp_path: Path
) -> None:
    src = define_source(env, [("raw", 16 * MiB, 0x77)], label="kept")
    nfs = tmp_path / "nfs"
    nfs.mkdir()
    manifests = _manifests(
        env,
        src,
        {"type": "nfs", "path": str(nfs)},
        cleanupPolicy={"deleteSource": True},
        targetStorageHint="no-such-pool",
    )
    migration = _migrate(tmp_path, manifests, expect=1)
    assert migration["status"]["phase"] == "Failed"
    conn = env.connect()
    try:
        assert conn.lookupByUUIDString(src.uuid).isActive()  # still there, still running
    finally:
        conn.close()
    assert len(migration["source_object"]) == 1
