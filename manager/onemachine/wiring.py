"""Which controllers a one-machine manager runs, and what wakes them.

The Provider and VirtualMachine controllers always run. The VMMigration controller
is imported lazily from ``manager.migration.controller``
(``VMMigrationReconciler(store, connections)``); when that module is missing or
broken the manager runs without it and ``build`` says so. Its extra watches use the
module's ``related(store, event)`` when it has one, otherwise a mapping of our own
(source VM, target Provider, the VM a migration created).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from manager.connections import ProviderConnections
from manager.controllers.provider import ProviderReconciler
from manager.controllers.virtualmachine import (
    VirtualMachineReconciler,
    migration_watch,
    provider_watch,
)
from manager.runtime.controller import Watch
from manager.runtime.manager import Manager
from manager.runtime.types import Reconciler
from manager.store.base import ObjectKey, ObjectStore, WatchEvent

MIGRATION_MODULE = "manager.migration.controller"
MIGRATION_ANNOTATION = "virtrigaud.io/migration"


@dataclass
class Wiring:
    manager: Manager
    migrations: bool  # the VMMigration controller runs
    note: str = ""  # why it does not, when it does not


def default_migration_map(store: ObjectStore) -> Callable[[WatchEvent], Iterable[ObjectKey]]:
    """VirtualMachine / Provider change -> the VMMigrations it concerns."""

    def mapper(event: WatchEvent) -> Iterable[ObjectKey]:
        key = event.key
        annotations = (event.object.get("metadata") or {}).get("annotations") or {}
        namespace, _, name = str(annotations.get(MIGRATION_ANNOTATION, "")).partition("/")
        if key.kind == "VirtualMachine" and namespace and name:
            yield ObjectKey("VMMigration", namespace, name)
        for obj in store.list("VMMigration"):
            spec = obj.get("spec") or {}
            mine = ObjectKey.of(obj)
            if key.kind == "VirtualMachine" and (
                spec.get("sourceNamespace"),
                spec.get("sourceName"),
            ) == (key.namespace, key.name):
                yield mine
            target = spec.get("targetProviderRef") or {}
            if key.kind == "Provider" and (
                target.get("namespace") or mine.namespace,
                target.get("name"),
            ) == (key.namespace, key.name):
                yield mine

    return mapper


def migration_reconciler(
    store: ObjectStore, connections: ProviderConnections
) -> tuple[Reconciler | None, list[Watch], str]:
    try:
        module = importlib.import_module(MIGRATION_MODULE)
        factory = module.VMMigrationReconciler
    except Exception as exc:  # missing, or broken while being written: run without it
        return None, [], f"the VMMigration controller is not available ({exc!r})"
    reconciler: Reconciler = factory(store, connections)
    related = getattr(module, "related", None)
    mapper: Callable[[WatchEvent], Iterable[ObjectKey]]
    if callable(related):

        def mapper(event: WatchEvent) -> Iterable[ObjectKey]:
            found: Iterable[ObjectKey] = related(store, event)
            return found

    else:
        mapper = default_migration_map(store)
    return reconciler, [Watch("VirtualMachine", mapper), Watch("Provider", mapper)], ""


def build(
    store: ObjectStore,
    connections: ProviderConnections,
    *,
    with_migrations: bool = True,
    resync_period: float = 300.0,
) -> Wiring:
    manager = Manager(store)
    manager.add(ProviderReconciler(store, connections), workers=2, resync_period=resync_period)
    manager.add(
        VirtualMachineReconciler(store, connections),
        workers=4,
        watches=[provider_watch(store), migration_watch()],
        resync_period=resync_period,
    )
    if not with_migrations:
        return Wiring(manager, False, "the VMMigration controller is disabled")
    reconciler, watches, note = migration_reconciler(store, connections)
    if reconciler is None:
        return Wiring(manager, False, note)
    manager.add(reconciler, workers=4, watches=watches, resync_period=resync_period)
    return Wiring(manager, True)
