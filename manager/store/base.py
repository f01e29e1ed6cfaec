"""The object-store adapter interface the controllers use.

Objects are plain manifest dicts (``apiVersion``, ``kind``, ``metadata``, ``spec``,
``status``) exactly as the Kubernetes API returns them; the typed views live in
``manager.api`` (``VMMigration.from_dict(obj)``). Semantics are the Kubernetes API's,
so the reconcilers behave the same in both homes:

* ``create`` assigns ``metadata.uid``, ``resourceVersion`` (an opaque string that
  changes on every write), ``generation`` = 1 and ``creationTimestamp``; a second
  object with the same (kind, namespace, name) raises ``errors.AlreadyExists``.
* ``update`` writes metadata + spec and ignores ``status``; ``update_status`` writes
  only ``status`` (the ``/status`` subresource). Both are optimistic: the given
  ``metadata.resourceVersion`` must be the stored one, else ``errors.Conflict`` (the
  caller re-reads and redoes its pass; it never copies a stale status over a fresh
  object). ``generation`` increases when the spec changes.
* ``delete`` of an object with finalizers only sets ``metadata.deletionTimestamp``;
  the object disappears when an ``update`` removes the last finalizer. Without
  finalizers it is removed at once. Deleting a missing object raises NotFound.
* ``watch`` yields a ``WatchEvent`` for every change of the given kinds after the call
  (ADDED, MODIFIED, DELETED), in order; ``stop`` ends it.
* ``emit_event`` records a core/v1-style Event about an object (``type`` Normal or
  Warning, ``reason``, ``message``); repeats of the same (object, type, reason,
  message) increase ``count`` and ``lastTimestamp`` instead of adding a row.
* ``read_secret`` returns a Secret's decoded data (``stringData`` over base64 ``data``)
  or raises NotFound naming the secret.
"""

from __future__ import annotations

import abc
import builtins
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

Obj = dict[str, Any]
EventType = Literal["ADDED", "MODIFIED", "DELETED"]

KINDS = ("Provider", "VirtualMachine", "VMMigration", "Secret")


@dataclass(frozen=True, order=True)
class ObjectKey:
    """What a reconcile request carries: only the identity, never the state."""

    kind: str
    namespace: str
    name: str

    @classmethod
    def of(cls, obj: Obj) -> ObjectKey:
        meta = obj["metadata"]
        return cls(obj["kind"], meta.get("namespace") or "default", meta["name"])

    def __str__(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}"


@dataclass(frozen=True)
class WatchEvent:
    type: EventType
    key: ObjectKey
    object: Obj


@dataclass(frozen=True)
class Event:
    """A recorded event about an object (the shape ``kubectl describe`` shows)."""

    involved: ObjectKey
    type: str  # Normal | Warning
    reason: str
    message: str
    count: int
    first_timestamp: str
    last_timestamp: str


class ObjectStore(abc.ABC):
    """The adapter interface (see the module docstring for the semantics)."""

    @abc.abstractmethod
    def get(self, kind: str, namespace: str, name: str) -> Obj:
        """The object, or raise errors.NotFound."""

    @abc.abstractmethod
    def list(
        self,
        kind: str,
        namespace: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> builtins.list[Obj]:
        """Objects of a kind (all namespaces when None), filtered by equality labels."""

    @abc.abstractmethod
    def create(self, obj: Obj) -> Obj:
        """Store a new object; returns it with server-set metadata."""

    @abc.abstractmethod
    def update(self, obj: Obj) -> Obj:
        """Write metadata and spec (optimistic on resourceVersion)."""

    @abc.abstractmethod
    def update_status(self, obj: Obj) -> Obj:
        """Write status only (optimistic on resourceVersion)."""

    @abc.abstractmethod
    def delete(self, kind: str, namespace: str, name: str) -> None:
        """Delete, or mark for deletion when finalizers remain."""

    @abc.abstractmethod
    def watch(self, kinds: tuple[str, ...], stop: threading.Event) -> Iterator[WatchEvent]:
        """Changes after the call, until ``stop`` is set."""

    @abc.abstractmethod
    def emit_event(self, obj: Obj, type: str, reason: str, message: str) -> None:
        """Record an event about ``obj``."""

    @abc.abstractmethod
    def events_for(self, kind: str, namespace: str, name: str) -> builtins.list[Event]:
        """Events about an object, oldest first."""

    @abc.abstractmethod
    def read_secret(self, namespace: str, name: str) -> dict[str, str]:
        """A Secret's decoded data, or raise errors.NotFound."""
