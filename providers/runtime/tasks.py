"""The task registry: long provider operations run in the background.

A mutating RPC never does its work inline. It registers a task keyed by the caller's
``operation_id`` and returns at once; a bounded worker pool runs the work function,
which reports progress and checks for cancellation through a ``TaskContext``. Tasks
belong to the provider process, not to the gRPC call, so they survive a client
disconnect; the manager finds them again with GetTask.

Idempotency: the same operation_id always returns the same task (whatever its state),
and reusing an operation_id for a different request is refused, so a retried RPC can
never start a second export. A provider restart forgets its tasks: GetTask then answers
NOT_FOUND and the caller re-submits (the storage layer makes re-submitted transfers
resume rather than restart).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from google.protobuf import message as _message
from google.protobuf.timestamp_pb2 import Timestamp

from virtrigaud import errors
from virtrigaud.logging import get_logger
from virtrigaud.provider.v1 import provider_pb2 as pb

log = get_logger("virtrigaud.tasks")

TERMINAL_STATES = frozenset(
    {pb.TASK_STATE_SUCCEEDED, pb.TASK_STATE_FAILED, pb.TASK_STATE_CANCELLED}
)

# Which Task.result field each result message goes into.
_RESULT_FIELDS: dict[type[_message.Message], str] = {
    pb.ExportResult: "export_result",
    pb.ImportResult: "import_result",
    pb.CreateVMResult: "create_vm_result",
    pb.SnapshotResult: "snapshot_result",
}

TaskResult = pb.ExportResult | pb.ImportResult | pb.CreateVMResult | pb.SnapshotResult | None
WorkFn = Callable[["TaskContext"], TaskResult]

RATE_WINDOW_SECONDS = 5.0


def _now() -> Timestamp:
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


@dataclass
class _Record:
    """Mutable state of one task; guarded by the registry's condition."""

    task: pb.Task
    fingerprint: bytes
    cancel: threading.Event = field(default_factory=threading.Event)
    version: int = 0
    samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=64))
    finished_at: float | None = None


class Progress(Protocol):
    """What long operations need from their task: progress, stage and cancellation.

    ``TaskContext`` is one; ``providers.common.progress.StagedContext`` is a view of
    one that adds up several stages. Shared code (transfer, pipeline callers) takes
    this protocol, not the concrete class.
    """

    @property
    def cancel_event(self) -> threading.Event: ...

    def cancelled(self) -> bool: ...

    def check_cancelled(self) -> None: ...

    def set_stage(self, stage: str) -> None: ...

    def progress(self, done: int, total: int | None = None) -> None: ...


class TaskContext:
    """Handed to a work function: progress, stage and cancellation of its task."""

    def __init__(self, registry: TaskRegistry, record: _Record) -> None:
        self._registry = registry
        self._record = record

    @property
    def task_id(self) -> str:
        return self._record.task.id

    @property
    def cancel_event(self) -> threading.Event:
        """Set when the task should stop; pass it to blocking helpers (qemu-img, copies)."""
        return self._record.cancel

    def cancelled(self) -> bool:
        return self._record.cancel.is_set()

    def check_cancelled(self) -> None:
        """Raise ``errors.Cancelled`` at a safe point if cancellation was requested."""
        if self._record.cancel.is_set():
            raise errors.Cancelled("task cancelled")

    def set_stage(self, stage: str) -> None:
        self._registry._update(self._record, stage=stage)

    def progress(self, done: int, total: int | None = None) -> None:
        """Report bytes done (and the total when known or changed)."""
        self._registry._update(self._record, done=done, total=total)


