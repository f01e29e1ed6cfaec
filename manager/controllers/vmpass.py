"""The working state of one VirtualMachine reconcile pass."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import timedelta

from manager.api import (
    PowerState,
    VirtualMachine,
    VirtualMachineStatus,
    format_time,
    parse_time,
    set_condition,
)
from manager.controllers.common import condition, now
from manager.store.base import Obj


@dataclass
class Pass:
    """One reconcile's working state: the object, its status, events to emit."""

    obj: Obj
    vm: VirtualMachine
    status: VirtualMachineStatus
    events: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def refs(self) -> dict[str, str]:
        return self.status.provider

    @property
    def name(self) -> str:
        return self.vm.metadata.name

    def ready(self, ok: bool, reason: str, message: str) -> None:
        generation = self.vm.metadata.generation
        set_condition(self.status.conditions, condition("Ready", ok, reason, message, generation))
        self.status.message = message

    def event(self, type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))

    def op(self, step: str) -> str:
        return f"{self.vm.metadata.uid}/{self.vm.metadata.generation}/{step}"

    def hold(self, step: str, delay: float) -> None:
        """Do not retry ``step`` before ``delay`` seconds from now. Kept in status, so
        the wake-up caused by writing that status (or a restart) does not retry early."""
        self.refs[f"{step}RetryAt"] = format_time(now() + timedelta(seconds=math.ceil(delay)))

    def held(self, step: str) -> float | None:
        """Seconds until ``step`` may be retried, or None when it may go now."""
        until = self.refs.get(f"{step}RetryAt")
        if until is None:
            return None
        left = (parse_time(until) - now()).total_seconds()
        if left > 0:
            return left
        del self.refs[f"{step}RetryAt"]
        return None


def power_matches(desired: PowerState, observed: object) -> bool:
    """Whether the observed power state is the desired one."""
    return str(getattr(observed, "value", observed)) == desired.value
