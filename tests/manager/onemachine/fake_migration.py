"""Stands in for ``manager.migration.controller`` in the wiring test: the constructor
signature and the optional ``related`` hook that ``virtrigaud run`` relies on."""

from __future__ import annotations

from manager.connections import ProviderConnections
from manager.runtime.types import Result
from manager.store.base import ObjectKey, ObjectStore, WatchEvent

RELATED_CALLS: list[ObjectKey] = []


class VMMigrationReconciler:
    kind = "VMMigration"

    def __init__(self, store: ObjectStore, connections: ProviderConnections) -> None:
        self.store = store
        self.connections = connections
        self.seen: list[ObjectKey] = []

    def reconcile(self, key: ObjectKey) -> Result:
        self.seen.append(key)
        obj = self.store.get(key.kind, key.namespace, key.name)
        if (obj.get("status") or {}).get("phase") != "Ready":
            self.store.update_status({**obj, "status": {"phase": "Ready", "progress": 100}})
        return Result()


def related(store: ObjectStore, event: WatchEvent) -> list[ObjectKey]:
    RELATED_CALLS.append(event.key)
    return [ObjectKey("VMMigration", key.namespace, key.name) for key in [event.key]]
