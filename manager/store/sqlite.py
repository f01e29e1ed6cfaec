"""The embedded object store of one-machine mode: one SQLite file.

Implements ``base.ObjectStore`` with the Kubernetes API's semantics (see the ``base``
docstring): uid / resourceVersion / generation / creationTimestamp set by the store,
the spec/status split, optimistic concurrency (``errors.Conflict``), finalizers with
``deletionTimestamp``, equality label selectors, de-duplicated Events, Secrets whose
``stringData`` is folded into ``data`` on write, and watches.

Like the API server, the store validates and defaults every object through
``manager.api`` before writing (a malformed object raises ``errors.ValidationError``
naming the field and nothing is stored) and ignores ``status`` on create and update
(only ``update_status`` writes it).

Concurrency: one connection guarded by a lock serves all threads; writes are
``BEGIN IMMEDIATE`` transactions, so several processes may open the same file (WAL,
busy timeout) and still never interleave a read-check-write. Watches tail the change
log (``feed``), which sees other processes' writes too.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from manager.store import objects
from manager.store.base import Event, Obj, ObjectKey, ObjectStore, WatchEvent
from manager.store.feed import ChangeFeed
from manager.store.schema import connect
from virtrigaud import errors

EVENT_TYPES = ("Normal", "Warning")
PRUNE_EVERY = 1000


def _dumps(obj: Obj) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _describe(kind: str, namespace: str, name: str) -> str:
    return f"{kind} {namespace}/{name}"


class SQLiteStore(ObjectStore):
    """``ObjectStore`` over one SQLite file (``":memory:"`` works within one process)."""

    def __init__(
        self, path: str | Path, poll_interval: float = 0.2, keep_changes: int = 20_000
    ) -> None:
        self.path = str(path)
        self._lock = threading.RLock()
        self._closed = False
        self._conn = connect(path)
        self._keep = keep_changes
        self._writes = 0
        self._feed = ChangeFeed(self._conn, self._lock, poll_interval, lambda: self._closed)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- plumbing -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """An exclusive write transaction; watchers are notified after the commit."""
        with self._lock:
            if self._closed:
                raise errors.FailedPrecondition(f"store {self.path} is closed")
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._maybe_prune()
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        self._feed.notify()

    def _maybe_prune(self) -> None:
        self._writes += 1
        if self._writes % PRUNE_EVERY == 0:
            self._conn.execute(
                "DELETE FROM changes WHERE seq <= (SELECT value FROM counter WHERE id = 1) - ?",
                (self._keep,),
            )

    def _row(self, kind: str, namespace: str, name: str) -> Obj | None:
        row = self._conn.execute(
            "SELECT body FROM objects WHERE kind = ? AND namespace = ? AND name = ?",
            (kind, namespace, name),
        ).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def _stored(self, kind: str, namespace: str, name: str) -> Obj:
        found = self._row(kind, namespace, name)
        if found is None:
            raise errors.NotFound(f"{_describe(kind, namespace, name)} not found")
        return found

    def _next_rv(self) -> int:
        row = self._conn.execute(
            "UPDATE counter SET value = value + 1 WHERE id = 1 RETURNING value"
        ).fetchone()
        return int(row[0])

    def _record(self, type_: str, obj: Obj, rv: int) -> None:
        """Write (or remove, for DELETED) the object and append the change."""
        key = ObjectKey.of(obj)
        obj["metadata"]["resourceVersion"] = str(rv)
        body = _dumps(obj)
        if type_ == "DELETED":
            self._conn.execute(
                "DELETE FROM objects WHERE kind = ? AND namespace = ? AND name = ?",
                (key.kind, key.namespace, key.name),
            )
        else:
            self._conn.execute(
                "INSERT OR REPLACE INTO objects (kind, namespace, name, body) VALUES (?,?,?,?)",
                (key.kind, key.namespace, key.name, body),
            )
        self._conn.execute(
            "INSERT INTO changes (seq, type, kind, namespace, name, body) VALUES (?,?,?,?,?,?)",
            (rv, type_, key.kind, key.namespace, key.name, body),
        )

    @staticmethod
    def _check_version(given: Any, stored: Obj, what: str) -> None:
        if not given:
            raise errors.ValidationError(
                "metadata.resourceVersion", "must be specified for an update"
            )
        current = stored["metadata"]["resourceVersion"]
        if str(given) != current:
            raise errors.Conflict(
                f"{what}: the object has been modified (resourceVersion {given} is stale, "
                f"the stored one is {current}); re-read it and try again"
            )

    # -- reads --------------------------------------------------------------------------

    def get(self, kind: str, namespace: str, name: str) -> Obj:
        objects.check_kind(kind)
        with self._lock:
            return self._stored(kind, namespace, name)

    def list(
        self,
        kind: str,
        namespace: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> builtins.list[Obj]:
        objects.check_kind(kind)
        query = "SELECT body FROM objects WHERE kind = ?"
        params: tuple[str, ...] = (kind,)
        if namespace is not None:
            query += " AND namespace = ?"
            params += (namespace,)
        with self._lock:
            rows = self._conn.execute(query + " ORDER BY namespace, name", params).fetchall()
        found = [dict(json.loads(row[0])) for row in rows]
        return [obj for obj in found if objects.labels_match(obj, labels)]

    def watch(self, kinds: tuple[str, ...], stop: threading.Event) -> Iterator[WatchEvent]:
        for kind in kinds:
            objects.check_kind(kind)
        return self._feed.watch(tuple(kinds), stop)

    # -- writes -------------------------------------------------------------------------

    def create(self, obj: Obj) -> Obj:
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        if isinstance(meta, dict) and meta.get("resourceVersion"):
            raise errors.ValidationError(
                "metadata.resourceVersion", "must not be set on objects to be created"
            )
        body = objects.fold_string_data(objects.normalize(obj))
        body.pop("status", None)  # as for a CRD with the status subresource
        namespace = objects.namespace_of(body)
        meta = body["metadata"]
        for field in objects.SERVER_FIELDS:
            meta.pop(field, None)
        meta["namespace"] = namespace
        key = ObjectKey.of(body)
        with self._tx():
            if self._row(key.kind, key.namespace, key.name) is not None:
                raise errors.AlreadyExists(
                    f"{_describe(key.kind, key.namespace, key.name)} already exists"
                )
            meta["uid"] = str(uuid.uuid4())
            meta["generation"] = 1
            meta["creationTimestamp"] = objects.now_text()
            self._record("ADDED", body, self._next_rv())
        return body

    def update(self, obj: Obj) -> Obj:
        namespace = objects.namespace_of(obj)
        key = ObjectKey(str(obj.get("kind")), namespace, obj["metadata"]["name"])
        objects.check_kind(key.kind)
        with self._tx():
            stored = self._stored(key.kind, key.namespace, key.name)
            self._check_version(obj["metadata"].get("resourceVersion"), stored, str(key))
            candidate = objects.without_status(obj)
            if "status" in stored:
                candidate["status"] = stored["status"]
            new = objects.fold_string_data(objects.normalize(candidate))
            meta = new["metadata"]
            meta["namespace"] = namespace
            for field in objects.SERVER_FIELDS:
                if field in stored["metadata"]:
                    meta[field] = stored["metadata"][field]
                else:
                    meta.pop(field, None)
            if objects.spec_of(new) != objects.spec_of(stored):
                meta["generation"] = int(meta.get("generation") or 0) + 1
            if new == stored:
                return stored
            gone = bool(meta.get("deletionTimestamp")) and not meta.get("finalizers")
            self._record("DELETED" if gone else "MODIFIED", new, self._next_rv())
        return new

    def update_status(self, obj: Obj) -> Obj:
        namespace = objects.namespace_of(obj)
        key = ObjectKey(str(obj.get("kind")), namespace, obj["metadata"]["name"])
        objects.check_kind(key.kind)
        with self._tx():
            stored = self._stored(key.kind, key.namespace, key.name)
            self._check_version(obj["metadata"].get("resourceVersion"), stored, str(key))
            candidate = objects.without_status(stored)
            if obj.get("status") is not None:
                candidate["status"] = obj["status"]
            new = objects.normalize(candidate)
            new["metadata"] = stored["metadata"]
            if new == stored:
                return stored
            self._record("MODIFIED", new, self._next_rv())
        return new

    def delete(self, kind: str, namespace: str, name: str) -> None:
        objects.check_kind(kind)
        with self._tx():
            stored = self._stored(kind, namespace, name)
            meta = stored["metadata"]
            if not meta.get("finalizers"):
                self._record("DELETED", stored, self._next_rv())
                return
            if meta.get("deletionTimestamp"):
                return
            meta["deletionTimestamp"] = objects.now_text()
            meta["generation"] = int(meta.get("generation") or 0) + 1
            self._record("MODIFIED", stored, self._next_rv())

    # -- events and secrets -------------------------------------------------------------

    def emit_event(self, obj: Obj, type: str, reason: str, message: str) -> None:
        if type not in EVENT_TYPES:
            raise errors.InvalidArgument(f"event type {type!r}: must be Normal or Warning")
        if not reason:
            raise errors.InvalidArgument("event reason: must not be empty")
        key = ObjectKey.of(obj)
        uid = str((obj.get("metadata") or {}).get("uid") or "")
        stamp = objects.now_text()
        source = f"{key.kind.lower()}-controller"
        with self._lock:
            if self._closed:
                raise errors.FailedPrecondition(f"store {self.path} is closed")
            self._conn.execute(
                "INSERT INTO events (kind, namespace, name, uid, type, reason, message, source,"
                " count, first_timestamp, last_timestamp) VALUES (?,?,?,?,?,?,?,?,1,?,?)"
                " ON CONFLICT (kind, namespace, name, uid, type, reason, message)"
                " DO UPDATE SET count = count + 1, last_timestamp = excluded.last_timestamp",
                (
                    key.kind,
                    key.namespace,
                    key.name,
                    uid,
                    type,
                    reason,
                    message,
                    source,
                    *(stamp,) * 2,
                ),
            )

    def events_for(self, kind: str, namespace: str, name: str) -> builtins.list[Event]:
        """Events about the object; when it exists, only those about its current uid."""
        objects.check_kind(kind)
        query = (
            "SELECT type, reason, message, count, first_timestamp, last_timestamp FROM events"
            " WHERE kind = ? AND namespace = ? AND name = ?"
        )
        params: tuple[str, ...] = (kind, namespace, name)
        with self._lock:
            current = self._row(kind, namespace, name)
            if current is not None:
                query += " AND uid IN (?, '')"
                params += (str(current["metadata"].get("uid") or ""),)
            rows = self._conn.execute(query + " ORDER BY first_timestamp, id", params).fetchall()
        key = ObjectKey(kind, namespace, name)
        return [
            Event(key, str(t), str(r), str(m), int(c), str(first), str(last))
            for t, r, m, c, first, last in rows
        ]

    def read_secret(self, namespace: str, name: str) -> dict[str, str]:
        with self._lock:
            found = self._row("Secret", namespace, name)
        if found is None:
            raise errors.NotFound(f"secret {namespace}/{name} not found")
        return objects.decode_secret(found)
