"""End to end in one-machine mode: ``virtrigaud run -f DIR`` moves a running two-disk
libvirt VM to another libvirt pool through real intermediate storage.

Everything is real: libvirtd + QEMU (TCG), the libvirt provider servers started by
the launcher as child processes, SeaweedFS (S3) or an NFS-style directory, the
SQLite store, the controllers. The test checks the data itself (qemu-img compare
and the content digest of every target volume against the source disk), the final
status fields, the events, and that cleanup left nothing in intermediate storage and
no snapshot on the source.
"""

from __future__ import annotations

import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from manager.store.sqlite import SQLiteStore
from providers.common import digest, qemu_img
from providers.libvirt import domxml, volxml
from tests.servers.libvirtd import LibvirtEnv, session_env
from tests.servers.nginx import NginxDav
from tests.servers.seaweedfs import SeaweedFS
from tests.support.libvirt_vms import Source, define_source, remove_all
from tests.support.onemachine import cli, migration_status, run
from virtrigaud import errors

MiB = 1 << 20
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def env(pytestconfig: pytest.Config) -> LibvirtEnv:
    return session_env(pytestconfig)


@pytest.fixture
def source(env: LibvirtEnv) -> Iterator[Source]:
    """A running two-disk VM (qcow2 96 MiB, raw 48 MiB) on the session's first pool."""
    yield define_source(env, [("qcow2", 96 * MiB, 0x31), ("raw", 48 * MiB, 0x61)], label="e2e")
    remove_all(env)


def _manifests(
    env: LibvirtEnv, src: Source, storage: dict[str, Any], extra: list[Any], **spec: Any
) -> list[Any]:
    provider = {
        "apiVersion": "infra.virtrigaud.io/v1beta1",
        "kind": "Provider",
    }
    return [
        *extra,
        {
            **provider,
            "metadata": {"name": "kvm-a", "namespace": "default"},
            "spec": {"type": "libvirt", "endpoint": env.uri, "defaults": {"storagePool": env.pool}},
        },
        {
            **provider,
            "metadata": {"name": "kvm-b", "namespace": "default"},
            "spec": {
                "type": "libvirt",
                "endpoint": env.uri,
                "defaults": {"storagePool": env.pool2},
            },
        },
        {
            "apiVersion": "infra.virtrigaud.io/v1beta1",
            "kind": "VirtualMachine",
            "metadata": {"name": "app-server", "namespace": "default"},
            "spec": {"providerRef": {"name": "kvm-a"}, "vmId": src.uuid},
        },
        {
            "apiVersion": "infra.virtrigaud.io/v1beta1",
            "kind": "VMMigration",
            "metadata": {"name": "move-app", "namespace": "default"},
            "spec": {
                "sourceName": "app-server",
                "sourceNamespace": "default",
                "targetProviderRef": {"name": "kvm-b", "namespace": "default"},
                "targetName": env.name("moved"),
                "targetStorageHint": env.pool2,
                "targetNetworkHints": [{"name": "eth0", "network": env.network}],
                "storage": storage,
                "retryPolicy": {
                    "maxAttempts": 2,
                    "backoffDuration": "1s",
                    "maxBackoffDuration": "2s",
                },
                **spec,
            },
        },
    ]


