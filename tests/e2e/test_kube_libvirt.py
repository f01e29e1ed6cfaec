"""End to end in Kubernetes mode: two ``virtrigaud manager`` processes with leader
election against the Kubernetes API emulator move a running two-disk libvirt VM to
another libvirt pool through real S3 (SeaweedFS); the leader is killed mid-migration
and the standby takes over and finishes.

Real: libvirtd + QEMU (TCG), the libvirt provider servers (local processes standing in
for the provider pods: ``ProviderLauncher`` over the API writes their
``status.endpoint``, as the Deployment step would), SeaweedFS, the official Kubernetes
client over HTTP, the manager CLI. The test checks the moved data (qemu-img compare
and content digests), the status and core/v1 Events as the API shows them, the Lease
hand-over, the survivor's metrics, what a real ``kubectl describe`` shows, that nothing
written would be pruned by the CRDs, and that deleting the finished VMMigration goes
through its finalizer.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from manager.kube.store import KubeStore
from manager.migration.model import FINALIZER
from manager.onemachine.launcher import ProviderLauncher
from providers.common import digest, qemu_img
from providers.libvirt import domxml, volxml
from tests.kubeapi.fixtures import api_client, running, write_kubeconfig
from tests.kubeapi.server import KubeAPIServer
from tests.servers.libvirtd import LibvirtEnv, remove_domain, session_env
from tests.servers.net import free_port
from tests.servers.seaweedfs import SeaweedFS
from tests.support import venv_tool
from virtrigaud import errors

MiB = 1 << 20
REPO = Path(__file__).resolve().parents[2]
API = "infra.virtrigaud.io/v1beta1"
LEASE = "virtrigaud-manager"


@dataclass
class Source:
    name: str
    uuid: str
    disks: list[tuple[str, str]]  # (path, format)


@pytest.fixture(scope="module")
def env(pytestconfig: pytest.Config) -> LibvirtEnv:
    return session_env(pytestconfig)


def _volume(conn: Any, env: LibvirtEnv, name: str, fmt: str, *, size: int, fill: int) -> str:
    pool = conn.storagePoolLookupByName(env.pool)
    path = str(pool.createXML(volxml.build_volume(name, size, fmt), 0).path())
    for index, offset in enumerate((0, size // 3, size - 4 * MiB)):
        subprocess.run(
            ["qemu-io", "-f", fmt, "-c", f"write -P {fill + index} {offset} {2 * MiB}", path],
            check=True,
            capture_output=True,
            timeout=120,
        )
    return path


@pytest.fixture
def source(env: LibvirtEnv) -> Iterator[Source]:
    tag = secrets.token_hex(3)
    conn = env.connect()
    disks = [
        (
            _volume(
                conn, env, env.name(f"k8s-{tag}-root.qcow2"), "qcow2", size=64 * MiB, fill=0x41
            ),
            "qcow2",
        ),
        (
            _volume(conn, env, env.name(f"k8s-{tag}-data.img"), "raw", size=32 * MiB, fill=0x71),
            "raw",
        ),
    ]
    plan = domxml.DomainPlan(
        name=env.name(f"k8s-src-{tag}"),
        vcpus=1,
        memory_mib=64,
        virt_type="qemu",
        disks=[
            domxml.DiskPlan(disks[0][0], "qcow2", "virtio", "vda", boot_order=1),
            domxml.DiskPlan(disks[1][0], "raw", "virtio", "vdb"),
        ],
        nics=[domxml.NicPlan("network", env.network, "52:54:00:e2:e1:01")],
    )
    dom = conn.defineXML(domxml.build_domain(plan))
    dom.create()
    yield Source(plan.name, dom.UUIDString(), disks)
    for candidate in conn.listAllDomains(0):
        if candidate.name().startswith(env.prefix):
            remove_domain(candidate)
    for pool_name in (env.pool, env.pool2):
        pool = conn.storagePoolLookupByName(pool_name)
        pool.refresh(0)
        for vol in pool.listAllVolumes(0):
            vol.delete(0)
    conn.close()


def _manifests(env: LibvirtEnv, src: Source, seaweed: SeaweedFS, bucket: str) -> list[Any]:
    def provider(name: str, pool: str) -> dict[str, Any]:
        return {
            "apiVersion": API,
            "kind": "Provider",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"type": "libvirt", "endpoint": env.uri, "defaults": {"storagePool": pool}},
        }

    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "s3-creds", "namespace": "default"},
            "stringData": {"accessKey": seaweed.access_key, "secretKey": seaweed.secret_key},
        },
        provider("kvm-a", env.pool),
        provider("kvm-b", env.pool2),
        {
            "apiVersion": API,
            "kind": "VirtualMachine",
            "metadata": {"name": "app-server", "namespace": "default"},
            "spec": {"providerRef": {"name": "kvm-a"}, "vmId": src.uuid},
        },
        {
            "apiVersion": API,
            "kind": "VMMigration",
            "metadata": {"name": "move-app", "namespace": "default"},
            "spec": {
                "sourceName": "app-server",
                "sourceNamespace": "default",
                "targetProviderRef": {"name": "kvm-b", "namespace": "default"},
                "targetName": env.name("moved-k8s"),
                "targetStorageHint": env.pool2,
                "targetNetworkHints": [{"name": "eth0", "network": env.network}],
                "storage": {
                    "type": "s3",
                    "bucket": bucket,
                    "region": "us-east-1",
                    "endpoint": seaweed.endpoint,
                    "credentialsSecretRef": {"name": "s3-creds", "namespace": "default"},
                },
                "retryPolicy": {"maxAttempts": 2, "backoffDuration": "1s"},
            },
        },
    ]


@dataclass
class Replica:
    identity: str
    process: subprocess.Popen[bytes]
    metrics: int
    log: Path


def _manager(kubeconfig: Path, identity: str, workdir: Path) -> Replica:
    metrics, health = free_port(), free_port()
    log = workdir / f"{identity}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "virtrigaud.cli",
                "manager",
                "--kubeconfig",
                str(kubeconfig),
                "--leader-elect",
                "--leader-election-namespace",
                "default",
                "--leader-election-id",
                LEASE,
                "--identity",
                identity,
                "--lease-duration",
                "4",
                "--renew-deadline",
                "3",
                "--retry-period",
                "0.5",
                "--metrics-bind-address",
                f"127.0.0.1:{metrics}",
                "--health-probe-bind-address",
                f"127.0.0.1:{health}",
                "--log-level",
                "info",
            ],
            cwd=REPO,
            env={
                **os.environ,
                "PYTHONPATH": str(REPO),
                "VIRTRIGAUD_STORAGE_ALLOWED_HOSTS": "127.0.0.1",
            },
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Replica(identity, process, metrics, log)


def _until(check: Any, timeout: float, what: str, replicas: list[Replica]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    logs = "\n".join(f"--- {r.identity}\n{r.log.read_text()[-4000:]}" for r in replicas)
    raise AssertionError(f"timed out waiting for {what}\n{logs}")


def _lease(server: KubeAPIServer) -> client.V1Lease | None:
    try:
        return client.CoordinationV1Api(api_client(server)).read_namespaced_lease(LEASE, "default")
    except client.ApiException:
        return None


def _holder(server: KubeAPIServer) -> str:
    lease = _lease(server)
    return str(lease.spec.holder_identity or "") if lease is not None else ""


def _gone(store: KubeStore) -> bool:
    try:
        store.get("VMMigration", "default", "move-app")
    except errors.NotFound:
        return True
    return False


def _settled(store: KubeStore) -> dict[str, Any] | None:
    obj = store.get("VMMigration", "default", "move-app")
    status = obj.get("status") or {}
    if status.get("phase") == "Failed":
        raise AssertionError(f"migration failed: {status}")
    cleaned = {c["type"]: c for c in status.get("conditions") or []}.get("CleanedUp")
    if status.get("phase") == "Ready" and cleaned and cleaned["status"] == "True":
        return obj
    return None


def test_leader_killed_mid_migration_standby_finishes_it(
    env: LibvirtEnv,
    source: Source,
    seaweed: SeaweedFS,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VIRTRIGAUD_STORAGE_ALLOWED_HOSTS", "127.0.0.1")  # for the providers
    bucket = seaweed.create_bucket(f"k8s-{secrets.token_hex(3)}")
    replicas: list[Replica] = []
    with running(token=secrets.token_hex(8)) as server:
        kubeconfig = write_kubeconfig(server, tmp_path / "kubeconfig")
        store = KubeStore(api_client(server))
        for manifest in _manifests(env, source, seaweed, bucket):  # kubectl apply
            store.create(manifest)
        with ProviderLauncher(store, tmp_path) as launcher:  # the provider "pods"
            launcher.start_all()
            assert launcher.failed == {}
            try:
                replicas = [_manager(kubeconfig, name, tmp_path) for name in ("mgr-a", "mgr-b")]
                first = _until(lambda: _holder(server), 60, "a leader", replicas)
                leader = next(r for r in replicas if r.identity == first)
                standby = next(r for r in replicas if r.identity != first)

                def started() -> bool:
                    status = store.get("VMMigration", "default", "move-app").get("status") or {}
                    return status.get("phase") not in (None, "Pending", "Validating")

                _until(started, 300, "the migration to start", replicas)
                phase_at_kill = store.get("VMMigration", "default", "move-app")["status"]["phase"]
                leader.process.send_signal(signal.SIGKILL)  # no release: the Lease expires
                leader.process.wait(30)
                _until(lambda: _holder(server) == standby.identity, 60, "the take-over", replicas)
                migration = _until(lambda: _settled(store), 900, "Ready + CleanedUp", replicas)
                server.token = None  # kubectl sends no bearer token over plain HTTP
                described = subprocess.run(
                    [
                        venv_tool("kubectl"),
                        "--kubeconfig",
                        str(kubeconfig),
                        "describe",
                        "vmmigration",
                        "move-app",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=False,
                    env={**os.environ, "KUBECONFIG": ""},
                )
                metrics = (
                    urllib.request.urlopen(
                        f"http://127.0.0.1:{standby.metrics}/metrics", timeout=10
                    )
                    .read()
                    .decode()
                )
                # kubectl delete: the finalizer holds it until the manager lets it go.
                assert FINALIZER in migration["metadata"]["finalizers"]
                store.delete("VMMigration", "default", "move-app")
                _until(lambda: _gone(store), 120, "the finalizer to let go", replicas)
            finally:
                for replica in replicas:
                    if replica.process.poll() is None:
                        replica.process.send_signal(signal.SIGTERM)
                        replica.process.wait(60)
        lease = _lease(server)
        events = (
            client.CoreV1Api(api_client(server))
            .list_namespaced_event(
                "default",
                field_selector="involvedObject.kind=VMMigration,involvedObject.name=move-app",
            )
            .items
        )
        target = store.get("VirtualMachine", "default", env.name("moved-k8s"))
        store.close()
        pruned = list(server.state.crds.pruned)

    assert phase_at_kill != "Ready"
    assert pruned == []  # nothing written that a cluster with our CRDs would drop
    assert described.returncode == 0, described.stderr
    assert "Phase:" in described.stdout and "Ready" in described.stdout
    assert "MigrationCompleted" in described.stdout[described.stdout.index("Events:") :]
    assert lease is not None and lease.spec.lease_transitions >= 1
    assert standby.process.returncode == 0  # stopped cleanly by SIGTERM
    status = migration["status"]
    assert status["progress"] == 100 and status["checksum"].startswith("sha256:")
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    for kind in ("Validated", "Snapshotted", "Exported", "Imported", "Created", "Ready"):
        assert conditions[kind] == "True", (kind, status["conditions"])
    reasons = {e.reason for e in events}
    assert {"MigrationCompleted", "VMCreated"} <= reasons, reasons
    assert all(e.involved_object.uid == migration["metadata"]["uid"] for e in events)
    assert all(e.source.component == "virtrigaud-manager" and e.count >= 1 for e in events)
    assert 'virtrigaud_migrations{phase="Ready"} 1.0' in metrics
    assert "virtrigaud_leader 1.0" in metrics
    # The standby itself drove the migration after the take-over.
    assert 'virtrigaud_reconcile_total{controller="vmmigration-controller"' in metrics
    assert 'virtrigaud_provider_rpc_duration_seconds_count{code="OK"' in metrics
    assert list(seaweed.client().list_objects_v2(Bucket=bucket).get("Contents", [])) == []

    conn = env.connect()
    try:
        dom = conn.lookupByUUIDString(target["status"]["id"])
        moved = [d for d in domxml.parse_domain(dom.XMLDesc(0)).disks if d.device == "disk"]
        assert len(moved) == 2
        for (src_path, src_fmt), disk in zip(source.disks, moved, strict=True):
            assert disk.path and disk.path.startswith(str(env.pool2_path))
            assert qemu_img.compare(
                src_path, disk.path, a_format=src_fmt, b_format=disk.format, force_share=True
            )
            want = digest.content_digest(src_path, src_fmt, force_share=True)
            assert digest.content_digest(disk.path, disk.format, force_share=True) == want
        src_dom = conn.lookupByUUIDString(source.uuid)
        assert src_dom.snapshotNum(0) == 0 and src_dom.isActive()
    finally:
        conn.close()