class TaskRegistry:
    """Runs tasks on a bounded pool and answers queries about them."""

    def __init__(
        self,
        max_workers: int = 4,
        retention_seconds: float = 24 * 3600,
        max_finished: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_workers = max_workers
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="task")
        self._cond = threading.Condition()
        self._by_id: dict[str, _Record] = {}
        self._by_operation: dict[str, _Record] = {}
        self._retention = retention_seconds
        self._max_finished = max_finished
        self._clock = clock
        self._accepting = True

    # -- submission ---------------------------------------------------------------

    def submit(
        self,
        kind: int,
        operation_id: str,
        fingerprint: bytes,
        work: WorkFn,
        *,
        vm_id: str = "",
        disk_id: str = "",
    ) -> pb.Task:
        """Start ``work`` as a task, or return the task this operation_id already has."""
        if not operation_id:
            raise errors.InvalidArgument("operation_id: required for every mutating call")
        with self._cond:
            existing = self._by_operation.get(operation_id)
            if existing is not None:
                if existing.fingerprint != fingerprint or existing.task.kind != kind:
                    raise errors.InvalidArgument(
                        f"operation_id: {operation_id!r} was already used for a different "
                        f"request (task {existing.task.id})"
                    )
                return self._snapshot(existing)
            if not self._accepting:
                raise errors.Unavailable("provider is shutting down; retry on another replica")
            self._expire_locked()
            now = _now()
            task = pb.Task(
                id=f"task-{uuid.uuid4().hex[:16]}",
                operation_id=operation_id,
                kind=kind,  # type: ignore[arg-type]
                state=pb.TASK_STATE_PENDING,
                stage="queued",
                create_time=now,
                update_time=now,
                vm_id=vm_id,
                disk_id=disk_id,
            )
            record = _Record(task=task, fingerprint=fingerprint)
            self._by_id[task.id] = record
            self._by_operation[operation_id] = record
            snapshot = self._snapshot(record)
        self._pool.submit(self._run, record, work)
        log.info(
            "task_submitted",
            task_id=task.id,
            operation_id=operation_id,
            kind=pb.TaskKind.Name(kind),
            vm_id=vm_id,
            disk_id=disk_id,
        )
        return snapshot

    def _run(self, record: _Record, work: WorkFn) -> None:
        ctx = TaskContext(self, record)
        if record.cancel.is_set():
            self._finish(record, error=errors.Cancelled("task cancelled before it started"))
            return
        self._update(record, state=pb.TASK_STATE_RUNNING, stage="running")
        try:
            result = work(ctx)
        except BaseException as exc:
            if not isinstance(exc, errors.VirtrigaudError):
                log.exception("task_crashed", task_id=record.task.id)
            self._finish(record, error=exc)
            return
        if record.cancel.is_set():
            # The work reached its end although cancellation was requested; its
            # result stands (it is complete), so report success.
            log.info("task_finished_despite_cancel", task_id=record.task.id)
        self._finish(record, result=result)

    # -- state changes (called with the lock NOT held) -----------------------------

    def _update(
        self,
        record: _Record,
        *,
        state: int | None = None,
        stage: str | None = None,
        done: int | None = None,
        total: int | None = None,
    ) -> None:
        with self._cond:
            task = record.task
            if task.state in TERMINAL_STATES:
                return
            if state is not None:
                task.state = state  # type: ignore[assignment]
            if stage is not None:
                task.stage = stage
            if total is not None:
                task.bytes_total = max(total, 0)
            if done is not None:
                task.bytes_done = max(done, 0)
                now = self._clock()
                record.samples.append((now, task.bytes_done))
                task.bytes_per_second = _rate(record.samples, now)
            if task.bytes_total > 0:
                task.percent = min(100.0, 100.0 * task.bytes_done / task.bytes_total)
            task.update_time.CopyFrom(_now())
            record.version += 1
            self._cond.notify_all()

    def _finish(
        self, record: _Record, *, result: TaskResult = None, error: BaseException | None = None
    ) -> None:
        with self._cond:
            task = record.task
            now = _now()
            if error is None:
                task.state = pb.TASK_STATE_SUCCEEDED
                task.stage = "done"
                if task.bytes_total > 0:
                    task.bytes_done = task.bytes_total
                task.percent = 100.0
                if result is not None:
                    getattr(task, _RESULT_FIELDS[type(result)]).CopyFrom(result)
            else:
                cancelled = isinstance(error, errors.Cancelled)
                task.state = pb.TASK_STATE_CANCELLED if cancelled else pb.TASK_STATE_FAILED
                task.stage = "cancelled" if cancelled else "failed"
                task.error.CopyFrom(errors.to_task_error(error))
            task.bytes_per_second = 0.0
            task.update_time.CopyFrom(now)
            task.finish_time.CopyFrom(now)
            record.finished_at = self._clock()
            record.version += 1
            self._cond.notify_all()
            final = self._snapshot(record)
        log.info(
            "task_finished",
            task_id=final.id,
            state=pb.TaskState.Name(final.state),
            error=final.error.message if final.HasField("error") else None,
        )

    # -- queries ------------------------------------------------------------------

    def _record(self, task_id: str) -> _Record:
        record = self._by_id.get(task_id)
        if record is None:
            raise errors.NotFound(f"task {task_id!r} not found (unknown or expired)")
        return record

    @staticmethod
    def _snapshot(record: _Record) -> pb.Task:
        copy = pb.Task()
        copy.CopyFrom(record.task)
        return copy

    def get(self, task_id: str) -> pb.Task:
        with self._cond:
            return self._snapshot(self._record(task_id))

    def cancel(self, task_id: str) -> pb.Task:
        """Request cancellation; the work stops at its next safe point."""
        with self._cond:
            record = self._record(task_id)
            if record.task.state not in TERMINAL_STATES:
                record.cancel.set()
                record.task.stage = "cancelling"
                record.version += 1
                self._cond.notify_all()
                log.info("task_cancel_requested", task_id=task_id)
            return self._snapshot(record)

    def watch(
        self,
        task_id: str,
        is_active: Callable[[], bool] = lambda: True,
        min_interval: float = 0.25,
        heartbeat: float = 10.0,
    ) -> Iterator[pb.Task]:
        """Yield the task now and after each change, ending after a terminal state.

        Progress-only changes are coalesced to at most one message per
        ``min_interval``; state changes are sent at once. ``is_active`` lets the
        caller stop (e.g. the client went away).
        """
        with self._cond:
            record = self._record(task_id)
            seen = record.version
            last_state = record.task.state
            snapshot = self._snapshot(record)
        yield snapshot
        last_sent = self._clock()
        while snapshot.state not in TERMINAL_STATES and is_active():
            with self._cond:
                self._wait_change(
                    record,
                    seen=seen,
                    state=last_state,
                    last_sent=last_sent,
                    min_interval=min_interval,
                    heartbeat=heartbeat,
                )
                seen = record.version
                last_state = record.task.state
                snapshot = self._snapshot(record)
            last_sent = self._clock()
            yield snapshot

    def _wait_change(
        self,
        record: _Record,
        *,
        seen: int,
        state: int,
        last_sent: float,
        min_interval: float,
        heartbeat: float,
    ) -> None:
        """With the lock held: wait for a change, holding back progress-only ones."""
        self._cond.wait_for(lambda: record.version != seen, timeout=heartbeat)
        if record.task.state == state and record.version != seen:
            wait_more = min_interval - (self._clock() - last_sent)
            if wait_more > 0:
                self._cond.wait_for(lambda: record.task.state != state, timeout=wait_more)

    def running_count(self) -> int:
        with self._cond:
            return sum(1 for r in self._by_id.values() if r.task.state not in TERMINAL_STATES)

    # -- lifecycle ----------------------------------------------------------------

    def shutdown(self, grace: float) -> None:
        """Stop accepting; give running tasks ``grace`` seconds, then cancel them.

        Cancelled work stops at its next safe point and cleans up after itself (the
        work functions own their cleanup), so nothing half-written is left behind.
        """
        with self._cond:
            self._accepting = False
            self._cond.wait_for(
                lambda: all(r.task.state in TERMINAL_STATES for r in self._by_id.values()),
                timeout=grace,
            )
            pending = [r for r in self._by_id.values() if r.task.state not in TERMINAL_STATES]
            for record in pending:
                record.cancel.set()
            self._cond.notify_all()
        if pending:
            log.warning("tasks_cancelled_for_shutdown", count=len(pending))
        self._pool.shutdown(wait=True, cancel_futures=False)

    def _expire_locked(self) -> None:
        now = self._clock()
        finished = sorted(
            (r for r in self._by_id.values() if r.finished_at is not None),
            key=lambda r: r.finished_at or 0.0,
        )
        excess = max(0, len(finished) - self._max_finished)
        for index, record in enumerate(finished):
            expired = now - (record.finished_at or now) > self._retention
            if index < excess or expired:
                self._by_id.pop(record.task.id, None)
                self._by_operation.pop(record.task.operation_id, None)


def _rate(samples: deque[tuple[float, int]], now: float) -> float:
    """Bytes per second over the recent window of progress samples."""
    while len(samples) > 2 and now - samples[0][0] > RATE_WINDOW_SECONDS:
        samples.popleft()
    if len(samples) < 2:
        return 0.0
    (t0, b0), (t1, b1) = samples[0], samples[-1]
    return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0


def fingerprint(request: _message.Message) -> bytes:
    """Stable identity of a request for idempotency checks.

    The operation_id itself and every ``credentials`` map are left out: a retry after
    a Secret rotation is still the same operation.
    """
    copy = type(request)()
    copy.CopyFrom(request)
    _strip(copy)
    return copy.SerializeToString(deterministic=True)


def _strip(msg: _message.Message) -> None:
    for fd, value in list(msg.ListFields()):
        if fd.name in ("operation_id", "credentials"):
            msg.ClearField(fd.name)
        elif fd.message_type is not None and not fd.message_type.GetOptions().map_entry:
            items: Any = value if fd.is_repeated else [value]
            for item in items:
                _strip(item)