def _assert_migrated(
    env: LibvirtEnv, src: Source, workdir: Path, *, all_events: bool = True
) -> dict[str, Any]:
    store = SQLiteStore(workdir / "state.db")
    migration = store.get("VMMigration", "default", "move-app")
    status = migration["status"]
    assert status["phase"] == "Ready", status
    assert status["progress"] == 100
    assert status["startTime"] and status["completionTime"]
    assert status["snapshotId"]
    assert status["checksum"].startswith("sha256:")
    disks = status["disks"]
    assert len(disks) == 2
    conditions = {c["type"]: c for c in status["conditions"]}
    for kind in (
        "Validated",
        "Snapshotted",
        "Exported",
        "Transferred",
        "Converted",
        "Imported",
        "Created",
        "Ready",
    ):
        assert conditions[kind]["status"] == "True", conditions[kind]
    reasons = {e.reason for e in store.events_for("VMMigration", "default", "move-app")}
    # Events are best effort (as in Kubernetes): a run killed between its status write
    # and its event loses that event, so the resume test only asks for the final one.
    expected = {
        "ValidationSuccessful",
        "SnapshotCreated",
        "ExportCompleted",
        "ImportCompleted",
        "VMCreated",
        "MigrationCompleted",
    }
    assert (expected if all_events else {"MigrationCompleted"}) <= reasons
    target = store.get("VirtualMachine", "default", env.name("moved"))
    assert target["spec"]["importedDisk"]["source"] == "migration"
    assert target["spec"]["importedDisk"]["migrationRef"]["name"] == "move-app"

    conn = env.connect()
    try:
        dom = conn.lookupByUUIDString(target["status"]["id"])
        desc = domxml.parse_domain(dom.XMLDesc(0))
        target_disks = [d for d in desc.disks if d.device == "disk"]
        assert len(target_disks) == 2
        for (src_path, src_fmt), disk, recorded in zip(src.disks, target_disks, disks, strict=True):
            assert disk.path and disk.path.startswith(str(env.pool2_path))
            assert qemu_img.compare(
                src_path, disk.path, a_format=src_fmt, b_format=disk.format, force_share=True
            )
            want = digest.content_digest(src_path, src_fmt, force_share=True)
            assert digest.content_digest(disk.path, disk.format, force_share=True) == want
            assert recorded["contentChecksum"].removeprefix("sha256:") == want
        # No migration snapshot is left on the source, and it still runs.
        src_dom = conn.lookupByUUIDString(src.uuid)
        assert src_dom.snapshotNum(0) == 0
        assert src_dom.isActive()
        assert [
            d.path for d in domxml.parse_domain(src_dom.XMLDesc(0)).disks if d.device == "disk"
        ] == [path for path, _ in src.disks]
    finally:
        conn.close()
    store.close()
    return migration


def test_running_two_disk_vm_moves_through_s3(
    env: LibvirtEnv, source: Source, seaweed: SeaweedFS, tmp_path: Path
) -> None:
    bucket = seaweed.create_bucket(f"e2e-{secrets.token_hex(3)}")
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s3-creds", "namespace": "default"},
        "stringData": {"accessKey": seaweed.access_key, "secretKey": seaweed.secret_key},
    }
    storage = {
        "type": "s3",
        "bucket": bucket,
        "region": "us-east-1",
        "endpoint": seaweed.endpoint,
        "credentialsSecretRef": {"name": "s3-creds", "namespace": "default"},
    }
    proc = run(tmp_path, _manifests(env, source, storage, [secret]))
    out, err = proc.communicate(timeout=1200)
    assert proc.returncode == 0, f"{out}\n{err}"
    migration = _assert_migrated(env, source, tmp_path)
    # The closing summary: bytes, each disk's checksum and where it went, the target VM.
    target_id = migration["status"]["disks"][0]["importedDiskId"]
    assert "transferred " in out and f"-> {target_id}" in out
    assert f"target VM   VirtualMachine/default/{env.name('moved')} (id " in out
    cleaned = {c["type"]: c for c in migration["status"]["conditions"]}["CleanedUp"]
    assert cleaned["status"] == "True", cleaned
    assert list(seaweed.client().list_objects_v2(Bucket=bucket).get("Contents", [])) == []
    table = cli(tmp_path, "get", "vmmigrations")
    assert "move-app" in table and "Ready" in table
    described = cli(tmp_path, "describe", "vmmigration", "move-app")
    assert "MigrationCompleted" in described


