"""Drive a pure migration to a given phase (shared by the planner tests)."""

from __future__ import annotations

from typing import Any

from manager.api import MigrationPhase
from manager.migration import planner
from manager.migration.model import Observations, TaskView
from tests.manager.migration.builders import GB, Driver, exported, good_obs, migration, task, vm

THREE = (("vda", 1 * GB), ("vdb", 2 * GB), ("vdc", 7 * GB))


def validating(the_vm: Any = None, **spec: Any) -> tuple[Driver, Observations]:
    d = Driver(migration(**spec))
    obs = good_obs(the_vm if the_vm is not None else vm())
    d.step(obs)  # -> Pending
    d.step(obs)  # -> Validating
    assert d.status.phase is MigrationPhase.VALIDATING
    return d, obs


def snapshotting(the_vm: Any = None, **spec: Any) -> tuple[Driver, Observations]:
    d, obs = validating(the_vm, **spec)
    d.step(obs)
    assert d.status.phase is MigrationPhase.SNAPSHOTTING, d.status.message
    return d, obs


def snapshot_probe_id(d: Driver, obs: Observations) -> str:
    (probe,) = planner.probes(d.mig, obs, d.now)
    return probe.op_id


def exporting(disks: Any = THREE, **spec: Any) -> tuple[Driver, Observations]:
    d, obs = snapshotting(vm(disks), **spec)
    op = snapshot_probe_id(d, obs)
    done = task("t-snap", 3, snapshot_result={"snapshot_id": "snap-1"})
    d.step(obs, probes={op: done})
    assert d.status.phase is MigrationPhase.EXPORTING
    return d, obs


def all_exported(disks: Any = THREE, **spec: Any) -> tuple[Driver, Observations]:
    """Every disk exported; the pass that sees it submits the imports."""
    d, obs = exporting(disks, **spec)
    sizes = [x.size_bytes or 0 for x in d.status.disks]
    tasks: dict[str, TaskView] = {
        ref: exported(ref, size) for ref, size in zip(d.export_refs(), sizes, strict=True)
    }
    d.step(obs, tasks)
    return d, obs
