"""WorkQueue: de-duplication, no concurrent processing, delays, backoff, shutdown."""

from __future__ import annotations

import threading

from manager.runtime.queue import Backoff, WorkQueue


def test_a_key_added_twice_is_processed_once() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add("a")
    queue.add("b")
    queue.add("a")
    assert len(queue) == 2
    assert queue.get(timeout=1) == "a"
    assert queue.get(timeout=1) == "b"
    assert queue.get(timeout=0) is None


def test_a_key_being_processed_is_not_handed_out_again_until_done() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add("a")
    assert queue.get(timeout=1) == "a"
    queue.add("a")  # changed while processing
    queue.add("a")
    assert queue.get(timeout=0.05) is None  # a second worker must not get it
    queue.done("a")
    assert queue.get(timeout=1) == "a"  # re-queued once, because it changed
    queue.done("a")
    assert queue.get(timeout=0.05) is None


def test_done_without_a_change_does_not_requeue() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add("a")
    assert queue.get(timeout=1) == "a"
    queue.done("a")
    assert queue.pending() == 0


def test_two_workers_never_hold_the_same_key() -> None:
    queue: WorkQueue[int] = WorkQueue()
    holding: dict[int, int] = {}
    lock = threading.Lock()
    violations: list[int] = []
    processed: list[int] = []

    def worker() -> None:
        while (key := queue.get(timeout=0.5)) is not None:
            with lock:
                holding[key] = holding.get(key, 0) + 1
                if holding[key] > 1:
                    violations.append(key)
            if len(processed) < 300:
                queue.add(key)  # changed while being held
            with lock:
                processed.append(key)
                holding[key] -= 1
            queue.done(key)

    for key in range(3):
        queue.add(key)
    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert violations == []
    assert len(processed) >= 300


def test_add_after_delays_and_the_earlier_schedule_wins() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add_after("late", 3600)
    assert queue.get(timeout=0) is None
    queue.add_after("late", 0.05)  # earlier: replaces the hour
    queue.add_after("late", 7200)  # later: ignored
    assert queue.get(timeout=10) == "late"
    queue.done("late")
    assert queue.pending() == 0  # the superseded schedules are gone


def test_a_delayed_key_that_is_also_added_now_is_processed_now() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add_after("a", 3600)
    queue.add("a")
    assert queue.get(timeout=1) == "a"


def test_backoff_doubles_per_key_up_to_the_cap_and_forget_resets() -> None:
    backoff: Backoff[str] = Backoff(base=0.5, cap=5.0)
    assert [backoff.next_delay("a") for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert backoff.next_delay("b") == 0.5  # per key
    assert backoff.failures("a") == 6
    backoff.forget("a")
    assert backoff.failures("a") == 0
    assert backoff.next_delay("a") == 0.5


def test_add_rate_limited_uses_the_backoff() -> None:
    queue: WorkQueue[str] = WorkQueue(Backoff(base=0.01, cap=0.04))
    delays = [queue.add_rate_limited("a") for _ in range(4)]
    assert delays == [0.01, 0.02, 0.04, 0.04]
    assert queue.get(timeout=10) == "a"
    queue.forget("a")
    assert queue.backoff.failures("a") == 0


def test_shutdown_wakes_waiting_workers() -> None:
    queue: WorkQueue[str] = WorkQueue()
    results: list[str | None] = []
    thread = threading.Thread(target=lambda: results.append(queue.get()))
    thread.start()
    queue.shutdown()
    thread.join(10)
    assert results == [None]
    queue.add("a")
    assert queue.get(timeout=0) is None