def test_running_two_disk_vm_moves_through_http_webdav(
    env: LibvirtEnv, source: Source, nginx: NginxDav, tmp_path: Path
) -> None:
    base = f"{nginx.bearer_url.rstrip('/')}/e2e-{secrets.token_hex(3)}"
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "http-creds", "namespace": "default"},
        "stringData": {"token": f"Bearer_{nginx.token}"},  # the reference's value style
    }
    storage = {
        "type": "http",
        "endpoint": base,
        "credentialsSecretRef": {"name": "http-creds", "namespace": "default"},
    }
    manifests = _manifests(env, source, storage, [secret], targetPowerPolicy="PowerOnAndVerify")
    proc = run(tmp_path, manifests)
    out, err = proc.communicate(timeout=1200)
    assert proc.returncode == 0, f"{out}\n{err}"
    migration = _assert_migrated(env, source, tmp_path)
    assert all(d["intermediateStorageURL"].startswith(base) for d in migration["status"]["disks"])
    # targetPowerPolicy PowerOnAndVerify: the target VM was started and left running.
    assert "target VM powered on and seen running" in migration["status"]["message"]
    store = SQLiteStore(tmp_path / "state.db")
    target_id = store.get("VirtualMachine", "default", env.name("moved"))["status"]["id"]
    store.close()
    conn = env.connect()
    try:
        assert conn.lookupByUUIDString(target_id).isActive()
    finally:
        conn.close()
    cleaned = {c["type"]: c for c in migration["status"]["conditions"]}["CleanedUp"]
    assert cleaned["status"] == "True", cleaned
    for disk in migration["status"]["disks"]:  # deleted from the WebDAV server
        key = disk["intermediateStorageURL"].removeprefix(nginx.bearer_url.rstrip("/") + "/")
        assert nginx.path_of("bearer", key).parent.is_dir()  # the upload made it: path is right
        assert not nginx.path_of("bearer", key).exists()


def test_killed_run_resumes_without_redoing_finished_disks(
    env: LibvirtEnv, source: Source, tmp_path: Path
) -> None:
    nfs = tmp_path / "nfs"
    nfs.mkdir()
    storage = {"type": "nfs", "path": str(nfs)}
    manifests = _manifests(env, source, storage, [])
    proc = run(tmp_path, manifests)
    store_path = tmp_path / "state.db"
    deadline = time.monotonic() + 600
    first_disk: dict[str, Any] | None = None
    while time.monotonic() < deadline and proc.poll() is None:
        if store_path.exists():
            store = SQLiteStore(store_path)
            try:
                obj = store.get("VMMigration", "default", "move-app")
            except errors.NotFound:  # not loaded yet
                obj = {}
            store.close()
            disks = (obj.get("status") or {}).get("disks") or []
            done = [d for d in disks if d.get("checksum")]
            if done:
                first_disk = dict(done[0])
                break
        time.sleep(0.05)
    assert first_disk is not None, "no disk finished its export before the run ended"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    again = run(tmp_path, manifests)
    out, err = again.communicate(timeout=1200)
    assert again.returncode == 0, f"{out}\n{err}"
    migration = _assert_migrated(env, source, tmp_path, all_events=False)
    after = {d["name"]: d for d in migration["status"]["disks"]}[first_disk["name"]]
    # The disk that had finished before the kill was not exported again.
    assert after["exportTaskRef"] == first_disk["exportTaskRef"]
    assert after["checksum"] == first_disk["checksum"]
    assert list(nfs.rglob("*")) == [] or all(p.is_dir() for p in nfs.rglob("*"))
    # The providers of the killed run went down with it (they once hung in shutdown).
    deadline = time.monotonic() + 60
    while _providers_of(env) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _providers_of(env) == []


def _attach_big_disk(env: LibvirtEnv, source: Source) -> str:
    """A third disk (vdc) with 512 MiB of data: its export and import take seconds, which
    gives the tests below a window where the other disks are done and it is not."""
    conn = env.connect()
    try:
        pool = conn.storagePoolLookupByName(env.pool)
        name = env.name(f"e2e-{secrets.token_hex(3)}-big.img")
        big = str(pool.createXML(volxml.build_volume(name, 640 * MiB, "raw"), 0).path())
        subprocess.run(
            ["qemu-io", "-f", "raw", "-c", f"write -P 0x7e 0 {512 * MiB}", big],
            check=True,
            capture_output=True,
            timeout=120,
        )
        dom = conn.lookupByUUIDString(source.uuid)
        dom.attachDeviceFlags(
            f"<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
            f"<source file='{big}'/><target dev='vdc' bus='virtio'/></disk>",
            3,  # live + config
        )
    finally:
        conn.close()
    return big


