"""One controller: a reconciler, its work queue, its workers, its watches.

``Controller`` turns store changes into reconcile requests (``ObjectKey`` only):

* a watch thread follows ``store.watch`` for the controller's own kind (each event
  enqueues its key) and for the kinds of its extra ``Watch`` entries (a mapping
  function turns e.g. a VirtualMachine change into the VMMigration keys it concerns);
* on start, and every ``resync_period`` seconds, every object of the kind is queued
  (level-triggered: a missed event is healed by the next resync);
* ``workers`` threads take keys from the ``WorkQueue`` and call ``reconcile``: a
  ``Result(requeue_after=s)`` schedules the key again, ``errors.TransientError``
  (and unexpected exceptions, which are bugs) re-queue it with per-key exponential
  backoff, any other ``errors.VirtrigaudError`` is logged and not retried;
* ``stop`` ends the watch, lets running reconciles finish and joins the threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from manager.runtime.queue import Backoff, WorkQueue
from manager.runtime.types import Reconciler, Result
from manager.store.base import ObjectKey, ObjectStore, WatchEvent
from virtrigaud import errors
from virtrigaud.logging import get_logger

log = get_logger("virtrigaud.controller")

Mapper = Callable[[WatchEvent], Iterable[ObjectKey]]


@dataclass(frozen=True)
class Watch:
    """Wake the controller when objects of ``kind`` change: ``map`` names the keys."""

    kind: str
    map: Mapper


class Controller:
    def __init__(
        self,
        reconciler: Reconciler,
        store: ObjectStore,
        *,
        name: str | None = None,
        workers: int = 2,
        watches: Sequence[Watch] = (),
        resync_period: float = 300.0,
        backoff: Backoff[ObjectKey] | None = None,
    ) -> None:
        if workers < 1:
            raise errors.InvalidArgument("workers: must be at least 1")
        self.reconciler = reconciler
        self.kind = reconciler.kind
        self.name = name or f"{self.kind.lower()}-controller"
        self.store = store
        self.workers = workers
        self.watches = tuple(watches)
        self.resync_period = resync_period
        self.queue: WorkQueue[ObjectKey] = WorkQueue(backoff or Backoff(base=0.5, cap=60.0))
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._active = 0
        self._active_lock = threading.Lock()

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        if self._threads:
            raise errors.FailedPrecondition(f"{self.name} already started")
        self._spawn(self._watch_loop, "watch")
        self._spawn(self._resync_loop, "resync")
        for index in range(self.workers):
            self._spawn(self._worker_loop, f"worker-{index}")

    def _spawn(self, target: Callable[[], None], suffix: str) -> None:
        thread = threading.Thread(target=target, name=f"{self.name}-{suffix}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def request_stop(self) -> None:
        """Stop watching and taking new keys (returns at once)."""
        self._stop.set()
        self.queue.shutdown()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop watching and taking keys; running reconciles finish first."""
        self.request_stop()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            log.warning("controller_stop_timeout", controller=self.name, threads=alive)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def enqueue(self, key: ObjectKey) -> None:
        self.queue.add(key)

    def idle(self) -> bool:
        """Nothing queued, delayed or running (for tests and one-shot runs)."""
        with self._active_lock:
            return self._active == 0 and self.queue.pending() == 0

    # -- watch --------------------------------------------------------------------------

    def _kinds(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys([self.kind, *(w.kind for w in self.watches)]))

    def _enqueue_all(self) -> None:
        for obj in self.store.list(self.kind):
            self.queue.add(ObjectKey.of(obj))

    def _dispatch(self, event: WatchEvent) -> None:
        if event.key.kind == self.kind:
            self.queue.add(event.key)
        for watch in self.watches:
            if watch.kind != event.key.kind:
                continue
            try:
                for key in watch.map(event):
                    self.queue.add(key)
            except Exception:
                log.exception("watch_map_failed", controller=self.name, key=str(event.key))

    def _watch_loop(self) -> None:
        while not self._stop.is_set():
            try:
                events = self.store.watch(self._kinds(), self._stop)  # cursor taken now
                self._enqueue_all()
                for event in events:
                    self._dispatch(event)
                    if self._stop.is_set():
                        return
            except Exception:
                if self._stop.is_set():
                    return
                log.exception("watch_failed", controller=self.name)
                self._stop.wait(1.0)

    def _resync_loop(self) -> None:
        while not self._stop.wait(self.resync_period):
            try:
                self._enqueue_all()
            except Exception:
                log.exception("resync_failed", controller=self.name)

    # -- workers ------------------------------------------------------------------------

    def _worker_loop(self) -> None:
        while True:
            key = self.queue.get()
            if key is None:
                return
            with self._active_lock:
                self._active += 1
            try:
                self._process(key)
            finally:
                self.queue.done(key)
                with self._active_lock:
                    self._active -= 1

    def _process(self, key: ObjectKey) -> None:
        try:
            result = self.reconciler.reconcile(key)
        except errors.TransientError as exc:
            delay = self.queue.add_rate_limited(key)
            log.info(
                "reconcile_retry",
                controller=self.name,
                key=str(key),
                error=type(exc).__name__,
                message=exc.message,
                delay=round(delay, 2),
            )
            return
        except errors.VirtrigaudError as exc:
            self.queue.forget(key)
            log.error("reconcile_failed", controller=self.name, key=str(key), error=str(exc))
            return
        except Exception:
            delay = self.queue.add_rate_limited(key)
            log.exception("reconcile_crashed", controller=self.name, key=str(key), delay=delay)
            return
        self.queue.forget(key)
        if isinstance(result, Result) and result.requeue_after is not None:
            self.queue.add_after(key, result.requeue_after)
