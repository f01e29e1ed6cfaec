"""One planning pass: the inputs, the status being built and small helpers.

``Pass`` is created by ``planner.plan`` from the migration, the observations and the
time; every step module works on it. The status is a deep copy of the stored one, so
the stored object is never mutated and the caller can compare old and new.
"""

from __future__ import annotations

import copy
from datetime import datetime

from manager.api import (
    Condition,
    ConditionStatus,
    DiskMigrationStatus,
    DiskPhase,
    MigrationPhase,
    VMMigration,
    VMMigrationStatus,
    find_condition,
    set_condition,
)
from manager.migration.model import (
    Action,
    CancelTask,
    EventRecord,
    Observations,
    Plan,
    Settings,
    Side,
)
from virtrigaud.provider.v1 import provider_pb2 as pb

TERMINAL_TASK_STATES = frozenset(
    {pb.TASK_STATE_SUCCEEDED, pb.TASK_STATE_FAILED, pb.TASK_STATE_CANCELLED}
)
TERMINAL_PHASES = frozenset({MigrationPhase.READY, MigrationPhase.FAILED})


class Pass:
    """The state of one call to ``planner.plan``."""

    def __init__(
        self, migration: VMMigration, obs: Observations, now: datetime, settings: Settings
    ) -> None:
        self.migration = migration
        self.spec = migration.spec
        self.obs = obs
        self.now = now
        self.settings = settings
        self.old = migration.status or VMMigrationStatus()
        self.status = copy.deepcopy(self.old)
        self.plan = Plan(status=self.status)

    @classmethod
    def resume(cls, migration: VMMigration, plan: Plan, now: datetime, settings: Settings) -> Pass:
        """A pass that continues writing into an existing plan (after execution)."""
        step = cls(migration, Observations(), now, settings)
        step.status = plan.status
        step.plan = plan
        return step

    # -- identity ---------------------------------------------------------------------------

    @property
    def namespace(self) -> str:
        return self.migration.metadata.namespace or "default"

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.migration.metadata.name}"

    @property
    def source_ref(self) -> str:
        return f"{self.spec.source_namespace}/{self.spec.source_name}"

    @property
    def target_ref(self) -> str:
        return f"{self.spec.effective_target_namespace}/{self.spec.target_name}"

    @property
    def target_provider_ref(self) -> str:
        ref = self.spec.target_provider_ref
        return f"{ref.namespace_or(self.namespace)}/{ref.name}"

    def source_vm_id(self) -> str | None:
        """The hypervisor id of the source VM (status.id, else spec.vmId)."""
        vm = self.obs.source_object
        if vm is None:
            return None
        return (vm.status.id if vm.status else None) or vm.spec.vm_id

    # -- writing the plan -----------------------------------------------------------------

    def condition(self, type_: str, ok: bool, reason: str, message: str) -> None:
        set_condition(
            self.status.conditions,
            Condition(
                type=type_,
                status=ConditionStatus.TRUE if ok else ConditionStatus.FALSE,
                last_transition_time=self.now,
                observed_generation=self.migration.metadata.generation,
                reason=reason,
                message=message,
            ),
        )

    def old_condition(self, type_: str) -> Condition | None:
        return find_condition(self.old.conditions, type_)

    def is_true(self, type_: str) -> bool:
        found = find_condition(self.status.conditions, type_)
        return found is not None and found.status is ConditionStatus.TRUE

    def was_true(self, type_: str) -> bool:
        found = self.old_condition(type_)
        return found is not None and found.status is ConditionStatus.TRUE

    def event(self, reason: str, message: str, *, warning: bool = False) -> None:
        self.plan.events.append(EventRecord("Warning" if warning else "Normal", reason, message))

    def act(self, action: Action) -> None:
        self.plan.actions.append(action)

    def requeue(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        current = self.plan.requeue_after
        self.plan.requeue_after = seconds if current is None else min(current, seconds)

    def poll(self) -> None:
        self.requeue(self.settings.poll_seconds)

    def wait(self) -> None:
        self.requeue(self.settings.wait_seconds)

    # -- per-Provider task slots -----------------------------------------------------

    _IN_FLIGHT: tuple[tuple[Side, DiskPhase], ...] = (
        ("source", DiskPhase.EXPORTING),
        ("target", DiskPhase.IMPORTING),
    )

    def _own_tasks_on(self, provider: str) -> int:
        """This migration's exports + imports in flight on ``provider`` (one Provider
        can be both the source and the target)."""
        count = 0
        for side, phase in self._IN_FLIGHT:
            slots = self.obs.slots.get(side)
            if slots is not None and slots.provider == provider:
                count += sum(1 for d in self.status.disks if d.phase is phase)
        return count

    def slot_wait(self, side: Side) -> str | None:
        """None if a new export (source) / import (target) may start now, else why not."""
        slots = self.obs.slots.get(side)
        if slots is None or slots.limit <= 0:
            return None
        used = slots.others + self._own_tasks_on(slots.provider)
        if used < slots.limit:
            return None
        return (
            f"waiting for a free task slot on Provider {slots.provider} "
            f"({used} of {slots.limit} exports/imports running)"
        )

    def enter(self, phase: MigrationPhase, message: str | None = None) -> None:
        self.status.phase = phase
        if message is not None:
            self.status.message = message

    # -- retries ---------------------------------------------------------------------------

    def retry_due(self) -> bool:
        due = self.status.last_retry_time
        return due is None or self.now >= due

    def retry_wait(self) -> float:
        due = self.status.last_retry_time
        return 0.0 if due is None else max(0.0, (due - self.now).total_seconds())

    def migration_attempt(self) -> int:
        return (self.status.retry_attempts or 0) + 1

    # -- failing ---------------------------------------------------------------------------

    def fail(self, reason: str, message: str, disk: DiskMigrationStatus | None = None) -> None:
        """Terminal failure: phase Failed, Failed/Ready conditions, event, cancel tasks."""
        if disk is not None:
            disk.phase = DiskPhase.FAILED
            disk.message = message
        self.status.phase = MigrationPhase.FAILED
        self.status.message = message
        self.status.completion_time = self.now
        self.condition("Failed", True, reason, message)
        self.condition("Ready", False, "MigrationFailed", message)
        self.event("MigrationFailed", f"Migration failed: {message}", warning=True)
        self.cancel_running()
        self.plan.requeue_after = None

    def cancel_running(self) -> int:
        """CancelTask for every observed export/import task still running; the count."""
        count = 0
        for disk in self.status.disks:
            for side, ref in self.running_refs(disk):
                self.act(CancelTask(side, ref))
                count += 1
        return count

    def running_refs(self, disk: DiskMigrationStatus) -> list[tuple[Side, str]]:
        refs: list[tuple[Side, str]] = []
        pairs: tuple[tuple[Side, str | None], ...] = (
            ("source", disk.export_task_ref),
            ("target", disk.import_task_ref),
        )
        for side, ref in pairs:
            view = self.obs.tasks.get(ref) if ref else None
            if isinstance(view, pb.Task) and view.state not in TERMINAL_TASK_STATES:
                refs.append((side, view.id))
        return refs
