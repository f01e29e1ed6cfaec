"""The VMMigration reconciler: the thin shell around the pure planner.

``VMMigrationReconciler(store, connections)`` follows ``manager.runtime.types``: one
pass reads the object, gathers observations (quick RPCs only), plans, executes, writes
the status once and emits the events; it returns ``Result(requeue_after)`` to poll
running provider tasks. Order of the writes: the finalizer is added first (before any
provider work can start), then the actions run, then ``update_status`` (on
``errors.Conflict`` the error is raised for the runtime to retry the whole pass; a
stale status is never copied over a fresh object, and everything submitted meanwhile
is found again by its operation id), then the finalizer is removed when the plan says
so, then the events.

``watch_map`` maps changes of other objects to the VMMigrations that care, from the
event alone: a VirtualMachine created by a migration carries the
``virtrigaud.io/migration`` annotation. Source VirtualMachines and Providers are not
linked from their side; a migration waiting for one of them polls
(``Settings.wait_seconds``) instead. ``related(store, event)`` adds those mappings for
a caller that has the store at hand.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime

from manager.api import VMMigration
from manager.connections import ProviderConnections
from manager.migration import execute, planner
from manager.migration.gather import World
from manager.migration.model import (
    ANN_MIGRATION,
    DEFAULT_SETTINGS,
    FINALIZER,
    AddFinalizer,
    Plan,
    RemoveFinalizer,
    Settings,
)
from manager.runtime.types import Result
from manager.store.base import Obj, ObjectKey, ObjectStore, WatchEvent
from virtrigaud import errors
from virtrigaud.logging import get_logger

log = get_logger("virtrigaud.migration")

KIND = "VMMigration"


def _utcnow() -> datetime:
    return datetime.now(UTC)


class VMMigrationReconciler:
    """Drives VMMigration objects (see the module docstring)."""

    kind = KIND

    def __init__(
        self,
        store: ObjectStore,
        connections: ProviderConnections,
        *,
        settings: Settings = DEFAULT_SETTINGS,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.store = store
        self.connections = connections
        self.settings = settings
        self.clock = clock

    def reconcile(self, key: ObjectKey) -> Result:
        try:
            obj = self.store.get(KIND, key.namespace, key.name)
        except errors.NotFound:
            return Result()
        migration = VMMigration.from_dict(obj)
        now = self.clock()
        world = World(self.store, self.connections, migration)
        obs = world.observe(planner.needs(migration), self.settings.max_tasks_per_provider)
        probes = planner.probes(migration, obs, now, self.settings)
        obs = obs.with_probes(world.run_probes(probes))
        plan = planner.plan(migration, obs, now, self.settings)
        if any(isinstance(a, AddFinalizer) for a in plan.actions):
            obj = self._set_finalizer(obj, add=True)
        execute.run(world, plan, now, self.settings)
        obj = self._write_status(obj, migration, plan)
        if any(isinstance(a, RemoveFinalizer) for a in plan.actions):
            self._set_finalizer(obj, add=False)
        for event in plan.events:
            self.store.emit_event(obj, event.type, event.reason, event.message)
        log.debug(
            "reconciled",
            migration=str(key),
            phase=plan.status.phase,
            actions=[type(a).__name__ for a in plan.actions],
            requeue_after=plan.requeue_after,
        )
        return Result(plan.requeue_after)

    def _set_finalizer(self, obj: Obj, *, add: bool) -> Obj:
        fresh = copy.deepcopy(obj)
        meta = fresh["metadata"]
        finalizers = [f for f in meta.get("finalizers") or [] if f != FINALIZER]
        meta["finalizers"] = [*finalizers, FINALIZER] if add else finalizers
        return self.store.update(fresh)

    def _write_status(self, obj: Obj, migration: VMMigration, plan: Plan) -> Obj:
        encoded = dataclasses.replace(migration, status=plan.status).to_dict().get("status")
        if encoded == obj.get("status"):
            return obj
        fresh = copy.deepcopy(obj)
        fresh["status"] = encoded
        return self.store.update_status(fresh)


def watch_map(event: WatchEvent) -> list[ObjectKey]:
    """VirtualMachine created by a migration -> that migration (annotation)."""
    if event.key.kind != "VirtualMachine":
        return []
    annotations = (event.object.get("metadata") or {}).get("annotations") or {}
    ref = annotations.get(ANN_MIGRATION, "")
    namespace, _, name = ref.partition("/")
    return [ObjectKey(KIND, namespace, name)] if namespace and name else []


def related(store: ObjectStore, event: WatchEvent) -> list[ObjectKey]:
    """``watch_map`` plus the migrations whose source VM or Provider changed (lists)."""
    keys = set(watch_map(event))
    kind, ns, name = event.key.kind, event.key.namespace, event.key.name
    if kind not in ("VirtualMachine", "Provider"):
        return sorted(keys)
    for obj in store.list(KIND):
        spec = obj.get("spec") or {}
        key = ObjectKey.of(obj)
        if kind == "VirtualMachine" and (spec.get("sourceNamespace"), spec.get("sourceName")) == (
            ns,
            name,
        ):
            keys.add(key)
        target = spec.get("targetProviderRef") or {}
        if kind == "Provider" and (
            target.get("namespace") or key.namespace,
            target.get("name"),
        ) == (ns, name):
            keys.add(key)
    return sorted(keys)
