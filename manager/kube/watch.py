"""List + watch with resourceVersion resume, as client-go's reflector does it.

``Watcher`` follows one kind: it lists once (the cursor is that list's
``resourceVersion``, so "changes after the call" holds), then watches from the last
``resourceVersion`` it saw, reconnecting after each ``timeoutSeconds`` window or a
dropped connection. When the server answers ``410 Gone`` (the version fell out of its
history) it lists again and turns the difference with what it last knew into events
(ADDED / MODIFIED for new or changed objects, DELETED for vanished ones), so no change
is lost to a consumer even across compaction. BOOKMARK events only move the cursor.

``MultiWatch`` merges the watchers of several kinds into one iterator that ends when
its ``stop`` event is set (the live HTTP streams are shut down at once).
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

from manager.kube.rest import TRANSPORT_ERRORS, Kind, Rest, lines, translate
from manager.store.base import EventType, Obj, ObjectKey, WatchEvent
from virtrigaud import errors
from virtrigaud.logging import get_logger

log = get_logger("virtrigaud.kube.watch")

WATCH_SECONDS = 60
RETRY_MIN, RETRY_MAX = 0.5, 10.0


class Gone(Exception):
    """The watch's resourceVersion is too old (410): list again."""


def key_of(obj: Obj, kind: str) -> ObjectKey:
    meta = obj.get("metadata") or {}
    return ObjectKey(kind, str(meta.get("namespace") or "default"), str(meta.get("name")))


def with_kind(obj: Obj, kind: Kind) -> Obj:
    """List items of core kinds come without apiVersion/kind: put them back."""
    obj.setdefault("apiVersion", kind.api_version)
    obj.setdefault("kind", kind.kind)
    return obj


