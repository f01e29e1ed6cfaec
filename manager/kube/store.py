"""``KubeStore``: the ``ObjectStore`` adapter over the Kubernetes API.

The controllers see the same semantics as with the embedded SQLite store (see
``manager.store.base``), because the API server has them natively; this adapter only
maps calls and errors:

* Provider / VirtualMachine / VMMigration are the ``infra.virtrigaud.io/v1beta1``
  custom resources (``providers``, ``virtualmachines``, ``vmmigrations``), Secrets are
  core/v1 Secrets (read by reference, decoded here).
* Writes are validated and defaulted through ``manager.api`` first (as the SQLite store
  does, and as the CRD schema would), so a malformed object is refused with an
  ``errors.ValidationError`` naming the field and nothing is sent.
* ``update`` PUTs the object with its ``resourceVersion`` (server-set fields other than
  that are dropped, so the server keeps its own); ``update_status`` PUTs the
  ``/status`` subresource. A stale version is ``409`` → ``errors.Conflict``: the
  controller re-reads and redoes its pass, never copying a stale status over a fresh
  object.
* ``delete`` of an object with finalizers only sets ``deletionTimestamp`` (the API
  server does that); removing the last finalizer with ``update`` lets it go.
* ``watch`` is list + watch with resume (``manager.kube.watch``); Events are core/v1
  Events (``manager.kube.events``).

``namespaces`` restricts the adapter to those namespaces (a namespaced manager: lists
and watches per namespace, writes elsewhere refused); by default it sees the whole
cluster.
"""

from __future__ import annotations

import builtins
import socket
import threading
from collections.abc import Iterator, Sequence

from kubernetes import client

from manager.kube.events import EventRecorder
from manager.kube.rest import KINDS, Kind, Rest
from manager.kube.watch import WATCH_SECONDS, MultiWatch, with_kind
from manager.store import objects
from manager.store.base import KINDS as STORE_KINDS
from manager.store.base import Event, Obj, ObjectKey, ObjectStore, WatchEvent
from virtrigaud import errors

# Fields the server owns; only resourceVersion is sent back (the optimistic lock).
_DROPPED_ON_WRITE = ("uid", "generation", "creationTimestamp", "deletionTimestamp")


def _describe(kind: str, namespace: str, name: str) -> str:
    return f"{kind} {namespace}/{name}"


def _kind(kind: str) -> Kind:
    objects.check_kind(kind)
    return KINDS[kind]


