"""``virtrigaud manager`` against the emulator: probes, metrics, leader election, the
Provider -> Deployment step, and the controllers acting through the API."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from manager.kube.app import ManagerApp, ManagerOptions
from manager.kube.config import connect
from manager.kube.deployer import HASH_ANNOTATION, ProviderDeploymentReconciler
from manager.kube.store import KubeStore
from manager.observability import Metrics
from manager.runtime.manager import Manager
from manager.runtime.types import Result
from manager.store.base import ObjectKey
from tests.kubeapi.fixtures import api_client, kube_store, running, write_kubeconfig
from tests.kubeapi.server import KubeAPIServer
from tests.manager.store import factory
from tests.servers.net import free_port
from virtrigaud import errors

REPO = Path(__file__).resolve().parents[3]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


def _until(check, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _lease_holder(server: KubeAPIServer, name: str = "virtrigaud-manager") -> str:
    try:
        lease = client.CoordinationV1Api(api_client(server)).read_namespaced_lease(name, "default")
    except client.ApiException:
        return ""
    return str(lease.spec.holder_identity or "")


# -- Provider -> Deployment + Service ----------------------------------------------------


@pytest.fixture
def env() -> Iterator[tuple[KubeStore, KubeAPIServer]]:
    with kube_store() as pair:
        yield pair


def test_a_provider_with_runtime_gets_a_deployment_service_and_endpoint(
    env: tuple[KubeStore, KubeAPIServer],
) -> None:
    store, server = env
    manifest = factory.provider(runtime={"image": "virtrigaud/provider:test", "port": 9443})
    store.create(manifest)
    deployer = ProviderDeploymentReconciler(store, store.rest)
    key = ObjectKey("Provider", "default", "lv")
    deployer.reconcile(key)
    apps, core = client.AppsV1Api(api_client(server)), client.CoreV1Api(api_client(server))
    deployment = apps.read_namespaced_deployment("provider-lv", "default")
    assert deployment.spec.template.spec.containers[0].image == "virtrigaud/provider:test"
    assert deployment.metadata.owner_references[0].kind == "Provider"
    service = core.read_namespaced_service("provider-lv", "default")
    assert service.spec.ports[0].port == 9443
    provider = store.get("Provider", "default", "lv")
    assert provider["status"]["endpoint"] == "provider-lv.default.svc:9443"
    deployed = next(c for c in provider["status"]["conditions"] if c["type"] == "Deployed")
    assert deployed["status"] == "True"
    # The cluster allocates a clusterIP; a second pass with nothing new writes nothing.
    service.spec.cluster_ip = "10.96.0.10"
    core.replace_namespaced_service("provider-lv", "default", service)
    before = apps.read_namespaced_deployment("provider-lv", "default").metadata
    deployer.reconcile(key)
    after = apps.read_namespaced_deployment("provider-lv", "default").metadata
    assert after.resource_version == before.resource_version
    # A spec change is applied; the Service keeps its clusterIP.
    changed = store.get("Provider", "default", "lv")
    changed["spec"]["endpoint"] = "qemu+ssh://other/system"
    changed["spec"]["runtime"]["port"] = 9555
    store.update(changed)
    deployer.reconcile(key)
    args = apps.read_namespaced_deployment("provider-lv", "default").spec.template.spec
    assert "qemu+ssh://other/system" in args.containers[0].args
    service = core.read_namespaced_service("provider-lv", "default")
    assert service.spec.cluster_ip == "10.96.0.10" and service.spec.ports[0].port == 9555
    assert service.metadata.annotations[HASH_ANNOTATION]
    assert store.get("Provider", "default", "lv")["status"]["endpoint"].endswith(":9555")


def test_a_provider_that_cannot_run_here_says_why(env: tuple[KubeStore, KubeAPIServer]) -> None:
    store, server = env
    store.create(factory.provider(runtime={"image": "virtrigaud/provider:test", "replicas": 2}))
    ProviderDeploymentReconciler(store, store.rest).reconcile(
        ObjectKey("Provider", "default", "lv")
    )
    status = store.get("Provider", "default", "lv")["status"]
    deployed = next(c for c in status["conditions"] if c["type"] == "Deployed")
    assert deployed["status"] == "False" and deployed["reason"] == "InvalidRuntime"
    assert "replicas" in deployed["message"] and "endpoint" not in status
    events = store.events_for("Provider", "default", "lv")
    assert [(e.type, e.reason) for e in events] == [("Warning", "InvalidRuntime")]
    assert client.AppsV1Api(api_client(server)).list_namespaced_deployment("default").items == []


def test_a_provider_without_runtime_is_left_to_its_operator(
    env: tuple[KubeStore, KubeAPIServer],
) -> None:
    store, _server = env
    created = store.create(factory.provider())
    ProviderDeploymentReconciler(store, store.rest).reconcile(
        ObjectKey("Provider", "default", "lv")
    )
    assert store.get("Provider", "default", "lv") == created


# -- metrics ---------------------------------------------------------------------------


class _Flaky:
    kind = "Provider"

    def __init__(self) -> None:
        self.calls = 0

    def reconcile(self, key: ObjectKey) -> Result:
        self.calls += 1
        if self.calls == 1:
            raise errors.Conflict("stale")
        return Result(requeue_after=60)


def test_metrics_count_reconcile_errors_and_rpc_latency(
    env: tuple[KubeStore, KubeAPIServer],
) -> None:
    store, _server = env
    created = store.create(factory.migration())
    store.update_status({**created, "status": {"phase": "Exporting", "bytesTransferred": 4096}})
    metrics = Metrics(store)
    manager = Manager(store)
    manager.add(_Flaky(), name="flaky")
    metrics.instrument(manager)
    reconciler = manager.controllers[0].reconciler
    with pytest.raises(errors.Conflict):
        reconciler.reconcile(ObjectKey("Provider", "default", "x"))
    reconciler.reconcile(ObjectKey("Provider", "default", "x"))
    with pytest.raises(errors.Unavailable):
        metrics.observe_rpc("ExportDisk", lambda: (_ for _ in ()).throw(errors.Unavailable("x")))
    assert metrics.observe_rpc("GetTask", lambda: 7) == 7
    text = metrics.render().decode()
    assert 'virtrigaud_reconcile_errors_total{controller="flaky",error="Conflict"} 1.0' in text
    assert 'virtrigaud_reconcile_total{controller="flaky",result="requeue"} 1.0' in text
    assert 'virtrigaud_migrations{phase="Exporting"} 1.0' in text
    assert 'virtrigaud_migrations{phase="Ready"} 0.0' in text
    assert 'virtrigaud_migration_bytes_transferred{name="m1",namespace="default"} 4096.0' in text
    assert (
        'virtrigaud_provider_rpc_duration_seconds_count{code="Unavailable",method="ExportDisk"}'
        in text
    )
    assert 'virtrigaud_provider_rpc_duration_seconds_count{code="OK",method="GetTask"} 1.0' in text


# -- the app in-process ------------------------------------------------------------------


def _options(identity: str, **extra: object) -> ManagerOptions:
    base: dict[str, object] = {
        "leader_elect": True,
        "identity": identity,
        "lease_duration": 2.0,
        "renew_deadline": 1.5,
        "retry_period": 0.2,
        "metrics_address": f"127.0.0.1:{free_port()}",
        "health_address": f"127.0.0.1:{free_port()}",
        "resync_period": 30.0,
        "watch_seconds": 5,
    }
    base.update(extra)
    return ManagerOptions(**base)  # type: ignore[arg-type]


def test_two_managers_one_leader_and_a_hand_over(tmp_path: Path) -> None:
    with running(token="t") as server:
        kubeconfig = str(write_kubeconfig(server, tmp_path / "config"))
        apps = {name: ManagerApp(_options(name), connect(kubeconfig)) for name in ("alpha", "beta")}
        stops = {name: threading.Event() for name in apps}
        codes: dict[str, int] = {}
        threads = {
            name: threading.Thread(
                target=lambda n=name: codes.setdefault(n, apps[n].run(stops[n])), daemon=True
            )
            for name in apps
        }
        for thread in threads.values():
            thread.start()
        leader = _until(lambda: _lease_holder(server), what="a leader")
        other = "beta" if leader == "alpha" else "alpha"
        _until(apps[leader].leading.is_set, what="the leader's controllers")
        assert not apps[other].leading.is_set()
        health = apps[other].options.health_address
        assert _get(f"http://{health}/readyz") == (200, "ok\n")  # a standby is ready too
        metrics = apps[leader].options.metrics_address
        assert "virtrigaud_leader 1.0" in _get(f"http://{metrics}/metrics")[1]
        stops[leader].set()
        threads[leader].join(30)
        assert codes[leader] == 0
        _until(lambda: _lease_holder(server) == other, what="the hand-over")
        _until(apps[other].leading.is_set, what="the new leader's controllers")
        stops[other].set()
        threads[other].join(30)
        assert codes[other] == 0


def test_readyz_fails_while_the_api_is_down(tmp_path: Path) -> None:
    server = KubeAPIServer(token="t").start()
    kubeconfig = str(write_kubeconfig(server, tmp_path / "config"))
    app = ManagerApp(_options("solo", leader_elect=False), connect(kubeconfig))
    stop = threading.Event()
    thread = threading.Thread(target=app.run, args=(stop,), daemon=True)
    thread.start()
    health = app.options.health_address
    try:
        _until(lambda: _get(f"http://{health}/readyz")[0] == 200, what="ready")
        server.stop()
        _code, body = _until(
            lambda: (r := _get(f"http://{health}/readyz"))[0] == 503 and r, what="not ready"
        )
        assert "unreachable" in body
        assert _get(f"http://{health}/healthz") == (200, "ok\n")
    finally:
        stop.set()
        thread.join(30)


# -- the CLI as a process ---------------------------------------------------------------


def test_virtrigaud_manager_process_leads_reconciles_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    with running(token="t") as server:
        kubeconfig = write_kubeconfig(server, tmp_path / "config")
        store = KubeStore(api_client(server))
        store.create(factory.provider())  # no endpoint: the Provider controller says so
        metrics, health = free_port(), free_port()
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
                "--identity",
                "proc-1",
                "--lease-duration",
                "3",
                "--renew-deadline",
                "2",
                "--retry-period",
                "0.5",
                "--metrics-bind-address",
                f"127.0.0.1:{metrics}",
                "--health-probe-bind-address",
                f"127.0.0.1:{health}",
                "--log-level",
                "warning",
            ],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _until(lambda: _get(f"http://127.0.0.1:{health}/readyz")[0] == 200, what="ready")
            _until(lambda: _lease_holder(server) == "proc-1", what="the lease")
            status = _until(
                lambda: store.get("Provider", "default", "lv").get("status"),
                what="the Provider's status",
            )
            assert status["ready"] is False
            ready = next(c for c in status["conditions"] if c["type"] == "Ready")
            assert ready["reason"] == "EndpointMissing"
            passes = 'virtrigaud_reconcile_total{controller="provider-controller"'
            text = _until(  # the pass that wrote the status returns after its event
                lambda: (
                    (r := _get(f"http://127.0.0.1:{metrics}/metrics"))[0] == 200
                    and passes in r[1]
                    and r[1]
                ),
                what="reconcile metrics",
            )
            assert "virtrigaud_leader 1.0" in text
            process.send_signal(signal.SIGTERM)
            assert process.wait(60) == 0, process.stderr.read() if process.stderr else ""
            assert _lease_holder(server) == ""  # released for a standby
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)
            store.close()


def test_virtrigaud_manager_refuses_a_missing_kubeconfig(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "virtrigaud.cli",
            "manager",
            "--kubeconfig",
            str(tmp_path / "nope"),
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "kubeconfig" in done.stderr and "does not exist" in done.stderr


def test_a_manager_that_loses_its_lease_stops_its_controllers_and_exits_1(
    tmp_path: Path,
) -> None:
    with running(token="t") as server:
        kubeconfig = str(write_kubeconfig(server, tmp_path / "config"))
        app = ManagerApp(_options("doomed"), connect(kubeconfig))
        stop = threading.Event()
        codes: list[int] = []
        thread = threading.Thread(target=lambda: codes.append(app.run(stop)), daemon=True)
        thread.start()
        _until(app.leading.is_set, what="leadership")
        coordination = client.CoordinationV1Api(api_client(server))
        lease = coordination.read_namespaced_lease("virtrigaud-manager", "default")
        lease.spec.holder_identity = "usurper"
        lease.spec.lease_duration_seconds = 3600
        coordination.replace_namespaced_lease("virtrigaud-manager", "default", lease)
        thread.join(60)
        assert codes == [1]
        assert not app.leading.is_set() and app.manager is None and app.lost.is_set()
        assert _lease_holder(server) == "usurper"
