"""Which controllers `virtrigaud run` wires, and when it exits with which code."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from manager.connections import ProviderConnections
from manager.onemachine import wiring
from manager.onemachine.runner import settled
from manager.store.base import ObjectKey
from manager.store.sqlite import SQLiteStore
from tests.manager.onemachine import fake_migration
from tests.manager.store import factory


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    with SQLiteStore(tmp_path / "state.db", poll_interval=0.05) as opened:
        yield opened


def test_the_migration_controller_is_imported_lazily_with_its_related_hook(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wiring, "MIGRATION_MODULE", "tests.manager.onemachine.fake_migration")
    fake_migration.RELATED_CALLS.clear()
    connections = ProviderConnections()
    wired = wiring.build(store, connections)
    assert wired.migrations and wired.note == ""
    assert [c.kind for c in wired.manager.controllers] == [
        "Provider",
        "VirtualMachine",
        "VMMigration",
    ]
    reconciler = wired.manager.controller("VMMigration").reconciler
    assert isinstance(reconciler, fake_migration.VMMigrationReconciler)
    assert reconciler.store is store and reconciler.connections is connections
    with wired.manager:
        store.create(factory.migration("vm1"))
        store.create(factory.vm("vm1", vmId="x"))  # related() maps it to VMMigration vm1
        deadline = time.monotonic() + 30
        while store.get("VMMigration", "default", "vm1").get("status", {}).get("phase") != "Ready":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        while ObjectKey("VirtualMachine", "default", "vm1") not in fake_migration.RELATED_CALLS:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    connections.close()


def test_without_the_migration_module_run_goes_on_and_says_so(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wiring, "MIGRATION_MODULE", "tests.manager.onemachine.no_such_module")
    wired = wiring.build(store, ProviderConnections())
    assert not wired.migrations
    assert "no_such_module" in wired.note
    assert [c.kind for c in wired.manager.controllers] == ["Provider", "VirtualMachine"]


def _with(obj: dict[str, Any], generation: int = 1, **status: Any) -> dict[str, Any]:
    obj["metadata"]["generation"] = generation
    obj["status"] = status
    return obj


STARTED = "2026-01-01T10:00:00Z"


def _cleaned(status: str, reason: str) -> list[dict[str, str]]:
    return [{"type": "CleanedUp", "status": status, "reason": reason}]


def test_exit_code_follows_the_migrations(store: SQLiteStore) -> None:
    done = _cleaned("True", "CleanupCompleted")
    ready = _with(factory.migration("a"), phase="Ready", observedGeneration=1, conditions=done)
    failed = _with(factory.migration("b"), phase="Failed", observedGeneration=1)
    moving = _with(factory.migration("c"), phase="Transferring")
    stale = _with(
        factory.migration("d"), generation=2, phase="Ready", observedGeneration=1, conditions=done
    )
    assert settled(store, [ready], [], {}, STARTED) == 0
    assert settled(store, [ready, failed], [], {}, STARTED) == 1
    assert settled(store, [ready, moving], [], {}, STARTED) is None
    assert settled(store, [stale], [], {}, STARTED) is None  # edited: not reconciled yet


def test_a_ready_migration_is_settled_only_when_its_cleanup_ended(store: SQLiteStore) -> None:
    def ready(conditions: list[dict[str, str]]) -> dict[str, Any]:
        return _with(
            factory.migration("a"), phase="Ready", observedGeneration=1, conditions=conditions
        )

    assert settled(store, [ready([])], [], {}, STARTED) is None
    assert settled(store, [ready(_cleaned("False", "CleanupInProgress"))], [], {}, STARTED) is None
    # migrated, but something was left behind: its own exit code (3), not success
    assert settled(store, [ready(_cleaned("False", "CleanupFailed"))], [], {}, STARTED) == 3
    assert settled(store, [ready(_cleaned("True", "NothingToClean"))], [], {}, STARTED) == 0


def test_without_migrations_the_vms_decide(store: SQLiteStore) -> None:
    store.create(factory.provider("lv"))
    store.create(factory.provider("broken"))
    ready = _with(factory.vm("a"), phase="Ready", observedGeneration=1)
    failed = _with(factory.vm("b"), phase="Failed", observedGeneration=1)
    pending = _with(factory.vm("c"), phase="Pending", observedGeneration=1)
    fresh = factory.vm("d")
    orphan = _with(factory.vm("e", provider_name="broken"), phase="Pending", observedGeneration=1)
    deleting = _with(factory.vm("f"), phase="Ready", observedGeneration=1)
    deleting["metadata"]["deletionTimestamp"] = STARTED
    broken = {ObjectKey("Provider", "default", "broken"): "exited"}
    assert settled(store, [], [ready], {}, STARTED) == 0
    assert settled(store, [], [ready, failed], {}, STARTED) == 1
    assert settled(store, [], [ready, pending], {}, STARTED) is None
    assert settled(store, [], [fresh], {}, STARTED) is None
    assert settled(store, [], [ready, orphan], broken, STARTED) == 1  # its provider died
    assert settled(store, [], [deleting], {}, STARTED) is None
    ghost = _with(factory.vm("g", provider_name="ghost"), phase="Pending", observedGeneration=1)
    assert settled(store, [], [ready, ghost], {}, STARTED) == 1  # no such provider


def test_with_only_providers_every_provider_must_be_checked_this_run(store: SQLiteStore) -> None:
    created = store.create(factory.provider())
    assert settled(store, [], [], {}, STARTED) is None
    old = store.update_status(
        {**created, "status": {"ready": True, "lastHealthCheck": "2025-12-31T00:00:00Z"}}
    )
    assert settled(store, [], [], {}, STARTED) is None  # a check of an earlier run
    store.update_status({**old, "status": {"ready": True, "lastHealthCheck": STARTED}})
    assert settled(store, [], [], {}, STARTED) == 0
    assert settled(store, [], [], {ObjectKey("Provider", "default", "lv"): "boom"}, STARTED) == 1
