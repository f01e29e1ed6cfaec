"""Helpers the controllers share: time, conditions, status writes, provider lookup."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from manager.api import Condition, ConditionStatus, Provider
from manager.connections import ProviderConnections
from manager.providerclient import ProviderClient
from manager.store.base import Obj, ObjectStore
from virtrigaud import errors
from virtrigaud.provider.v1 import provider_pb2 as pb

TERMINAL_TASK_STATES = frozenset(
    {pb.TASK_STATE_SUCCEEDED, pb.TASK_STATE_FAILED, pb.TASK_STATE_CANCELLED}
)


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def condition(type_: str, ok: bool, reason: str, message: str, generation: int | None) -> Condition:
    return Condition(
        type=type_,
        status=ConditionStatus.TRUE if ok else ConditionStatus.FALSE,
        last_transition_time=now(),
        observed_generation=generation,
        reason=reason,
        message=message,
    )


def write_status(store: ObjectStore, obj: Obj, status: dict[str, Any]) -> Obj:
    """Write ``status`` unless it is what the object already has (no empty writes,
    so a controller's own status write does not wake it up forever)."""
    if (obj.get("status") or {}) == status:
        return obj
    return store.update_status({**obj, "status": status})


def remove_finalizer(store: ObjectStore, obj: Obj, finalizer: str) -> Obj:
    meta = dict(obj["metadata"])
    meta["finalizers"] = [f for f in meta.get("finalizers") or [] if f != finalizer]
    return store.update({**obj, "metadata": meta})


def add_finalizer(store: ObjectStore, obj: Obj, finalizer: str) -> Obj:
    meta = dict(obj["metadata"])
    meta["finalizers"] = [*(meta.get("finalizers") or []), finalizer]
    return store.update({**obj, "metadata": meta})


def task_error(task: pb.Task) -> errors.VirtrigaudError:
    """The typed error of a failed or cancelled task."""
    if task.HasField("error"):
        return errors.from_task_error(task.error)
    return errors.Cancelled(f"task {task.id} was cancelled")


def task_progress(task: pb.Task) -> str:
    """``"defining, 40%"``: what a running task is doing, for status messages."""
    parts = [task.stage or pb.TaskState.Name(task.state).removeprefix("TASK_STATE_").lower()]
    if task.percent:
        parts.append(f"{task.percent:.0f}%")
    return ", ".join(parts)


class Blocked(Exception):
    """The reconcile cannot proceed yet; ``reason``/``message`` go into a condition."""

    def __init__(self, reason: str, message: str, retry_after: float = 10.0) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry_after = retry_after


@dataclass(frozen=True)
class ProviderLink:
    obj: Obj
    provider: Provider
    client: ProviderClient

    @property
    def label(self) -> str:
        return f"{self.provider.metadata.namespace or 'default'}/{self.provider.metadata.name}"


def ready_provider(
    store: ObjectStore, connections: ProviderConnections, name: str, namespace: str
) -> ProviderLink:
    """The named Provider with a client, or Blocked saying why it cannot be used."""
    label = f"{namespace}/{name}"
    try:
        obj = store.get("Provider", namespace, name)
    except errors.NotFound:
        raise Blocked("ProviderNotFound", f"provider {label} does not exist", 15.0) from None
    provider = Provider.from_dict(obj)
    status = provider.status
    if status is None or not status.endpoint:
        raise Blocked("ProviderNotReady", f"provider {label} is not running (no endpoint yet)")
    if not status.ready:
        why = f": {status.message}" if status.message else ""
        raise Blocked("ProviderNotReady", f"provider {label} is not ready{why}")
    return ProviderLink(obj, provider, connections.client_for(obj))