class KubeStore(ObjectStore):
    def __init__(
        self,
        api: client.ApiClient,
        *,
        namespaces: Sequence[str] = (),
        instance: str | None = None,
        watch_seconds: int = WATCH_SECONDS,
        timeout: float = 30.0,
    ) -> None:
        self.api = api
        self.namespaces = tuple(dict.fromkeys(namespaces))
        self.rest = Rest(api, timeout)
        self.watch_seconds = watch_seconds
        self.recorder = EventRecorder(self.rest, instance or socket.gethostname())
        self.watches: list[MultiWatch] = []
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            for watch in self.watches:
                watch.close()
            self.watches.clear()
        self.api.close()

    def __enter__(self) -> KubeStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _check_namespace(self, namespace: str) -> None:
        if self.namespaces and namespace not in self.namespaces:
            raise errors.PermissionDenied(
                f"namespace {namespace}: this manager only watches namespaces "
                f"{', '.join(self.namespaces)}"
            )

    def _scopes(self, namespace: str | None) -> tuple[str | None, ...]:
        if namespace is not None:
            return (namespace,)
        return self.namespaces or (None,)

    # -- reads --------------------------------------------------------------------------

    def get(self, kind: str, namespace: str, name: str) -> Obj:
        spec = _kind(kind)
        obj = self.rest.get(spec, namespace, name, _describe(kind, namespace, name))
        return with_kind(obj, spec)

    def list(
        self,
        kind: str,
        namespace: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> builtins.list[Obj]:
        spec = _kind(kind)
        selector = ",".join(f"{k}={v}" for k, v in sorted((labels or {}).items()))
        items = [
            with_kind(o, spec)
            for scope in self._scopes(namespace)
            for o in self.rest.list(spec, scope, labels=selector).get("items") or []
        ]
        items.sort(key=lambda o: (o["metadata"].get("namespace") or "", o["metadata"]["name"]))
        return items

    def watch(self, kinds: tuple[str, ...], stop: threading.Event) -> Iterator[WatchEvent]:
        scopes = [(_kind(kind), scope) for kind in kinds for scope in self._scopes(None)]
        watch = MultiWatch(self.rest, scopes, stop, self.watch_seconds)
        with self._lock:
            self.watches = [w for w in self.watches if not w._stopped()]
            self.watches.append(watch)
        return iter(watch)

    # -- writes -------------------------------------------------------------------------

    def create(self, obj: Obj) -> Obj:
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        if isinstance(meta, dict) and meta.get("resourceVersion"):
            raise errors.ValidationError(
                "metadata.resourceVersion", "must not be set on objects to be created"
            )
        body = objects.normalize(obj)
        spec = _kind(str(body.get("kind")))
        body.pop("status", None)  # the status subresource ignores it anyway
        namespace = objects.namespace_of(body)
        self._check_namespace(namespace)
        for field in objects.SERVER_FIELDS:
            body["metadata"].pop(field, None)
        body["metadata"]["namespace"] = namespace
        what = _describe(spec.kind, namespace, body["metadata"]["name"])
        return with_kind(self.rest.create(spec, namespace, body, what), spec)

    def _prepared(self, obj: Obj, *, status: bool) -> tuple[Kind, str, str, Obj]:
        namespace = objects.namespace_of(obj)
        spec = _kind(str(obj.get("kind")))
        name = str(obj["metadata"]["name"])
        version = obj["metadata"].get("resourceVersion")
        if not version:
            raise errors.ValidationError(
                "metadata.resourceVersion", "must be specified for an update"
            )
        candidate = dict(obj) if status else objects.without_status(obj)
        body = objects.normalize(candidate)
        for field in _DROPPED_ON_WRITE:
            body["metadata"].pop(field, None)
        body["metadata"]["namespace"] = namespace
        body["metadata"]["resourceVersion"] = str(version)
        return spec, namespace, name, body

    def update(self, obj: Obj) -> Obj:
        spec, namespace, name, body = self._prepared(obj, status=False)
        what = _describe(spec.kind, namespace, name)
        return with_kind(self.rest.replace(spec, namespace, name, body, what), spec)

    def update_status(self, obj: Obj) -> Obj:
        spec, namespace, name, body = self._prepared(obj, status=True)
        what = _describe(spec.kind, namespace, name) + " status"
        if not spec.status_subresource:
            raise errors.Unsupported(f"{what}: {spec.kind} has no status subresource")
        return with_kind(self.rest.replace(spec, namespace, name, body, what, status=True), spec)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        spec = _kind(kind)
        self.rest.delete(spec, namespace, name, _describe(kind, namespace, name))

    # -- events and secrets -------------------------------------------------------------

    def emit_event(self, obj: Obj, type: str, reason: str, message: str) -> None:
        self.recorder.emit(obj, type, reason, message)

    def events_for(self, kind: str, namespace: str, name: str) -> builtins.list[Event]:
        objects.check_kind(kind)
        try:
            current: str | None = str(self.get(kind, namespace, name)["metadata"].get("uid"))
        except errors.NotFound:
            current = None
        return self.recorder.events_for(ObjectKey(kind, namespace, name), current)

    def reachable(self) -> bool | str:
        """True when the API answers (for /readyz), else the reason."""
        try:
            self.rest.list(KINDS["Provider"], self._scopes(None)[0])
        except errors.VirtrigaudError as exc:
            return str(exc)
        return True

    def read_secret(self, namespace: str, name: str) -> dict[str, str]:
        try:
            found = self.rest.get(KINDS["Secret"], namespace, name, f"secret {namespace}/{name}")
        except errors.NotFound:
            raise errors.NotFound(f"secret {namespace}/{name} not found") from None
        return objects.decode_secret(found)


assert set(STORE_KINDS) <= set(KINDS)
