"""The shell: status written once and never over a fresher object; watch mapping."""

from __future__ import annotations

from pathlib import Path

import pytest

from manager.connections import ProviderConnections
from manager.migration.controller import VMMigrationReconciler, related, watch_map
from manager.runtime.types import Reconciler, Result
from manager.store.base import Obj, ObjectKey, WatchEvent
from manager.store.sqlite import SQLiteStore
from tests.manager.migration.harness import Harness, MiB, cleaned, phase_is
from virtrigaud import errors


class InterferingStore:
    """Wraps the harness store: once armed, another writer changes the migration just
    before the reconciler writes a status holding export task refs (as a concurrent
    ``kubectl edit`` would), so that status write conflicts."""

    def __init__(self, world: Harness) -> None:
        self.world = world
        self.armed = False
        self.refused: list[str] = []  # export task refs of the status write that conflicted
        self.real_update_status = world.store.update_status
        world.store.update_status = self.update_status  # type: ignore[method-assign]

    def update_status(self, obj: Obj) -> Obj:
        disks = (obj.get("status") or {}).get("disks") or []
        if self.armed and any(d.get("exportTaskRef") for d in disks):
            self.armed = False
            self.refused = [d["exportTaskRef"] for d in disks]
            other = self.world.store.get("VMMigration", "default", "mig")
            other["metadata"].setdefault("labels", {})["edited"] = "yes"
            self.world.store.update(other)
        return self.real_update_status(obj)


def test_conflict_raises_and_the_next_pass_finds_the_same_tasks(tmp_path: Path) -> None:
    world = Harness(tmp_path, {"vda": b"\x01" * MiB, "vdb": b"\x02" * MiB})
    try:
        store = InterferingStore(world)
        key = world.migrate()
        world.drive(key, phase_is("Snapshotting"))
        store.armed = True
        with pytest.raises(errors.Conflict):
            for _ in range(1000):
                before = world.get(key)
                world.reconciler.reconcile(key)
        assert len(store.refused) == 2, "the conflicting pass submitted both exports"
        after = world.get(key)
        assert after is not None and before is not None
        assert after["status"] == before["status"]  # nothing stale was written
        assert after["status"]["phase"] == "Snapshotting"
        assert after["metadata"]["labels"] == {"edited": "yes"}  # the other write stands
        final = world.drive(key, cleaned)
        # the exports the failed pass submitted were found again by their operation ids:
        # the same tasks, each disk exported once
        assert [d["exportTaskRef"] for d in (final or {})["status"]["disks"]] == store.refused
        assert sorted(world.source.exports) == ["vda", "vdb"]
        assert world.phase(key) == "Ready"
    finally:
        world.close()


def test_constructed_as_the_runtime_does_and_a_missing_object_is_done() -> None:
    with SQLiteStore(":memory:") as store:
        reconciler: Reconciler = VMMigrationReconciler(store, ProviderConnections())
        assert reconciler.kind == "VMMigration"
        assert reconciler.reconcile(ObjectKey("VMMigration", "default", "gone")) == Result()


def _event(kind: str, name: str, obj: Obj) -> WatchEvent:
    return WatchEvent("MODIFIED", ObjectKey(kind, "default", name), obj)


def test_watch_map_follows_the_migration_annotation() -> None:
    vm = {"metadata": {"name": "t", "annotations": {"virtrigaud.io/migration": "prod/mig"}}}
    assert watch_map(_event("VirtualMachine", "t", vm)) == [ObjectKey("VMMigration", "prod", "mig")]
    assert watch_map(_event("VirtualMachine", "x", {"metadata": {"name": "x"}})) == []
    assert watch_map(_event("Provider", "p", {"metadata": {"name": "p"}})) == []


def test_related_maps_source_vms_and_providers(tmp_path: Path) -> None:
    world = Harness(tmp_path, {"vda": b"\x01" * MiB})
    try:
        key = world.migrate()
        src = world.store.get("VirtualMachine", "default", "src")
        assert related(world.store, _event("VirtualMachine", "src", src)) == [key]
        tgt = world.store.get("Provider", "default", "tgt")
        assert related(world.store, _event("Provider", "tgt", tgt)) == [key]
        other = world.store.get("Provider", "default", "srcp")
        assert related(world.store, _event("Provider", "srcp", other)) == []
    finally:
        world.close()