def test_a_corrupted_object_is_caught_and_only_that_disk_exported_again(
    env: LibvirtEnv, source: Source, tmp_path: Path
) -> None:
    big = _attach_big_disk(env, source)
    nfs = tmp_path / "nfs"
    nfs.mkdir()
    proc = run(tmp_path, _manifests(env, source, {"type": "nfs", "path": str(nfs)}, []))
    store_path = tmp_path / "state.db"
    deadline = time.monotonic() + 600
    victim: dict[str, Any] | None = None
    while time.monotonic() < deadline and proc.poll() is None:
        disks = {d["name"]: d for d in migration_status(store_path, "move-app").get("disks") or []}
        vdb, vdc = disks.get("vdb", {}), disks.get("vdc", {})
        if vdb.get("phase") == "Exported" and vdc.get("phase") == "Exporting":
            victim = dict(vdb)
            break
        time.sleep(0.02)
    assert victim is not None, "never caught vdb exported while vdc still exports"
    # Flip one byte of vdb's object while the imports wait for vdc.
    path = Path(victim["intermediateStorageURL"].removeprefix("nfs://"))
    with path.open("r+b") as f:
        f.seek(4096)
        byte = f.read(1)
        f.seek(4096)
        f.write(bytes([byte[0] ^ 0xFF]))
    out, err = proc.communicate(timeout=1200)
    assert proc.returncode == 0, f"{out}\n{err}"
    store = SQLiteStore(store_path)
    migration = store.get("VMMigration", "default", "move-app")
    events = store.events_for("VMMigration", "default", "move-app")
    store.close()
    status = migration["status"]
    assert status["phase"] == "Ready" and status["retryAttempts"] == 1
    disks = {d["name"]: d for d in status["disks"]}
    assert {name: d.get("attempt") for name, d in disks.items()} == {"vda": 1, "vdb": 2, "vdc": 1}
    retry = [e.message for e in events if e.reason == "RetryScheduled"]
    assert len(retry) == 1 and "import of disk vdb failed: CHECKSUM_MISMATCH" in retry[0]
    conn = env.connect()
    try:
        target = conn.storagePoolLookupByName(env.pool2)
        sources = dict(zip(("vda", "vdb", "vdc"), [*source.disks, (big, "raw")], strict=True))
        for name, disk in disks.items():
            vol = target.storageVolLookupByName(disk["importedDiskId"].split("/", 1)[1])
            vol_path, fmt = vol.path(), volxml.parse_volume(vol.XMLDesc(0)).format
            src_path, src_fmt = sources[name]
            want = digest.content_digest(src_path, src_fmt, force_share=True)
            assert digest.content_digest(vol_path, fmt, force_share=True) == want, name
    finally:
        conn.close()


