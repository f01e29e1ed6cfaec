"""The ObjectStore semantics of manager/store/base.py, one by one, for both stores:
the embedded SQLiteStore and KubeStore over the Kubernetes API emulator (tests/kubeapi,
real HTTP through the official client). Tests that take ``tmp_path`` alone are about
the SQLite file itself."""

from __future__ import annotations

import copy
import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from manager.store.base import ObjectKey, WatchEvent
from manager.store.sqlite import SQLiteStore
from tests.kubeapi.fixtures import kube_store
from tests.manager.store import factory
from virtrigaud import errors


@pytest.fixture(params=["sqlite", "kube"])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "kube":
        with kube_store() as (opened, _server):
            yield opened
        return
    with SQLiteStore(tmp_path / "state.db") as opened:
        yield opened


def _rows(path: Path, table: str) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
    finally:
        conn.close()


# -- create / get / list ------------------------------------------------------------------


def test_create_sets_server_fields_and_drops_status(store: SQLiteStore) -> None:
    manifest = factory.provider()
    del manifest["metadata"]["namespace"]
    manifest["status"] = {"ready": True, "endpoint": "127.0.0.1:1"}
    created = store.create(manifest)
    meta = created["metadata"]
    assert meta["namespace"] == "default"
    assert len(meta["uid"]) == 36
    assert meta["generation"] == 1
    assert meta["resourceVersion"]
    assert meta["creationTimestamp"].endswith("Z")
    assert "status" not in created  # status is only written through update_status
    assert store.get("Provider", "default", "lv") == created


def test_create_applies_crd_defaults(store: SQLiteStore) -> None:
    created = store.create(factory.migration())
    assert created["spec"]["cleanupPolicy"] == {
        "deleteIntermediate": True,
        "deleteSnapshot": True,
        "deleteSource": False,
    }
    assert created["spec"]["retryPolicy"]["maxAttempts"] == 3


