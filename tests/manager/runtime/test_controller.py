"""Controller and Manager with tiny reconcilers over a real SQLiteStore."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from manager.runtime.controller import Controller, Watch
from manager.runtime.manager import Manager
from manager.runtime.queue import Backoff
from manager.runtime.types import Result
from manager.store.base import ObjectKey, WatchEvent
from manager.store.sqlite import SQLiteStore
from tests.manager.store import factory
from virtrigaud import errors


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.02)


class Recorder:
    """Records every reconcile; ``behave(key, call_number)`` decides the outcome."""

    def __init__(
        self,
        store: SQLiteStore,
        kind: str = "Provider",
        behave: Callable[[ObjectKey, int], Result] | None = None,
    ) -> None:
        self.kind = kind
        self.store = store
        self.behave = behave or (lambda _key, _n: Result())
        self.lock = threading.Lock()
        self.calls: list[ObjectKey] = []
        self.seen: list[str] = []  # spec.endpoint read by each call (Providers)
        self.active: dict[ObjectKey, int] = {}
        self.max_active: dict[ObjectKey, int] = {}
        self.max_total = 0

    def count(self, key: ObjectKey | None = None) -> int:
        with self.lock:
            return len([c for c in self.calls if key is None or c == key])

    def reconcile(self, key: ObjectKey) -> Result:
        with self.lock:
            self.calls.append(key)
            number = len([c for c in self.calls if c == key])
            self.active[key] = self.active.get(key, 0) + 1
            self.max_active[key] = max(self.max_active.get(key, 0), self.active[key])
            self.max_total = max(self.max_total, sum(self.active.values()))
        try:
            if key.kind == "Provider":
                try:
                    obj = self.store.get(key.kind, key.namespace, key.name)
                    self.seen.append(obj["spec"]["endpoint"])
                except errors.NotFound:
                    self.seen.append("<gone>")
            return self.behave(key, number)
        finally:
            with self.lock:
                self.active[key] -= 1


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    with SQLiteStore(tmp_path / "state.db", poll_interval=0.05) as opened:
        yield opened


@pytest.fixture
def controllers() -> Iterator[list[Controller]]:
    started: list[Controller] = []
    yield started
    for controller in started:
        controller.stop(10)


def start(controllers: list[Controller], controller: Controller) -> Controller:
    controller.start()
    controllers.append(controller)
    return controller


KEY = ObjectKey("Provider", "default", "lv")


def test_existing_objects_and_watch_events_are_reconciled(
    store: SQLiteStore, controllers: list[Controller]
) -> None:
    store.create(factory.provider("existing"))
    recorder = Recorder(store)
    start(controllers, Controller(recorder, store))
    wait_until(lambda: recorder.count(ObjectKey("Provider", "default", "existing")) == 1)
    created = store.create(factory.provider())
    wait_until(lambda: recorder.count(KEY) >= 1, what="ADDED reconciled")
    store.update({**created, "spec": {**created["spec"], "endpoint": "qemu:///session"}})
    wait_until(lambda: "qemu:///session" in recorder.seen, what="MODIFIED reconciled")
    store.delete("Provider", "default", "lv")
    wait_until(lambda: "<gone>" in recorder.seen, what="DELETED reconciled")


def test_a_key_changed_during_its_reconcile_is_reconciled_again_not_concurrently(
    store: SQLiteStore, controllers: list[Controller]
) -> None:
    entered, release = threading.Event(), threading.Event()

    def behave(_key: ObjectKey, number: int) -> Result:
        if number == 1:
            entered.set()
            release.wait(30)
        return Result()

    recorder = Recorder(store, behave=behave)
    created = store.create(factory.provider())
    start(controllers, Controller(recorder, store, workers=4))
    assert entered.wait(30)
    for index in range(5):  # five changes while the first pass is still running
        current = store.get("Provider", "default", "lv")
        store.update({**current, "spec": {**current["spec"], "endpoint": f"qemu+tcp://h{index}/"}})
    time.sleep(0.3)  # give the other three workers every chance to misbehave
    assert recorder.count(KEY) == 1
    release.set()
    wait_until(lambda: "qemu+tcp://h4/" in recorder.seen, what="the last change reconciled")
    assert recorder.seen[0] == created["spec"]["endpoint"]
    assert recorder.max_active[KEY] == 1


def test_different_keys_run_in_parallel_up_to_the_worker_count(
    store: SQLiteStore, controllers: list[Controller]
) -> None:
    gate = threading.Event()

    def behave(_key: ObjectKey, _number: int) -> Result:
        gate.wait(30)
        return Result()

    recorder = Recorder(store, behave=behave)
    for index in range(6):
        store.create(factory.provider(f"p{index}"))
    start(controllers, Controller(recorder, store, workers=3))
    wait_until(lambda: recorder.max_total == 3, what="three reconciles at once")
    time.sleep(0.2)
    assert recorder.max_total == 3  # bounded by the workers
    gate.set()
    wait_until(lambda: recorder.count() >= 6)


def test_transient_errors_are_retried_with_backoff_until_success(
    store: SQLiteStore, controllers: list[Controller]
) -> None:
    def behave(_key: ObjectKey, number: int) -> Result:
        if number <= 3:
            raise errors.Unavailable("provider down")
        return Result()

    recorder = Recorder(store, behave=behave)
    controller = Controller(recorder, store, backoff=Backoff(base=0.01, cap=0.05))
    store.create(factory.provider())
    start(controllers, controller)
    wait_until(lambda: recorder.count(KEY) == 4, what="three retries then success")
    wait_until(lambda: controller.queue.backoff.failures(KEY) == 0, what="backoff forgotten")
    time.sleep(0.2)
    assert recorder.count(KEY) == 4  # nothing more after the success


def test_conflicts_are_retried(store: SQLiteStore, controllers: list[Controller]) -> None:
    def behave(key: ObjectKey, number: int) -> Result:
        obj = store.get(key.kind, key.namespace, key.name)
        if number == 1:
            store.update_status({**obj, "status": {"message": "someone else"}})
        store.update_status({**obj, "status": {"message": "mine"}})  # stale on pass 1
        return Result()

    recorder = Recorder(store, behave=behave)
    store.create(factory.provider())
    start(controllers, Controller(recorder, store, backoff=Backoff(base=0.01, cap=0.05)))
    wait_until(
        lambda: (
            (store.get("Provider", "default", "lv").get("status") or {}).get("message") == "mine"
        )
    )
    assert recorder.count(KEY) >= 2


def test_permanent_errors_are_not_retried(
    store: SQLiteStore, controllers: list[Controller]
) -> None:
    def behave(_key: ObjectKey, number: int) -> Result:
        if number == 1:
            raise errors.InvalidArgument("spec.endpoint: bad")
        return Result()

    recorder = Recorder(store, behave=behave)
    controller = Controller(recorder, store, backoff=Backoff(base=0.01, cap=0.02))
    created = store.create(factory.provider())
    start(controllers, controller)
    wait_until(lambda: recorder.count(KEY) == 1)
    time.sleep(0.3)
    assert recorder.count(KEY) == 1
    store.update({**created, "spec": {**created["spec"], "endpoint": "qemu:///session"}})
    wait_until(lambda: recorder.count(KEY) == 2, what="a change reconciles it again")


def test_requeue_after_polls_without_any_change(
    store: SQLiteStore, controllers: list[Controller]
) -> None:
    def behave(_key: ObjectKey, number: int) -> Result:
        return Result(requeue_after=0.05 if number < 5 else None)

    recorder = Recorder(store, behave=behave)
    store.create(factory.provider())
    start(controllers, Controller(recorder, store))
    wait_until(lambda: recorder.count(KEY) == 5, what="four requeues")
    time.sleep(0.3)
    assert recorder.count(KEY) == 5  # Result() stops the polling


def test_periodic_resync_requeues_every_object(
    store: SQLiteStore, controllers: list[Controller]
) -> None:
    recorder = Recorder(store)
    store.create(factory.provider("a"))
    store.create(factory.provider("b"))
    start(controllers, Controller(recorder, store, resync_period=0.1))
    keys = [ObjectKey("Provider", "default", name) for name in ("a", "b")]
    wait_until(lambda: all(recorder.count(key) >= 3 for key in keys), what="three resyncs each")


def test_watches_of_other_kinds_map_to_the_controllers_keys(
    store: SQLiteStore, controllers: list[Controller]
) -> None:
    recorder = Recorder(store, kind="VMMigration")

    def mapper(event: WatchEvent) -> list[ObjectKey]:
        if event.key.kind == "Provider":
            return [ObjectKey("VMMigration", "default", f"m-{event.key.name}")]
        return []

    start(controllers, Controller(recorder, store, watches=[Watch("Provider", mapper)]))
    store.create(factory.vm())  # a kind nobody maps: ignored
    store.create(factory.provider("target"))
    wait_until(lambda: recorder.count(ObjectKey("VMMigration", "default", "m-target")) == 1)
    assert all(key.kind == "VMMigration" for key in recorder.calls)


def test_stop_lets_the_running_reconcile_finish_and_takes_no_more(
    store: SQLiteStore, controllers: list[Controller]
) -> None:
    entered, finished = threading.Event(), threading.Event()

    def behave(_key: ObjectKey, number: int) -> Result:
        if number == 1:
            entered.set()
            time.sleep(0.3)
            finished.set()
        return Result(requeue_after=0.01)

    recorder = Recorder(store, behave=behave)
    controller = Controller(recorder, store)
    store.create(factory.provider())
    controller.start()
    assert entered.wait(30)
    controller.stop(30)
    assert finished.is_set()
    calls = recorder.count()
    store.create(factory.provider("after-stop"))
    time.sleep(0.3)
    assert recorder.count() == calls
    assert controller.stopped


def test_manager_runs_several_controllers_over_one_store(store: SQLiteStore) -> None:
    providers, vms = Recorder(store), Recorder(store, kind="VirtualMachine")
    manager = Manager(store)
    manager.add(providers)
    manager.add(vms, workers=1)
    assert manager.controller("VirtualMachine").workers == 1
    with manager:
        store.create(factory.provider())
        store.create(factory.vm())
        wait_until(lambda: providers.count(KEY) == 1 and vms.count() == 1)
    assert vms.calls == [ObjectKey("VirtualMachine", "default", "vm1")]
    with pytest.raises(errors.FailedPrecondition):
        manager.add(Recorder(store))
