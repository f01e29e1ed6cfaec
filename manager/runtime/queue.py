"""A work queue with the guarantees of client-go's workqueue.

* De-duplication: a key added while it waits is queued once.
* No concurrent processing: a key being processed (between ``get`` and ``done``) is
  never handed to a second worker; if it is added meanwhile it is marked dirty and
  queued again when ``done`` is called, so the change is not lost.
* Delays: ``add_after`` schedules a key; a key scheduled twice keeps the earlier time.
* Backoff: ``add_rate_limited`` delays a key exponentially by its failure count
  (``Backoff``), ``forget`` resets the count.
* ``shutdown`` wakes every waiting worker; ``get`` then returns None.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass
class Backoff(Generic[K]):
    """Per-key exponential delay: ``base * 2**failures``, capped at ``cap``."""

    base: float = 0.5
    cap: float = 60.0
    _failures: dict[K, int] = field(default_factory=dict)

    def next_delay(self, key: K) -> float:
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        return float(min(self.cap, self.base * (2.0 ** min(failures, 62))))

    def failures(self, key: K) -> int:
        return self._failures.get(key, 0)

    def forget(self, key: K) -> None:
        self._failures.pop(key, None)


class WorkQueue(Generic[K]):
    """See the module docstring. Thread-safe."""

    def __init__(self, backoff: Backoff[K] | None = None) -> None:
        self._cond = threading.Condition()
        self._queue: deque[K] = deque()
        self._dirty: set[K] = set()
        self._processing: set[K] = set()
        self._waiting: dict[K, float] = {}  # key -> monotonic ready time (earliest)
        self._heap: list[tuple[float, int, K]] = []
        self._tie = itertools.count()
        self._shutdown = False
        self.backoff: Backoff[K] = backoff or Backoff()

    # -- adding -------------------------------------------------------------------------

    def add(self, key: K) -> None:
        with self._cond:
            self._add_locked(key)

    def _add_locked(self, key: K) -> None:
        if self._shutdown or key in self._dirty:
            return
        self._dirty.add(key)
        if key in self._processing:
            return  # re-queued by done()
        self._queue.append(key)
        self._cond.notify()

    def add_after(self, key: K, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        ready = time.monotonic() + delay
        with self._cond:
            if self._shutdown:
                return
            current = self._waiting.get(key)
            if current is not None and current <= ready:
                return
            self._waiting[key] = ready
            heapq.heappush(self._heap, (ready, next(self._tie), key))
            self._cond.notify()

    def add_rate_limited(self, key: K) -> float:
        """Add after the key's next backoff delay; returns the delay."""
        with self._cond:
            delay = self.backoff.next_delay(key)
        self.add_after(key, delay)
        return delay

    def forget(self, key: K) -> None:
        with self._cond:
            self.backoff.forget(key)

    # -- taking -------------------------------------------------------------------------

    def _promote_due(self, now: float) -> float | None:
        """Move due delayed keys to the queue; seconds until the next one (or None)."""
        while self._heap:
            ready, _, key = self._heap[0]
            if self._waiting.get(key) != ready:
                heapq.heappop(self._heap)  # superseded by an earlier schedule
                continue
            if ready > now:
                return ready - now
            heapq.heappop(self._heap)
            del self._waiting[key]
            self._add_locked(key)
        return None

    def get(self, timeout: float | None = None) -> K | None:
        """The next key (now being processed), or None on shutdown / timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._shutdown:
                    return None
                wait = self._promote_due(time.monotonic())
                if self._queue:
                    key = self._queue.popleft()
                    self._dirty.discard(key)
                    self._processing.add(key)
                    return key
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return None
                    wait = left if wait is None else min(wait, left)
                self._cond.wait(wait)

    def done(self, key: K) -> None:
        """Processing of ``key`` finished; re-queue it if it was added meanwhile."""
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty and not self._shutdown:
                self._queue.append(key)
                self._cond.notify()

    # -- state --------------------------------------------------------------------------

    def shutdown(self) -> None:
        with self._cond:
            self._shutdown = True
            self._cond.notify_all()

    @property
    def is_shutdown(self) -> bool:
        with self._cond:
            return self._shutdown

    def __len__(self) -> int:
        """Keys ready to be processed (not counting delayed or in-flight ones)."""
        with self._cond:
            return len(self._queue)

    def pending(self) -> int:
        """Keys queued, delayed or being processed."""
        with self._cond:
            return len(self._queue) + len(self._waiting) + len(self._processing)
