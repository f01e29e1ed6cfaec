"""Watches over the store's change log (see ``schema``).

A watch remembers the last ``seq`` it delivered and reads newer rows in order. It
wakes up at once when a write of *this* process commits (a ``threading.Condition``
notified after every commit) and polls every ``poll_interval`` seconds otherwise, so
writes of another process that opened the same file are seen too.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from typing import cast

from manager.store.base import EventType, ObjectKey, WatchEvent
from virtrigaud.logging import get_logger

log = get_logger("virtrigaud.store")

BATCH = 500


class ChangeFeed:
    """In-process notification plus the change-log reader used by every watch."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        lock: threading.RLock,
        poll_interval: float,
        is_closed: Callable[[], bool],
    ) -> None:
        self._conn = conn
        self._lock = lock
        self._poll = poll_interval
        self._is_closed = is_closed
        self._changed = threading.Condition()
        self._local_writes = 0

    def notify(self) -> None:
        """Called after a write committed."""
        with self._changed:
            self._local_writes += 1
            self._changed.notify_all()

    def head(self) -> int:
        with self._lock:
            row = self._conn.execute("SELECT value FROM counter WHERE id = 1").fetchone()
        return int(row[0])

    def _read(self, after: int, kinds: tuple[str, ...]) -> list[tuple[int, str, str]]:
        marks = ",".join("?" for _ in kinds)
        with self._lock:
            if self._is_closed():
                return []
            rows = self._conn.execute(
                f"SELECT seq, type, body FROM changes WHERE seq > ? AND kind IN ({marks}) "  # noqa: S608 - only placeholders
                "ORDER BY seq LIMIT ?",
                (after, *kinds, BATCH),
            ).fetchall()
        return [(int(seq), str(kind), str(body)) for seq, kind, body in rows]

    def _oldest(self) -> int:
        with self._lock:
            row = self._conn.execute("SELECT MIN(seq) FROM changes").fetchone()
        return int(row[0] or 0)

    def watch(self, kinds: tuple[str, ...], stop: threading.Event) -> Iterator[WatchEvent]:
        """Events of ``kinds`` committed after this call (the cursor is taken now)."""
        cursor = self.head()
        return self._follow(cursor, kinds, stop)

    def _follow(
        self, cursor: int, kinds: tuple[str, ...], stop: threading.Event
    ) -> Iterator[WatchEvent]:
        while not stop.is_set() and not self._is_closed():
            with self._changed:
                seen = self._local_writes
            rows = self._read(cursor, kinds)
            if rows and cursor and rows[0][0] > cursor + 1 and self._oldest() > cursor + 1:
                log.warning("watch_fell_behind", cursor=cursor, oldest=self._oldest())
            for seq, type_, body in rows:
                cursor = seq
                obj = json.loads(body)
                yield WatchEvent(cast(EventType, type_), ObjectKey.of(obj), obj)
                if stop.is_set():
                    return
            if rows:
                continue
            with self._changed:
                if self._local_writes == seen:
                    self._changed.wait(self._poll)
