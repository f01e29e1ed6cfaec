"""The reconcile contract (controller-runtime style).

A request is only an ``ObjectKey``. A reconciler reads the whole current state, acts
idempotently, writes status at most once per pass, and returns a ``Result``:

* ``Result()``: done until something changes (a watch event re-queues the key);
* ``Result(requeue_after=s)``: look again in ``s`` seconds (polling a provider task);
* raising ``errors.TransientError`` (or ``errors.Conflict``): retried with per-key
  exponential backoff by the runtime;
* raising any other ``errors.VirtrigaudError``: logged; the reconciler is expected to
  have recorded a terminal failure in status itself before raising, so the runtime
  does not retry it.

Reconcilers never block on long provider work: they submit a task, store its id in
status, and requeue to poll it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from manager.store.base import ObjectKey


@dataclass(frozen=True)
class Result:
    requeue_after: float | None = None


class Reconciler(Protocol):
    """One controller's logic for one kind."""

    kind: str

    def reconcile(self, key: ObjectKey) -> Result: ...
