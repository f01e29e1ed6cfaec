"""The Kubernetes API emulator's own semantics, exercised through the official client
over real HTTP (so the adapter's tests stand on a server that behaves as documented)."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from tests.kubeapi.fixtures import api_client, running
from tests.kubeapi.server import KubeAPIServer

G, V = "infra.virtrigaud.io", "v1beta1"


@pytest.fixture
def server() -> Iterator[KubeAPIServer]:
    with running(token="s3cret", history=50) as started:
        yield started


@pytest.fixture
def api(server: KubeAPIServer) -> client.ApiClient:
    return api_client(server)


def _provider(name: str = "lv", **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{G}/{V}",
        "kind": "Provider",
        "metadata": {"name": name, **meta},
        "spec": {"type": "libvirt", "endpoint": "qemu:///system"},
        "status": {"ready": True},
    }


def _status(exc: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(exc.body)
    return body


def test_create_answers_201_with_server_fields_and_no_status(api: client.ApiClient) -> None:
    raw = client.CustomObjectsApi(api).create_namespaced_custom_object(
        G, V, "default", "providers", _provider(), _preload_content=False
    )
    assert raw.status == 201
    created = json.loads(raw.data)
    meta = created["metadata"]
    assert len(meta["uid"]) == 36 and meta["resourceVersion"] and meta["generation"] == 1
    assert meta["creationTimestamp"].endswith("Z") and meta["namespace"] == "default"
    assert "status" not in created
    with pytest.raises(ApiException) as caught:
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            G, V, "default", "providers", _provider()
        )
    assert caught.value.status == 409 and _status(caught.value)["reason"] == "AlreadyExists"


def test_create_in_a_missing_namespace_is_404(api: client.ApiClient) -> None:
    with pytest.raises(ApiException) as caught:
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            G, V, "nowhere", "providers", _provider()
        )
    assert caught.value.status == 404 and "nowhere" in _status(caught.value)["message"]


def test_wrong_token_is_401(server: KubeAPIServer) -> None:
    configuration = client.Configuration(host=server.url, api_key={"authorization": "x"})
    configuration.api_key_prefix["authorization"] = "Bearer"
    with pytest.raises(ApiException) as caught:
        client.CoreV1Api(client.ApiClient(configuration)).list_namespaced_secret("default")
    assert caught.value.status == 401


def test_stale_resource_version_is_409_and_empty_one_is_unconditional(
    api: client.ApiClient,
) -> None:
    custom = client.CustomObjectsApi(api)
    created = custom.create_namespaced_custom_object(G, V, "default", "providers", _provider())
    first = dict(created, spec={**created["spec"], "endpoint": "qemu+ssh://a/system"})
    updated = custom.replace_namespaced_custom_object(G, V, "default", "providers", "lv", first)
    assert updated["metadata"]["generation"] == 2
    assert updated["metadata"]["resourceVersion"] != created["metadata"]["resourceVersion"]
    with pytest.raises(ApiException) as caught:
        custom.replace_namespaced_custom_object(G, V, "default", "providers", "lv", first)
    assert caught.value.status == 409 and _status(caught.value)["reason"] == "Conflict"
    blind = json.loads(json.dumps(first))
    blind["metadata"]["resourceVersion"] = ""
    blind["spec"]["endpoint"] = "qemu+ssh://b/system"
    written = custom.replace_namespaced_custom_object(G, V, "default", "providers", "lv", blind)
    assert written["spec"]["endpoint"] == "qemu+ssh://b/system"
    forged = dict(written, metadata={**written["metadata"], "uid": "forged"})
    with pytest.raises(ApiException) as caught:
        custom.replace_namespaced_custom_object(G, V, "default", "providers", "lv", forged)
    assert caught.value.status == 409 and "UID" in _status(caught.value)["message"]


def test_status_subresource_splits_spec_and_status(api: client.ApiClient) -> None:
    custom = client.CustomObjectsApi(api)
    created = custom.create_namespaced_custom_object(G, V, "default", "providers", _provider())
    attempt = json.loads(json.dumps(created))
    attempt["status"] = {"ready": True, "endpoint": "127.0.0.1:1"}
    attempt["spec"]["endpoint"] = "ignored by /status"
    with_status = custom.replace_namespaced_custom_object_status(
        G, V, "default", "providers", "lv", attempt
    )
    assert with_status["status"] == {"ready": True, "endpoint": "127.0.0.1:1"}
    assert with_status["spec"]["endpoint"] == "qemu:///system"
    assert with_status["metadata"]["generation"] == 1
    main = json.loads(json.dumps(with_status))
    main["status"] = {"ready": False}
    main["metadata"]["labels"] = {"a": "b"}
    after = custom.replace_namespaced_custom_object(G, V, "default", "providers", "lv", main)
    assert after["status"] == {"ready": True, "endpoint": "127.0.0.1:1"}  # main ignores status
    assert after["metadata"]["labels"] == {"a": "b"} and after["metadata"]["generation"] == 1
    same = custom.replace_namespaced_custom_object(G, V, "default", "providers", "lv", after)
    assert same["metadata"]["resourceVersion"] == after["metadata"]["resourceVersion"]


def test_merge_patch_with_resource_version_precondition(api: client.ApiClient) -> None:
    custom = client.CustomObjectsApi(api)
    created = custom.create_namespaced_custom_object(G, V, "default", "providers", _provider())
    patched = custom.patch_namespaced_custom_object(
        G, V, "default", "providers", "lv", {"metadata": {"labels": {"x": "y"}}}
    )
    assert patched["metadata"]["labels"] == {"x": "y"}
    stale = {"metadata": {"resourceVersion": created["metadata"]["resourceVersion"]}}
    with pytest.raises(ApiException) as caught:
        custom.patch_namespaced_custom_object(G, V, "default", "providers", "lv", stale)
    assert caught.value.status == 409


def test_finalizers_hold_deletion_until_the_last_is_removed(api: client.ApiClient) -> None:
    custom = client.CustomObjectsApi(api)
    created = custom.create_namespaced_custom_object(
        G, V, "default", "providers", _provider(finalizers=["virtrigaud.io/x"])
    )
    marked = custom.delete_namespaced_custom_object(G, V, "default", "providers", "lv")
    assert marked["metadata"]["deletionTimestamp"]
    assert marked["metadata"]["generation"] == created["metadata"]["generation"] + 1
    adding = json.loads(json.dumps(marked))
    adding["metadata"]["finalizers"].append("virtrigaud.io/late")
    with pytest.raises(ApiException) as caught:
        custom.replace_namespaced_custom_object(G, V, "default", "providers", "lv", adding)
    assert caught.value.status == 422
    marked["metadata"]["finalizers"] = []
    custom.replace_namespaced_custom_object(G, V, "default", "providers", "lv", marked)
    with pytest.raises(ApiException) as caught:
        custom.get_namespaced_custom_object(G, V, "default", "providers", "lv")
    assert caught.value.status == 404


def test_label_and_field_selectors(api: client.ApiClient) -> None:
    custom = client.CustomObjectsApi(api)
    client.CoreV1Api(api).create_namespace({"metadata": {"name": "prod"}})
    for name, ns, labels in [
        ("a", "default", {"env": "prod", "tier": "db"}),
        ("b", "default", {"env": "dev"}),
        ("c", "prod", {"env": "prod"}),
        ("d", "prod", {}),
    ]:
        custom.create_namespaced_custom_object(
            G, V, ns, "providers", _provider(name, labels=labels)
        )

    def names(**kwargs: Any) -> list[str]:
        found = custom.list_cluster_custom_object(G, V, "providers", **kwargs)
        return [o["metadata"]["name"] for o in found["items"]]

    assert names() == ["a", "b", "c", "d"]
    assert names(label_selector="env=prod") == ["a", "c"]
    assert names(label_selector="env==prod,tier") == ["a"]
    assert names(label_selector="env!=prod") == ["b", "d"]
    assert names(label_selector="!env") == ["d"]
    assert names(label_selector="env in (dev, prod),!tier") == ["b", "c"]
    assert names(label_selector="env notin (prod)") == ["b", "d"]
    assert names(field_selector="metadata.namespace=prod") == ["c", "d"]
    assert names(field_selector="metadata.name!=a,metadata.namespace=default") == ["b"]
    in_prod = custom.list_namespaced_custom_object(G, V, "prod", "providers")
    assert [o["metadata"]["name"] for o in in_prod["items"]] == ["c", "d"]
    assert int(in_prod["metadata"]["resourceVersion"]) > 0
    with pytest.raises(ApiException) as caught:
        names(label_selector="env in (a")
    assert caught.value.status == 400


def test_secret_string_data_is_folded_into_data(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_secret(
        "default",
        {
            "metadata": {"name": "creds"},
            "data": {"user": base64.b64encode(b"root").decode()},
            "stringData": {"password": "hunter2"},
        },
    )
    stored = core.read_namespaced_secret("creds", "default")
    assert stored.string_data is None
    assert base64.b64decode(stored.data["password"]) == b"hunter2"
    assert base64.b64decode(stored.data["user"]) == b"root"
    with pytest.raises(ApiException) as caught:
        core.create_namespaced_secret(
            "default", {"metadata": {"name": "bad"}, "data": {"k": "%%%"}}
        )
    assert caught.value.status == 400


def test_events_and_leases_are_plain_objects(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_event(
        "default",
        {
            "metadata": {"name": "lv.1"},
            "involvedObject": {"kind": "Provider", "name": "lv", "uid": "u1"},
            "reason": "ProviderReady",
            "message": "ok",
            "type": "Normal",
            "count": 1,
        },
    )
    found = core.list_namespaced_event(
        "default", field_selector="involvedObject.kind=Provider,involvedObject.name=lv"
    )
    assert [e.reason for e in found.items] == ["ProviderReady"]
    coordination = client.CoordinationV1Api(api)
    lease = coordination.create_namespaced_lease(
        "default", {"metadata": {"name": "lock"}, "spec": {"holderIdentity": "a"}}
    )
    lease.spec.holder_identity = "b"
    assert coordination.replace_namespaced_lease("lock", "default", lease).spec.holder_identity
    with pytest.raises(ApiException) as caught:
        coordination.replace_namespaced_lease("lock", "default", lease)  # stale now
    assert caught.value.status == 409


def test_watch_streams_from_a_resource_version_and_ends_after_timeout(
    api: client.ApiClient, server: KubeAPIServer
) -> None:
    custom = client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(G, V, "default", "providers", _provider("before"))
    listed = custom.list_cluster_custom_object(G, V, "providers")
    since = listed["metadata"]["resourceVersion"]
    created = custom.create_namespaced_custom_object(G, V, "default", "providers", _provider())
    custom.replace_namespaced_custom_object_status(
        G, V, "default", "providers", "lv", {**created, "status": {"ready": True}}
    )
    custom.delete_namespaced_custom_object(G, V, "default", "providers", "lv")
    stream = watch.Watch().stream(
        custom.list_cluster_custom_object,
        G,
        V,
        "providers",
        resource_version=since,
        timeout_seconds=1,
    )
    got = [(e["type"], e["object"]["metadata"]["name"]) for e in stream]  # ends by itself
    assert got == [("ADDED", "lv"), ("MODIFIED", "lv"), ("DELETED", "lv")]
    from_scratch = watch.Watch().stream(
        custom.list_cluster_custom_object, G, V, "providers", timeout_seconds=1
    )
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in from_scratch] == [
        ("ADDED", "before")
    ]


def test_watch_delivers_changes_as_they_happen(api: client.ApiClient) -> None:
    custom = client.CustomObjectsApi(api)
    since = custom.list_cluster_custom_object(G, V, "providers")["metadata"]["resourceVersion"]
    got: list[str] = []
    ready = threading.Event()

    def follow() -> None:
        w = watch.Watch()
        ready.set()
        for event in w.stream(
            custom.list_cluster_custom_object,
            G,
            V,
            "providers",
            resource_version=since,
            timeout_seconds=30,
        ):
            got.append(event["object"]["metadata"]["name"])
            if len(got) == 3:
                w.stop()

    thread = threading.Thread(target=follow)
    thread.start()
    ready.wait(10)
    for name in ("x", "y", "z"):
        custom.create_namespaced_custom_object(G, V, "default", "providers", _provider(name))
    thread.join(30)
    assert got == ["x", "y", "z"]


def test_watch_from_a_compacted_version_gets_410_gone(
    api: client.ApiClient, server: KubeAPIServer
) -> None:
    custom = client.CustomObjectsApi(api)
    old = custom.list_cluster_custom_object(G, V, "providers")["metadata"]["resourceVersion"]
    custom.create_namespaced_custom_object(G, V, "default", "providers", _provider())
    server.state.compact()
    raw = custom.list_cluster_custom_object(
        G,
        V,
        "providers",
        watch=True,
        resource_version=old,
        timeout_seconds=1,
        _preload_content=False,
    )
    events = [json.loads(line) for line in raw.data.splitlines() if line.strip()]
    assert len(events) == 1 and events[0]["type"] == "ERROR"
    assert events[0]["object"]["code"] == 410 and events[0]["object"]["reason"] == "Expired"
    with pytest.raises(ApiException) as caught:  # the client's own watch raises it too
        list(
            watch.Watch().stream(
                custom.list_cluster_custom_object,
                G,
                V,
                "providers",
                resource_version=old,
                timeout_seconds=1,
            )
        )
    assert caught.value.status == 410


def test_history_overflow_expires_old_versions(api: client.ApiClient) -> None:
    custom = client.CustomObjectsApi(api)
    old = custom.list_cluster_custom_object(G, V, "providers")["metadata"]["resourceVersion"]
    for index in range(60):  # the fixture keeps 50 changes
        custom.create_namespaced_custom_object(G, V, "default", "providers", _provider(f"p{index}"))
    raw = custom.list_cluster_custom_object(
        G,
        V,
        "providers",
        watch=True,
        resource_version=old,
        timeout_seconds=1,
        _preload_content=False,
    )
    assert json.loads(raw.data.splitlines()[0])["object"]["code"] == 410


def test_discovery_lists_groups_and_resources(api: client.ApiClient) -> None:
    groups = client.ApisApi(api).get_api_versions()
    names = {g.name: g.preferred_version.group_version for g in groups.groups}
    assert names[G] == f"{G}/{V}" and names["coordination.k8s.io"] == "coordination.k8s.io/v1"
    assert client.CoreApi(api).get_api_versions().versions == ["v1"]
    ours = client.CustomObjectsApi(api).get_api_resources(G, V)
    by_name = {r.name: r for r in ours.resources}
    assert by_name["vmmigrations"].kind == "VMMigration" and by_name["vmmigrations"].namespaced
    assert "watch" in by_name["providers"].verbs and "providers/status" in by_name
    core = {r.name for r in client.CoreV1Api(api).get_api_resources().resources}
    assert {"secrets", "events", "namespaces"} <= core


def test_custom_resources_are_pruned_defaulted_and_validated_by_their_crd(
    api: client.ApiClient, server: KubeAPIServer
) -> None:
    custom = client.CustomObjectsApi(api)
    manifest = _provider()
    manifest["spec"]["unknownField"] = "dropped"
    created = custom.create_namespaced_custom_object(G, V, "default", "providers", manifest)
    assert "unknownField" not in created["spec"]
    assert server.state.crds.pruned == ["Provider/default/lv: spec.unknownField"]
    migration = {
        "apiVersion": f"{G}/{V}",
        "kind": "VMMigration",
        "metadata": {"name": "m"},
        "spec": {
            "sourceName": "vm",
            "sourceNamespace": "default",
            "targetName": "vm-moved",
            "targetProviderRef": {"name": "lv"},
            "storage": {"type": "nfs", "path": "/srv"},
        },
    }
    stored = custom.create_namespaced_custom_object(G, V, "default", "vmmigrations", migration)
    assert stored["spec"]["retryPolicy"]["maxAttempts"] == 3  # the CRD's default
    again = custom.replace_namespaced_custom_object(G, V, "default", "vmmigrations", "m", stored)
    assert again["metadata"]["generation"] == 1  # defaults are no spec change
    bad = json.loads(json.dumps(created))
    bad["spec"]["type"] = "hyperv"
    with pytest.raises(ApiException) as caught:
        custom.replace_namespaced_custom_object(G, V, "default", "providers", "lv", bad)
    status = _status(caught.value)
    assert caught.value.status == 422 and status["reason"] == "Invalid"
    assert status["details"]["causes"][0]["field"] == "spec.type"
    bad_status = {**created, "status": {"capabilities": {"diskFormats": ["floppy"]}}}
    with pytest.raises(ApiException) as caught:
        custom.replace_namespaced_custom_object_status(
            G, V, "default", "providers", "lv", bad_status
        )
    assert caught.value.status == 422