class Watcher:
    """One kind's list + watch loop (runs in its own thread)."""

    def __init__(
        self,
        rest: Rest,
        kind: Kind,
        namespace: str | None,
        *,
        emit: Callable[[WatchEvent], None],
        stopped: Callable[[], bool],
        watch_seconds: int = WATCH_SECONDS,
    ) -> None:
        self.rest = rest
        self.kind = kind
        self.namespace = namespace
        self.emit = emit
        self.stopped = stopped
        self.watch_seconds = watch_seconds
        self.known: dict[ObjectKey, Obj] = {}
        self.version = ""
        self.relists = 0
        self._response: Any = None
        self._lock = threading.Lock()
        self._wake = threading.Event()

    # -- list ---------------------------------------------------------------------------

    def prime(self) -> None:
        """The initial list: remember the objects and the cursor, emit nothing."""
        found = self.rest.list(self.kind, self.namespace)
        self.known = {
            key_of(o, self.kind.kind): with_kind(o, self.kind) for o in found.get("items") or []
        }
        self.version = str((found.get("metadata") or {}).get("resourceVersion") or "")

    def relist(self) -> None:
        """List again and emit the difference with what we knew (after 410 Gone)."""
        self.relists += 1
        found = self.rest.list(self.kind, self.namespace)
        fresh = {
            key_of(o, self.kind.kind): with_kind(o, self.kind) for o in found.get("items") or []
        }
        for key, obj in fresh.items():
            old = self.known.get(key)
            if old is None:
                self.emit(WatchEvent("ADDED", key, obj))
            elif (old.get("metadata") or {}).get("resourceVersion") != obj["metadata"].get(
                "resourceVersion"
            ):
                self.emit(WatchEvent("MODIFIED", key, obj))
        for key, obj in self.known.items():
            if key not in fresh:
                self.emit(WatchEvent("DELETED", key, obj))
        self.known = fresh
        self.version = str((found.get("metadata") or {}).get("resourceVersion") or "")
        log.info("watch_relisted", kind=self.kind.kind, version=self.version)

    # -- watch --------------------------------------------------------------------------

    def _handle(self, raw: bytes) -> None:
        event = json.loads(raw)
        type_ = str(event.get("type") or "")
        obj = event.get("object") or {}
        if type_ == "ERROR":
            if obj.get("code") == 410:
                raise Gone(str(obj.get("message") or "410 Gone"))
            raise errors.Unavailable(f"watch {self.kind.plural}: {obj.get('message') or obj}")
        version = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        if version:
            self.version = version
        if type_ not in ("ADDED", "MODIFIED", "DELETED"):
            return  # BOOKMARK: only the cursor moves
        obj = with_kind(obj, self.kind)
        key = key_of(obj, self.kind.kind)
        if type_ == "DELETED":
            self.known.pop(key, None)
        else:
            self.known[key] = obj
        self.emit(WatchEvent(cast(EventType, type_), key, obj))

    def _stream_once(self) -> int:
        """One watch request; the number of lines it delivered."""
        response = self.rest.watch(self.kind, self.namespace, self.version, self.watch_seconds)
        with self._lock:
            self._response = response
        count = 0
        try:
            if self.stopped():
                return count
            for raw in lines(response):
                count += 1
                self._handle(raw)
                if self.stopped():
                    return count
            return count
        finally:
            with self._lock:
                self._response = None
            with contextlib.suppress(Exception):
                response.release_conn()

    def run(self) -> None:
        delay = RETRY_MIN
        while not self.stopped():
            try:
                started = time.monotonic()
                if self._stream_once() or time.monotonic() - started > 1.0:
                    delay = RETRY_MIN
                else:  # a stream that ends at once, empty: do not spin
                    self._wake.wait(delay)
                    delay = min(RETRY_MAX, delay * 2)
            except Gone as exc:
                log.info("watch_gone", kind=self.kind.kind, version=self.version, reason=str(exc))
                self._relist_until_done()
            except (*TRANSPORT_ERRORS, errors.VirtrigaudError, ValueError) as exc:
                if self.stopped():
                    return
                if getattr(exc, "status", None) == 410:
                    self._relist_until_done()
                    continue
                failure = (
                    exc
                    if isinstance(exc, errors.VirtrigaudError)
                    else translate(exc, f"watch {self.kind.plural}")
                )
                log.warning("watch_retry", kind=self.kind.kind, error=str(failure), delay=delay)
                self._wake.wait(delay)
                delay = min(RETRY_MAX, delay * 2)

    def _relist_until_done(self) -> None:
        delay = RETRY_MIN
        while not self.stopped():
            try:
                self.relist()
                return
            except errors.VirtrigaudError as exc:
                log.warning("relist_retry", kind=self.kind.kind, error=str(exc), delay=delay)
                self._wake.wait(delay)
                delay = min(RETRY_MAX, delay * 2)

    def interrupt(self) -> None:
        """Shut the live stream down (another thread is blocked reading it)."""
        self._wake.set()
        with self._lock:
            response = self._response
        if response is not None:
            with contextlib.suppress(Exception):
                shutdown = getattr(response, "shutdown", None) or response.close
                shutdown()


class MultiWatch:
    """The events of several kinds, merged, until ``stop`` is set."""

    def __init__(
        self,
        rest: Rest,
        scopes: list[tuple[Kind, str | None]],
        stop: threading.Event,
        watch_seconds: int = WATCH_SECONDS,
    ) -> None:
        self._queue: queue.Queue[WatchEvent] = queue.Queue()
        self._stop = stop
        self._done = threading.Event()
        self.watchers = [
            Watcher(
                rest,
                kind,
                namespace,
                emit=self._queue.put,
                stopped=self._stopped,
                watch_seconds=watch_seconds,
            )
            for kind, namespace in scopes
        ]
        for watcher in self.watchers:
            watcher.prime()  # the cursor is taken now, before the iterator is consumed
        self._threads = [
            threading.Thread(target=w.run, name=f"watch-{w.kind.plural}", daemon=True)
            for w in self.watchers
        ]
        for thread in self._threads:
            thread.start()
        self._closer = threading.Thread(target=self._close_on_stop, daemon=True)
        self._closer.start()

    def _stopped(self) -> bool:
        return self._stop.is_set() or self._done.is_set()

    def _close_on_stop(self) -> None:
        while not self._stop.wait(0.5):
            if self._done.is_set():
                break
        self.close()

    def close(self) -> None:
        self._done.set()
        for watcher in self.watchers:
            watcher.interrupt()

    def __iter__(self) -> Iterator[WatchEvent]:
        try:
            while not self._stopped():
                try:
                    event = self._queue.get(timeout=0.2)
                except queue.Empty:
                    continue
                yield event
        finally:
            self.close()
