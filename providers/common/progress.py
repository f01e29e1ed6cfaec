"""One task's progress across several stages that each count their own bytes.

A provider's ExportDisk typically reads the disk from its hypervisor (a libvirt stream,
a datastore download) and then hands the copy to the shared pipeline, which converts
and uploads it; ImportDisk downloads (and converts) through the pipeline, then writes
and verifies the hypervisor volume. Each stage reports
``(done, total)`` of its own, starting again at 0. ``StagedContext`` turns that into
one count for the task:

* ``bytes_done`` = the bytes of every finished stage + the current stage's done; it
  never goes backwards (WatchTask observers see a monotonic count);
* ``bytes_total`` = the bytes of every finished stage + the current stage's total, so
  it grows as later stages begin and learn their size (the percentage is of the work
  known so far).

It satisfies ``providers.runtime.tasks.Progress`` (what ``providers.common.transfer``
takes) and delegates stage names and cancellation to the task's own context.
"""

from __future__ import annotations

import threading

from providers.runtime.tasks import Progress


class StagedContext:
    """A view of ``parent`` whose progress adds up over stages (module docstring)."""

    def __init__(self, parent: Progress) -> None:
        self._parent = parent
        self._lock = threading.Lock()
        self._base = 0  # bytes of the finished stages
        self._done = 0  # of the current stage
        self._total = 0  # of the current stage (0 = unknown)

    @property
    def cancel_event(self) -> threading.Event:
        return self._parent.cancel_event

    def cancelled(self) -> bool:
        return self._parent.cancelled()

    def check_cancelled(self) -> None:
        self._parent.check_cancelled()

    def set_stage(self, stage: str) -> None:
        """Start a new stage: what the current one counted becomes the base."""
        with self._lock:
            self._base += max(self._done, self._total)
            self._done = self._total = 0
        self._parent.set_stage(stage)

    def progress(self, done: int, total: int | None = None) -> None:
        with self._lock:
            if total is not None:
                self._total = max(total, 0)
            self._done = max(self._done, done)
            overall_done = self._base + self._done
            overall_total = self._base + max(self._total, self._done)
        self._parent.progress(overall_done, overall_total)