def test_deleting_a_migration_mid_import_leaves_nothing_anywhere(
    env: LibvirtEnv, source: Source, tmp_path: Path
) -> None:
    """Delete the VMMigration while one disk is imported and the other still imports:
    the running import is cancelled, the imported volume deleted on the target
    (DeleteDisk), the intermediate objects and the source snapshot removed; the source
    keeps running untouched."""
    big = _attach_big_disk(env, source)
    nfs = tmp_path / "nfs"
    nfs.mkdir()
    proc = run(tmp_path, _manifests(env, source, {"type": "nfs", "path": str(nfs)}, []))
    store_path = tmp_path / "state.db"
    deadline = time.monotonic() + 600
    seen: dict[str, str] = {}
    while time.monotonic() < deadline and proc.poll() is None:
        disks = {
            d["name"]: d.get("phase", "")
            for d in migration_status(store_path, "move-app").get("disks") or []
        }
        seen = disks
        if "Imported" in disks.values() and "Importing" in disks.values():
            break
        time.sleep(0.02)
    assert "Importing" in seen.values(), f"never caught an import in flight: {seen}"
    store = SQLiteStore(store_path)
    store.delete("VMMigration", "default", "move-app")
    store.close()
    deadline = time.monotonic() + 300
    while migration_status(store_path, "move-app") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not migration_status(store_path, "move-app"), "the finalizer never finished"
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    store = SQLiteStore(store_path)
    events = store.events_for("VMMigration", "default", "move-app")
    store.close()
    completed = [e.message for e in events if e.reason == "CleanupCompleted"]
    assert completed and "imported disk" in completed[0], [e.reason for e in events]
    assert [p for p in nfs.rglob("*") if p.is_file()] == []
    conn = env.connect()
    try:
        target_pool = conn.storagePoolLookupByName(env.pool2)
        target_pool.refresh(0)
        assert [v.name() for v in target_pool.listAllVolumes(0)] == []
        src_dom = conn.lookupByUUIDString(source.uuid)
        assert src_dom.snapshotNum(0) == 0 and src_dom.isActive()
        attached = [
            d.path for d in domxml.parse_domain(src_dom.XMLDesc(0)).disks if d.device == "disk"
        ]
        assert attached == [path for path, _ in source.disks] + [big]
    finally:
        conn.close()


def _providers_of(env: LibvirtEnv) -> list[int]:
    """Provider processes still running for this session's pools."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"provider" in cmdline and any(env.pool.encode() in part for part in cmdline):
            found.append(int(proc.name))
    return found


def test_delete_cleans_up_after_a_failed_migration(
    env: LibvirtEnv, source: Source, tmp_path: Path
) -> None:
    """A migration that fails at its very end (a VM of the target name already exists
    on the hypervisor) keeps its objects, snapshot and imported disks for diagnosis;
    `virtrigaud delete vmmigration` then removes all of them and leaves the foreign VM
    alone."""
    conn = env.connect()
    try:
        squatter = conn.defineXML(
            domxml.build_domain(
                domxml.DomainPlan(name=env.name("moved"), vcpus=1, memory_mib=32, virt_type="qemu")
            )
        )
        squatter_uuid = squatter.UUIDString()
    finally:
        conn.close()
    nfs = tmp_path / "nfs"
    nfs.mkdir()
    proc = run(tmp_path, _manifests(env, source, {"type": "nfs", "path": str(nfs)}, []))
    out, err = proc.communicate(timeout=1200)
    assert proc.returncode == 1, f"{out}\n{err}"
    status = migration_status(tmp_path / "state.db", "move-app")
    assert status["phase"] == "Failed", status
    assert [p for p in nfs.rglob("*") if p.is_file() and p.suffix != ".sha256"]  # kept
    conn = env.connect()
    try:
        assert conn.lookupByUUIDString(source.uuid).snapshotNum(0) == 1  # kept
        pool2 = conn.storagePoolLookupByName(env.pool2)
        pool2.refresh(0)
        assert len(pool2.listAllVolumes(0)) == 2  # both disks were imported
    finally:
        conn.close()

    out = cli(tmp_path, "delete", "vmmigration", "move-app", "--timeout", "300")
    assert "vmmigration default/move-app deleted" in out
    assert "CleanupCompleted: deleted" in out
    assert not migration_status(tmp_path / "state.db", "move-app")
    assert [p for p in nfs.rglob("*") if p.is_file()] == []
    conn = env.connect()
    try:
        assert conn.lookupByUUIDString(source.uuid).snapshotNum(0) == 0
        assert conn.lookupByUUIDString(source.uuid).isActive()
        pool2 = conn.storagePoolLookupByName(env.pool2)
        pool2.refresh(0)
        assert [v.name() for v in pool2.listAllVolumes(0)] == []
        assert conn.lookupByUUIDString(squatter_uuid).name() == env.name("moved")  # untouched
    finally:
        conn.close()
