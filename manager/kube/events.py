"""core/v1 Events about our objects, the way ``kubectl describe`` shows them.

An Event is named ``<object name>.<nanoseconds in hex>`` (as client-go's recorder
names them) in the object's namespace, with ``involvedObject`` (apiVersion, kind,
name, namespace, uid, resourceVersion), ``reason``, ``message``, ``type``,
``source.component``, ``reportingComponent`` / ``reportingInstance``, ``count``,
``firstTimestamp`` and ``lastTimestamp``. A repeat of the same (object uid, type,
reason, message) increases ``count`` and ``lastTimestamp`` of the existing Event
(found in a local cache, else by a field-selector list, so a new leader keeps
counting the previous one's events) instead of posting another.
"""

from __future__ import annotations

import builtins
import threading
import time

from manager.kube.rest import KINDS, Rest
from manager.store import objects
from manager.store.base import Event, Obj, ObjectKey
from virtrigaud import errors

EVENT_TYPES = ("Normal", "Warning")
COMPONENT = "virtrigaud-manager"
_EVENT = KINDS["Event"]
_SUFFIX_DIGITS = 16


def _order(event: Obj) -> tuple[str, int, str]:
    """firstTimestamp, then the nanosecond suffix of the name (creation order)."""
    name = str(event["metadata"].get("name") or "")
    _, _, suffix = name.rpartition(".")
    try:
        nanos = int(suffix, 16)
    except ValueError:
        nanos = 0
    return (str(event.get("firstTimestamp") or ""), nanos, name)


class EventRecorder:
    def __init__(self, rest: Rest, instance: str) -> None:
        self.rest = rest
        self.instance = instance
        self._lock = threading.Lock()
        self._names: dict[tuple[str, str, str, str, str], str] = {}

    def emit(self, obj: Obj, type_: str, reason: str, message: str) -> None:
        if type_ not in EVENT_TYPES:
            raise errors.InvalidArgument(f"event type {type_!r}: must be Normal or Warning")
        if not reason:
            raise errors.InvalidArgument("event reason: must not be empty")
        key = ObjectKey.of(obj)
        meta = obj.get("metadata") or {}
        uid = str(meta.get("uid") or "")
        cache_key = (key.kind, key.namespace, key.name + "/" + uid, type_, reason + "\0" + message)
        with self._lock:
            name = self._names.get(cache_key)
        if name is None:
            name = self._find(key, uid, type_, reason, message)
        if name is not None and self._bump(key.namespace, name):
            with self._lock:
                self._names[cache_key] = name
            return
        created = self._create(obj, key, uid, type_=type_, reason=reason, message=message)
        with self._lock:
            self._names[cache_key] = created

    def _find(self, key: ObjectKey, uid: str, type_: str, reason: str, message: str) -> str | None:
        fields = f"involvedObject.kind={key.kind},involvedObject.name={key.name},reason={reason}"
        if uid:
            fields += f",involvedObject.uid={uid}"
        found = self.rest.list(_EVENT, key.namespace, fields=fields, what="list events")
        for event in found.get("items") or []:
            if event.get("type") == type_ and event.get("message") == message:
                return str(event["metadata"]["name"])
        return None

    def _bump(self, namespace: str, name: str) -> bool:
        """count + 1 on an existing Event; False when it no longer exists."""
        what = f"event {namespace}/{name}"
        for _ in range(5):
            try:
                event = self.rest.get(_EVENT, namespace, name, what)
            except errors.NotFound:
                return False
            event["count"] = int(event.get("count") or 1) + 1
            event["lastTimestamp"] = objects.now_text()
            try:
                self.rest.replace(_EVENT, namespace, name, event, what)
                return True
            except errors.NotFound:
                return False
            except errors.Conflict:
                continue
        return False

    def _create(
        self, obj: Obj, key: ObjectKey, uid: str, *, type_: str, reason: str, message: str
    ) -> str:
        stamp = objects.now_text()
        name = f"{key.name}.{time.time_ns():0{_SUFFIX_DIGITS}x}"
        meta = obj.get("metadata") or {}
        involved = {
            "apiVersion": obj.get("apiVersion"),
            "kind": key.kind,
            "name": key.name,
            "namespace": key.namespace,
            "uid": uid,
            "resourceVersion": str(meta.get("resourceVersion") or ""),
        }
        body: Obj = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": key.namespace},
            "involvedObject": {k: v for k, v in involved.items() if v},
            "reason": reason,
            "message": message,
            "type": type_,
            "count": 1,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": self.instance,
        }
        self.rest.create(_EVENT, key.namespace, body, f"event {key.namespace}/{name}")
        return name

    def events_for(self, key: ObjectKey, current_uid: str | None) -> builtins.list[Event]:
        """Events about the object, oldest first; of its current uid when it exists."""
        fields = f"involvedObject.kind={key.kind},involvedObject.name={key.name}"
        found = self.rest.list(_EVENT, key.namespace, fields=fields, what="list events")
        items = [
            e
            for e in found.get("items") or []
            if current_uid is None
            or str((e.get("involvedObject") or {}).get("uid") or "") in (current_uid, "")
        ]
        return [
            Event(
                key,
                str(e.get("type") or ""),
                str(e.get("reason") or ""),
                str(e.get("message") or ""),
                int(e.get("count") or 1),
                str(e.get("firstTimestamp") or ""),
                str(e.get("lastTimestamp") or e.get("firstTimestamp") or ""),
            )
            for e in sorted(items, key=_order)
        ]