def test_create_twice_is_already_exists_but_another_namespace_is_fine(store: SQLiteStore) -> None:
    first = store.create(factory.provider())
    with pytest.raises(errors.AlreadyExists, match="Provider default/lv"):
        store.create(factory.provider())
    other = store.create(factory.provider(namespace="prod"))
    assert other["metadata"]["uid"] != first["metadata"]["uid"]
    assert int(other["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])


def test_create_refuses_a_resource_version(store: SQLiteStore) -> None:
    manifest = factory.provider()
    manifest["metadata"]["resourceVersion"] = "7"
    with pytest.raises(errors.ValidationError) as caught:
        store.create(manifest)
    assert caught.value.field == "metadata.resourceVersion"


def test_get_missing_names_the_object(store: SQLiteStore) -> None:
    with pytest.raises(errors.NotFound, match="VirtualMachine default/nope"):
        store.get("VirtualMachine", "default", "nope")


def test_list_filters_by_namespace_and_equality_labels(store: SQLiteStore) -> None:
    store.create(factory.provider("a", labels={"env": "prod", "team": "x"}))
    store.create(factory.provider("b", labels={"env": "dev"}))
    store.create(factory.provider("c", "other", labels={"env": "prod"}))
    store.create(factory.vm("a"))

    def names(found: list[dict[str, object]]) -> list[str]:
        return [o["metadata"]["name"] for o in found]  # type: ignore[index]

    assert names(store.list("Provider")) == ["a", "b", "c"]
    assert names(store.list("Provider", "default")) == ["a", "b"]
    assert names(store.list("Provider", labels={"env": "prod"})) == ["a", "c"]
    assert names(store.list("Provider", labels={"env": "prod", "team": "x"})) == ["a"]
    assert names(store.list("Provider", "default", labels={"env": "none"})) == []
    assert names(store.list("VirtualMachine")) == ["a"]


def test_unknown_kind_is_refused(store: SQLiteStore) -> None:
    with pytest.raises(errors.ValidationError, match="kind"):
        store.list("Pod")


# -- update / update_status ------------------------------------------------------------------


def test_update_bumps_generation_only_on_spec_change(store: SQLiteStore) -> None:
    created = store.create(factory.provider())
    relabelled = copy.deepcopy(created)
    relabelled["metadata"]["labels"] = {"a": "b"}
    after_labels = store.update(relabelled)
    assert after_labels["metadata"]["generation"] == 1
    assert after_labels["metadata"]["resourceVersion"] != created["metadata"]["resourceVersion"]
    respecced = copy.deepcopy(after_labels)
    respecced["spec"]["endpoint"] = "qemu+ssh://host/system"
    after_spec = store.update(respecced)
    assert after_spec["metadata"]["generation"] == 2
    assert store.get("Provider", "default", "lv")["spec"]["endpoint"] == "qemu+ssh://host/system"


def test_update_ignores_status_and_server_fields(store: SQLiteStore) -> None:
    created = store.create(factory.provider())
    with_status = store.update_status({**created, "status": {"ready": True}})
    attempt = copy.deepcopy(with_status)
    attempt["status"] = {"ready": False, "message": "overwritten?"}
    attempt["metadata"]["uid"] = "forged"
    attempt["metadata"]["generation"] = 99
    attempt["spec"]["endpoint"] = "qemu:///session"
    updated = store.update(attempt)
    assert updated["status"] == {"ready": True}
    assert updated["metadata"]["uid"] == created["metadata"]["uid"]
    assert updated["metadata"]["generation"] == 2


def test_update_status_writes_only_status(store: SQLiteStore) -> None:
    created = store.create(factory.provider())
    attempt = copy.deepcopy(created)
    attempt["spec"]["endpoint"] = "ignored"
    attempt["metadata"]["labels"] = {"ignored": "yes"}
    attempt["status"] = {"ready": True, "endpoint": "127.0.0.1:5000"}
    written = store.update_status(attempt)
    assert written["status"] == {"ready": True, "endpoint": "127.0.0.1:5000"}
    assert written["spec"]["endpoint"] == "qemu:///system"
    assert "labels" not in written["metadata"]
    assert written["metadata"]["generation"] == 1
    assert written["metadata"]["resourceVersion"] != created["metadata"]["resourceVersion"]


def test_stale_resource_version_is_a_conflict(store: SQLiteStore) -> None:
    created = store.create(factory.provider())
    store.update_status({**created, "status": {"ready": True}})
    with pytest.raises(errors.Conflict, match="resourceVersion"):
        store.update({**created, "spec": {**created["spec"], "endpoint": "x"}})
    with pytest.raises(errors.Conflict):
        store.update_status({**created, "status": {"ready": False}})
    assert store.get("Provider", "default", "lv")["status"] == {"ready": True}
    assert errors.Conflict.retryable


def test_update_without_resource_version_is_refused(store: SQLiteStore) -> None:
    created = store.create(factory.provider())
    del created["metadata"]["resourceVersion"]
    with pytest.raises(errors.ValidationError) as caught:
        store.update(created)
    assert caught.value.field == "metadata.resourceVersion"


def test_an_update_that_changes_nothing_writes_nothing(store: SQLiteStore) -> None:
    created = store.create(factory.provider())
    again = store.update(copy.deepcopy(created))
    assert again["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    status = store.update_status({**created, "status": {"ready": True}})
    same = store.update_status(copy.deepcopy(status))
    assert same["metadata"]["resourceVersion"] == status["metadata"]["resourceVersion"]


def test_update_of_missing_object_is_not_found(store: SQLiteStore) -> None:
    created = store.create(factory.provider())
    store.delete("Provider", "default", "lv")
    with pytest.raises(errors.NotFound):
        store.update(created)


def test_threads_racing_on_the_same_version_give_exactly_one_conflict(store: SQLiteStore) -> None:
    created = store.create(factory.provider())
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def writer(index: int) -> None:
        mine = copy.deepcopy(created)
        mine["spec"]["endpoint"] = f"qemu+tcp://host{index}/system"
        barrier.wait()
        try:
            store.update(mine)
            outcomes.append(f"ok{index}")
        except errors.Conflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    winners = [o for o in outcomes if o.startswith("ok")]
    assert len(winners) == 1 and outcomes.count("conflict") == 7
    stored = store.get("Provider", "default", "lv")
    assert stored["spec"]["endpoint"] == f"qemu+tcp://host{winners[0][2:]}/system"
    assert stored["metadata"]["generation"] == 2


# -- delete and finalizers ---------------------------------------------------------------


def test_delete_without_finalizers_removes_at_once(store: SQLiteStore) -> None:
    store.create(factory.provider())
    store.delete("Provider", "default", "lv")
    with pytest.raises(errors.NotFound):
        store.get("Provider", "default", "lv")
    with pytest.raises(errors.NotFound, match="Provider default/lv"):
        store.delete("Provider", "default", "lv")


def test_finalizers_keep_the_object_until_the_last_is_removed(store: SQLiteStore) -> None:
    manifest = factory.vm()
    manifest["metadata"]["finalizers"] = ["a.example.com/x", "b.example.com/y"]
    created = store.create(manifest)
    store.delete("VirtualMachine", "default", "vm1")
    marked = store.get("VirtualMachine", "default", "vm1")
    stamp = marked["metadata"]["deletionTimestamp"]
    assert stamp.endswith("Z")
    assert marked["metadata"]["generation"] == created["metadata"]["generation"] + 1
    store.delete("VirtualMachine", "default", "vm1")  # again: nothing changes
    assert store.get("VirtualMachine", "default", "vm1") == marked
    status = store.update_status({**marked, "status": {"phase": "Deleting"}})
    one_left = copy.deepcopy(status)
    one_left["metadata"]["finalizers"] = ["b.example.com/y"]
    kept = store.update(one_left)
    assert kept["metadata"]["deletionTimestamp"] == stamp
    assert kept["status"] == {"phase": "Deleting"}
    kept["metadata"]["finalizers"] = []
    store.update(kept)
    with pytest.raises(errors.NotFound):
        store.get("VirtualMachine", "default", "vm1")


# -- validation ----------------------------------------------------------------------------


def test_malformed_manifest_is_refused_naming_the_field_and_nothing_is_stored(
    tmp_path: Path, store: SQLiteStore
) -> None:
    bad = factory.vm()
    bad["spec"]["networks"] = [{"name": "eth0", "mac": "not-a-mac"}]
    with pytest.raises(errors.ValidationError) as caught:
        store.create(bad)
    assert caught.value.field == "spec.networks[0].mac"
    unknown = factory.provider()
    unknown["spec"]["endpointt"] = "typo"
    with pytest.raises(errors.ValidationError) as caught:
        store.create(unknown)
    assert caught.value.field == "spec.endpointt"
    assert store.list("VirtualMachine") == [] and store.list("Provider") == []
    if isinstance(store, SQLiteStore):
        assert _rows(tmp_path / "state.db", "objects") == 0
        assert _rows(tmp_path / "state.db", "changes") == 0


def test_malformed_update_leaves_the_stored_object_alone(store: SQLiteStore) -> None:
    created = store.create(factory.provider())
    broken = copy.deepcopy(created)
    broken["spec"]["type"] = "hyperv"
    with pytest.raises(errors.ValidationError) as caught:
        store.update(broken)
    assert caught.value.field == "spec.type"
    bad_status = {**created, "status": {"capabilities": {"diskFormats": ["floppy"]}}}
    with pytest.raises(errors.ValidationError) as caught:
        store.update_status(bad_status)
    assert caught.value.field == "status.capabilities.diskFormats[0]"
    assert store.get("Provider", "default", "lv") == created


# -- watch ------------------------------------------------------------------------------


def _collect(events: Iterator[WatchEvent], count: int, into: list[WatchEvent]) -> None:
    for event in events:
        into.append(event)
        if len(into) == count:
            return


def test_watch_delivers_added_modified_deleted_in_order(store: SQLiteStore) -> None:
    store.create(factory.provider("before"))  # before the watch: not delivered
    stop = threading.Event()
    events = store.watch(("Provider",), stop)
    created = store.create(factory.provider())
    store.create(factory.vm())  # another kind: not delivered
    status = store.update_status({**created, "status": {"ready": True}})
    store.delete("Provider", "default", "lv")
    got: list[WatchEvent] = []
    _collect(events, 3, got)
    stop.set()
    assert [(e.type, e.key) for e in got] == [
        ("ADDED", ObjectKey("Provider", "default", "lv")),
        ("MODIFIED", ObjectKey("Provider", "default", "lv")),
        ("DELETED", ObjectKey("Provider", "default", "lv")),
    ]
    assert got[1].object["status"] == {"ready": True}
    assert got[1].object["metadata"]["resourceVersion"] == status["metadata"]["resourceVersion"]
    assert got[2].object["metadata"]["uid"] == created["metadata"]["uid"]
    versions = [int(e.object["metadata"]["resourceVersion"]) for e in got]
    assert versions == sorted(versions)


def test_watch_ends_when_stop_is_set(store: SQLiteStore) -> None:
    stop = threading.Event()
    events = store.watch(("Provider",), stop)
    done = threading.Event()

    def consume() -> None:
        for _ in events:
            pass
        done.set()

    thread = threading.Thread(target=consume)
    thread.start()
    stop.set()
    assert done.wait(10)


def test_many_watchers_in_threads_all_see_every_change(store: SQLiteStore) -> None:
    stop = threading.Event()
    seen: list[list[WatchEvent]] = [[] for _ in range(4)]
    streams = [store.watch(("VirtualMachine",), stop) for _ in seen]
    threads = [
        threading.Thread(target=_collect, args=(s, 20, into))
        for s, into in zip(streams, seen, strict=True)
    ]
    for thread in threads:
        thread.start()
    for index in range(20):
        store.create(factory.vm(f"vm{index}"))
    for thread in threads:
        thread.join(30)
    stop.set()
    expected = [f"vm{i}" for i in range(20)]
    for got in seen:
        assert [e.key.name for e in got] == expected


def test_watch_sees_writes_of_a_second_store_on_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    with SQLiteStore(path) as watcher, SQLiteStore(path) as writer:
        stop = threading.Event()
        events = watcher.watch(("Provider",), stop)
        got: list[WatchEvent] = []
        thread = threading.Thread(target=_collect, args=(events, 2, got))
        thread.start()
        created = writer.create(factory.provider())
        writer.update_status({**created, "status": {"ready": True}})
        thread.join(30)
        stop.set()
        assert [e.type for e in got] == ["ADDED", "MODIFIED"]
        assert watcher.get("Provider", "default", "lv")["status"] == {"ready": True}


def test_store_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with SQLiteStore(path) as first:
        created = first.create(factory.provider())
        first.update_status({**created, "status": {"ready": True}})
    with SQLiteStore(path) as second:
        again = second.get("Provider", "default", "lv")
        assert again["status"] == {"ready": True}
        later = second.create(factory.provider("other"))
        assert int(later["metadata"]["resourceVersion"]) > int(again["metadata"]["resourceVersion"])


# -- events and secrets ------------------------------------------------------------------


def test_repeated_events_are_counted_not_added(store: SQLiteStore) -> None:
    obj = store.create(factory.migration())
    store.emit_event(obj, "Normal", "ExportStarted", "Disk export started")
    store.emit_event(obj, "Warning", "RetryScheduled", "retry in 5m")
    store.emit_event(obj, "Normal", "ExportStarted", "Disk export started")
    store.emit_event(obj, "Normal", "ExportStarted", "Disk export started")
    store.emit_event(obj, "Normal", "ExportStarted", "Disk export started (vdb)")
    events = store.events_for("VMMigration", "default", "m1")
    assert [(e.type, e.reason, e.message, e.count) for e in events] == [
        ("Normal", "ExportStarted", "Disk export started", 3),
        ("Warning", "RetryScheduled", "retry in 5m", 1),
        ("Normal", "ExportStarted", "Disk export started (vdb)", 1),
    ]
    assert events[0].first_timestamp <= events[0].last_timestamp
    assert events[0].involved == ObjectKey("VMMigration", "default", "m1")


def test_events_of_a_recreated_object_start_afresh(store: SQLiteStore) -> None:
    old = store.create(factory.vm())
    store.emit_event(old, "Normal", "Created", "first life")
    store.delete("VirtualMachine", "default", "vm1")
    assert [e.message for e in store.events_for("VirtualMachine", "default", "vm1")] == [
        "first life"
    ]
    new = store.create(factory.vm())
    store.emit_event(new, "Normal", "Created", "second life")
    assert [e.message for e in store.events_for("VirtualMachine", "default", "vm1")] == [
        "second life"
    ]


def test_event_type_must_be_normal_or_warning(store: SQLiteStore) -> None:
    obj = store.create(factory.vm())
    with pytest.raises(errors.InvalidArgument, match="Normal or Warning"):
        store.emit_event(obj, "Error", "MigrationFailed", "boom")
    assert store.events_for("VirtualMachine", "default", "vm1") == []


def test_read_secret_decodes_data_with_string_data_laid_over(store: SQLiteStore) -> None:
    stored = store.create(
        factory.secret(
            data={"accessKey": "AKIA", "secretKey": "from-data"},
            string_data={"secretKey": "from-stringData", "region": "eu-west-1"},
        )
    )
    assert store.read_secret("default", "creds") == {
        "accessKey": "AKIA",
        "secretKey": "from-stringData",
        "region": "eu-west-1",
    }
    assert "stringData" not in stored  # folded into data, as the API server does
    assert json.dumps(stored).count("from-stringData") == 0  # only base64 is kept


def test_read_secret_missing_names_the_secret(store: SQLiteStore) -> None:
    with pytest.raises(errors.NotFound, match="secret prod/s3-creds"):
        store.read_secret("prod", "s3-creds")


def test_secret_with_non_base64_data_is_refused(store: SQLiteStore) -> None:
    bad = factory.secret()
    bad["data"] = {"key": "%%%not base64%%%"}
    with pytest.raises(errors.ValidationError) as caught:
        store.create(bad)
    assert caught.value.field == "data.key"
    assert store.list("Secret") == []
