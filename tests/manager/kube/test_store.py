"""KubeStore beyond the shared ObjectStore tests (tests/manager/store/test_sqlite.py runs
those against it too): watch resume across 410 Gone and server-side timeouts, Events as
``kubectl describe`` shows them, credentials, unreachable servers, configuration, a
namespaced store, and the controller runtime on top of it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from manager.kube import config as kubeconfig
from manager.kube.store import KubeStore
from manager.runtime.controller import Controller
from manager.runtime.types import Result
from manager.store.base import ObjectKey, WatchEvent
from tests.kubeapi.fixtures import api_client, kube_store, running, write_kubeconfig
from tests.kubeapi.server import RESOURCES, KubeAPIServer
from tests.manager.store import factory
from tests.servers.net import free_port
from tests.support.certs import CertAuthority
from virtrigaud import errors


@pytest.fixture
def env() -> Iterator[tuple[KubeStore, KubeAPIServer]]:
    with kube_store() as pair:
        yield pair


def _take(events: Iterator[WatchEvent], count: int, into: list[WatchEvent]) -> None:
    for event in events:
        into.append(event)
        if len(into) == count:
            return


def _collector(
    events: Iterator[WatchEvent], count: int
) -> tuple[threading.Thread, list[WatchEvent]]:
    got: list[WatchEvent] = []
    thread = threading.Thread(target=_take, args=(events, count, got), daemon=True)
    thread.start()
    return thread, got


def test_watch_relists_after_410_gone_and_reports_what_it_missed(
    env: tuple[KubeStore, KubeAPIServer],
) -> None:
    store, server = env
    store.create(factory.provider("stays"))
    doomed = store.create(factory.provider("doomed"))
    stop = threading.Event()
    stream = store.watch(("Provider",), stop)
    thread, got = _collector(stream, 4)
    changed = store.create(factory.provider("first"))  # delivered by the live watch
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [(e.type, e.key.name) for e in got] == [("ADDED", "first")]
    state = server.state
    with state.cond:  # changes the watch cannot see one by one, then compaction
        providers = next(r for r in RESOURCES if r.kind == "Provider")
        state.create(providers, "default", factory.provider("late"))
        state.delete(providers, "default", "doomed", {})
        status = state.get(providers, "default", "first")
        status["status"] = {"ready": True}
        state.replace(providers, "default", "first", status, "status")
        state.compact()
    thread.join(20)
    stop.set()
    assert sorted((e.type, e.key.name) for e in got[1:]) == [
        ("ADDED", "late"),
        ("DELETED", "doomed"),
        ("MODIFIED", "first"),
    ]
    deleted = next(e for e in got if e.type == "DELETED")
    assert deleted.object["metadata"]["uid"] == doomed["metadata"]["uid"]
    modified = next(e for e in got if e.type == "MODIFIED")
    assert modified.object["status"] == {"ready": True}
    assert modified.object["metadata"]["uid"] == changed["metadata"]["uid"]


def test_watch_resumes_after_each_server_timeout_without_losing_changes() -> None:
    with kube_store() as (first, server):
        store = KubeStore(api_client(server), watch_seconds=1)
        stop = threading.Event()
        stream = store.watch(("VirtualMachine", "Provider"), stop)
        thread, got = _collector(stream, 6)
        for index in range(3):
            first.create(factory.vm(f"vm{index}"))
            first.create(factory.provider(f"p{index}"))
            time.sleep(1.2)  # each pair lands in a later watch window
        thread.join(20)
        stop.set()
        store.close()
        served = server.watches_served
    assert sorted(e.key.name for e in got) == ["p0", "p1", "p2", "vm0", "vm1", "vm2"]
    assert {e.key.kind for e in got} == {"VirtualMachine", "Provider"}
    assert served >= 4  # two kinds, resumed at least once each


def test_stopping_a_watch_ends_its_iterator_and_http_streams(
    env: tuple[KubeStore, KubeAPIServer],
) -> None:
    store, _server = env
    stop = threading.Event()
    stream = store.watch(("Provider", "VMMigration"), stop)
    done = threading.Event()

    def consume() -> None:
        for _ in stream:
            pass
        done.set()

    threading.Thread(target=consume, daemon=True).start()
    time.sleep(0.3)
    stop.set()
    assert done.wait(10)
    watch = store.watches[-1]
    for thread in watch._threads:
        thread.join(10)
        assert not thread.is_alive()


def test_events_look_like_kubectl_describe_and_count_across_managers(
    env: tuple[KubeStore, KubeAPIServer],
) -> None:
    store, server = env
    obj = store.create(factory.migration())
    store.emit_event(obj, "Normal", "ExportStarted", "Disk export started")
    store.emit_event(obj, "Normal", "ExportStarted", "Disk export started")
    other = KubeStore(api_client(server), instance="replica-2")  # a new leader, empty cache
    other.emit_event(obj, "Normal", "ExportStarted", "Disk export started")
    other.emit_event(obj, "Warning", "RetryScheduled", "retry in 5s")
    raw = client.CoreV1Api(api_client(server)).list_namespaced_event("default")
    assert len(raw.items) == 2
    first = next(e for e in raw.items if e.reason == "ExportStarted")
    assert first.count == 3 and first.type == "Normal"
    assert first.involved_object.kind == "VMMigration"
    assert first.involved_object.name == "m1" and first.involved_object.namespace == "default"
    assert first.involved_object.uid == obj["metadata"]["uid"]
    assert first.involved_object.api_version == "infra.virtrigaud.io/v1beta1"
    assert first.source.component == "virtrigaud-manager"
    assert first.first_timestamp <= first.last_timestamp
    assert first.metadata.name.startswith("m1.")
    seen = other.events_for("VMMigration", "default", "m1")
    assert [(e.reason, e.count) for e in seen] == [("ExportStarted", 3), ("RetryScheduled", 1)]
    other.close()


def test_wrong_token_is_an_authentication_error_without_the_token(tmp_path: Path) -> None:
    with running(token="right-token") as server:
        configuration = client.Configuration(host=server.url, api_key={"authorization": "wrong"})
        configuration.api_key_prefix["authorization"] = "Bearer"
        store = KubeStore(client.ApiClient(configuration))
        with pytest.raises(errors.AuthenticationError) as caught:
            store.list("Provider")
        assert "wrong" not in str(caught.value) and "right-token" not in str(caught.value)
        with pytest.raises(errors.AuthenticationError):
            store.watch(("Provider",), threading.Event())


def test_unreachable_api_is_transient() -> None:
    configuration = client.Configuration(host=f"http://127.0.0.1:{free_port()}")
    configuration.retries = 0
    store = KubeStore(client.ApiClient(configuration), timeout=5)
    with pytest.raises(errors.Unavailable) as caught:
        store.get("Provider", "default", "lv")
    assert caught.value.retryable
    assert "Provider default/lv" in str(caught.value)


def test_connect_reads_kubeconfig_and_its_namespace(tmp_path: Path) -> None:
    with running(token="t0k") as server:
        path = write_kubeconfig(server, tmp_path / "config", namespace="prod")
        cluster = kubeconfig.connect(str(path))
        assert cluster.namespace == "prod" and cluster.source == str(path)
        names = client.CoreV1Api(cluster.api).list_namespace().items
        assert "default" in [n.metadata.name for n in names]
    with pytest.raises(errors.NotFound, match="does not exist"):
        kubeconfig.connect(str(tmp_path / "missing"))
    (tmp_path / "broken").write_text("clusters: [")
    with pytest.raises(errors.InvalidArgument, match="kubeconfig"):
        kubeconfig.connect(str(tmp_path / "broken"))


def test_connect_in_cluster_uses_the_service_account_over_tls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubernetes.config import incluster_config

    authority = CertAuthority(tmp_path)
    pair = authority.issue("kubernetes", server=True)
    (tmp_path / "token").write_text("sa-token")
    (tmp_path / "namespace").write_text("virtrigaud-system\n")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(tmp_path / "token"))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(authority.path))
    monkeypatch.setattr(kubeconfig, "SERVICE_ACCOUNT_NAMESPACE", tmp_path / "namespace")
    monkeypatch.delenv("KUBECONFIG", raising=False)
    with running(token="sa-token", tls=(pair.cert, pair.key)) as server:
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(server.server_address[1]))
        cluster = kubeconfig.connect()
        assert cluster.source == "in-cluster" and cluster.namespace == "virtrigaud-system"
        assert cluster.api.configuration.host == server.url
        store = KubeStore(cluster.api)
        store.create(factory.provider())  # a real request: TLS verified, token accepted
        assert [o["metadata"]["name"] for o in store.list("Provider")] == ["lv"]
        store.close()
        (tmp_path / "other").mkdir()
        other = CertAuthority(tmp_path / "other")
        monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(other.path))
        untrusted = KubeStore(kubeconfig.connect().api, timeout=5)
        untrusted.api.configuration.retries = 0
        with pytest.raises(errors.Unavailable, match="unreachable"):
            untrusted.list("Provider")  # a server our CA did not sign is refused
        untrusted.close()
    (tmp_path / "token").unlink()
    with pytest.raises(errors.FailedPrecondition, match="in-cluster"):
        kubeconfig.connect()


def test_a_namespaced_store_sees_and_writes_only_its_namespace(
    env: tuple[KubeStore, KubeAPIServer],
) -> None:
    store, server = env
    store.create(factory.provider("a", "prod"))
    store.create(factory.provider("b", "default"))
    scoped = KubeStore(api_client(server), namespaces=["prod"])
    assert [o["metadata"]["name"] for o in scoped.list("Provider")] == ["a"]
    with pytest.raises(errors.PermissionDenied, match="only watches namespaces prod"):
        scoped.create(factory.provider("c", "default"))
    scoped.close()


class _Recorder:
    kind = "Provider"

    def __init__(self, store: KubeStore) -> None:
        self.store = store
        self.seen: list[ObjectKey] = []

    def reconcile(self, key: ObjectKey) -> Result:
        obj = self.store.get(key.kind, key.namespace, key.name)
        status = {"ready": True, "message": f"seen {len(self.seen)}"}
        self.store.update_status({**obj, "status": status})
        self.seen.append(key)
        return Result()


def test_the_controller_runtime_reconciles_over_the_api(
    env: tuple[KubeStore, KubeAPIServer],
) -> None:
    store, _server = env
    store.create(factory.provider("before"))
    recorder = _Recorder(store)
    controller = Controller(recorder, store, workers=2, resync_period=3600)
    controller.start()
    try:
        store.create(factory.provider("after", "prod"))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            done = [
                store.get("Provider", ns, n).get("status")
                for ns, n in (("default", "before"), ("prod", "after"))
            ]
            if all(done):
                break
            time.sleep(0.1)
        assert store.get("Provider", "prod", "after")["status"]["ready"] is True
        assert store.get("Provider", "default", "before")["status"]["ready"] is True
    finally:
        started = time.monotonic()
        controller.stop(timeout=15)
    assert time.monotonic() - started < 15
    assert not any(t.is_alive() for t in controller._threads)


def test_a_store_of_two_namespaces_watches_both_and_nothing_else(
    env: tuple[KubeStore, KubeAPIServer],
) -> None:
    store, server = env
    scoped = KubeStore(api_client(server), namespaces=["prod", "other"], watch_seconds=5)
    stop = threading.Event()
    thread, got = _collector(scoped.watch(("Provider",), stop), 2)
    store.create(factory.provider("in-default", "default"))
    store.create(factory.provider("in-prod", "prod"))
    store.create(factory.provider("in-other", "other"))
    thread.join(20)
    stop.set()
    assert sorted(e.key.name for e in got) == ["in-other", "in-prod"]
    assert [o["metadata"]["name"] for o in scoped.list("Provider")] == ["in-other", "in-prod"]
    scoped.close()
