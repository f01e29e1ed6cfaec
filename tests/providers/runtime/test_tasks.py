"""The task registry on its own: idempotency, cancel, watch, shutdown, expiry."""

from __future__ import annotations

import threading

import pytest

from providers.runtime.tasks import TaskContext, TaskRegistry, fingerprint
from virtrigaud import errors
from virtrigaud.provider.v1 import provider_pb2 as pb

KIND = pb.TASK_KIND_EXPORT_DISK


def _export_request(op: str, url: str = "nfs:///x", secret: str = "s1") -> pb.ExportDiskRequest:
    return pb.ExportDiskRequest(
        operation_id=op,
        vm_id="vm",
        disk_id="vda",
        destination=pb.StorageLocation(
            backend=pb.STORAGE_BACKEND_NFS, url=url, credentials={"secretKey": secret}
        ),
    )


def test_same_operation_id_returns_the_same_task_and_runs_once() -> None:
    registry = TaskRegistry(max_workers=2)
    runs: list[int] = []
    gate = threading.Event()

    def work(ctx: TaskContext) -> pb.ExportResult:
        runs.append(1)
        gate.wait(5)
        return pb.ExportResult(url="nfs:///x", sha256="ab")

    req = _export_request("op-1")
    first = registry.submit(KIND, "op-1", fingerprint(req), work)
    second = registry.submit(KIND, "op-1", fingerprint(req), work)
    gate.set()
    assert first.id == second.id
    registry.shutdown(grace=5)
    final = registry.get(first.id)
    assert final.state == pb.TASK_STATE_SUCCEEDED
    assert final.export_result.sha256 == "ab"
    assert runs == [1]


def test_reused_operation_id_with_a_different_request_is_refused() -> None:
    registry = TaskRegistry(max_workers=1)
    registry.submit(KIND, "op-1", fingerprint(_export_request("op-1")), lambda ctx: None)
    with pytest.raises(errors.InvalidArgument, match="operation_id"):
        registry.submit(
            KIND, "op-1", fingerprint(_export_request("op-1", url="nfs:///y")), lambda ctx: None
        )
    registry.shutdown(grace=5)


def test_fingerprint_ignores_credentials_and_operation_id_only() -> None:
    base = fingerprint(_export_request("a", secret="old"))
    assert fingerprint(_export_request("b", secret="rotated")) == base
    assert fingerprint(_export_request("a", url="nfs:///other")) != base


def test_missing_operation_id_is_refused() -> None:
    registry = TaskRegistry(max_workers=1)
    with pytest.raises(errors.InvalidArgument, match="operation_id"):
        registry.submit(KIND, "", b"", lambda ctx: None)
    registry.shutdown(grace=1)


def test_cancel_stops_the_work_at_a_safe_point() -> None:
    registry = TaskRegistry(max_workers=1)
    started = threading.Event()
    reached_end = threading.Event()

    def work(ctx: TaskContext) -> None:
        started.set()
        while True:
            ctx.check_cancelled()
            ctx.cancel_event.wait(0.01)
            if ctx.cancelled():
                ctx.check_cancelled()
                reached_end.set()

    task = registry.submit(KIND, "op", b"x", work)
    assert started.wait(5)
    registry.cancel(task.id)
    registry.shutdown(grace=5)
    final = registry.get(task.id)
    assert final.state == pb.TASK_STATE_CANCELLED
    assert final.error.code == pb.ERROR_CODE_CANCELLED
    assert not final.error.retryable
    assert not reached_end.is_set()


def test_failed_work_records_the_typed_error() -> None:
    registry = TaskRegistry(max_workers=1)

    def work(ctx: TaskContext) -> None:
        raise errors.OutOfSpace("pool default is full")

    task = registry.submit(KIND, "op", b"x", work)
    registry.shutdown(grace=5)
    final = registry.get(task.id)
    assert final.state == pb.TASK_STATE_FAILED
    assert final.error.code == pb.ERROR_CODE_OUT_OF_SPACE
    assert final.error.retryable
    assert final.error.message == "pool default is full"


def test_unexpected_exception_is_internal_and_hides_its_text() -> None:
    registry = TaskRegistry(max_workers=1)

    def work(ctx: TaskContext) -> None:
        raise RuntimeError("password=hunter2")

    task = registry.submit(KIND, "op", b"x", work)
    registry.shutdown(grace=5)
    final = registry.get(task.id)
    assert final.state == pb.TASK_STATE_FAILED
    assert final.error.code == pb.ERROR_CODE_INTERNAL
    assert "hunter2" not in final.error.message


def test_watch_streams_progress_and_ends_after_the_terminal_state() -> None:
    registry = TaskRegistry(max_workers=1)
    step = threading.Semaphore(0)

    def work(ctx: TaskContext) -> None:
        ctx.set_stage("copying")
        for done in (10, 20, 30, 40):
            step.acquire(timeout=5)
            ctx.progress(done, 40)

    task = registry.submit(KIND, "op", b"x", work)
    seen: list[pb.Task] = []
    for update in registry.watch(task.id, min_interval=0.0):
        seen.append(update)
        step.release()
    assert seen[-1].state == pb.TASK_STATE_SUCCEEDED
    assert seen[-1].percent == 100.0
    done_values = [t.bytes_done for t in seen]
    assert done_values == sorted(done_values)
    assert any(t.state == pb.TASK_STATE_RUNNING and 0 < t.bytes_done < 40 for t in seen)
    registry.shutdown(grace=1)


def test_shutdown_refuses_new_tasks_and_cancels_stragglers() -> None:
    registry = TaskRegistry(max_workers=1)
    started = threading.Event()

    def slow(ctx: TaskContext) -> None:
        started.set()
        while True:
            ctx.check_cancelled()
            ctx.cancel_event.wait(0.05)

    task = registry.submit(KIND, "op-slow", b"x", slow)
    assert started.wait(5)
    registry.shutdown(grace=0.2)
    assert registry.get(task.id).state == pb.TASK_STATE_CANCELLED
    with pytest.raises(errors.Unavailable, match="shutting down"):
        registry.submit(KIND, "op-new", b"y", lambda ctx: None)


def test_finished_tasks_expire_after_retention() -> None:
    now = [1000.0]
    registry = TaskRegistry(max_workers=1, retention_seconds=60, clock=lambda: now[0])
    first = registry.submit(KIND, "op-1", b"x", lambda ctx: None)
    registry.watch(first.id).__next__()  # registered
    for _ in registry.watch(first.id):
        pass
    now[0] += 61
    registry.submit(KIND, "op-2", b"x", lambda ctx: None)  # submission sweeps expired tasks
    with pytest.raises(errors.NotFound):
        registry.get(first.id)
    registry.shutdown(grace=1)


def test_progress_reports_rate_and_percent() -> None:
    now = [0.0]
    registry = TaskRegistry(max_workers=1, clock=lambda: now[0])
    gate = threading.Event()
    checked = threading.Event()

    def work(ctx: TaskContext) -> None:
        ctx.progress(0, 1000)
        now[0] = 2.0
        ctx.progress(500, 1000)
        gate.set()
        checked.wait(5)

    task = registry.submit(KIND, "op", b"x", work)
    assert gate.wait(5)
    mid = registry.get(task.id)
    checked.set()
    assert mid.percent == 50.0
    assert mid.bytes_per_second == 250.0
    registry.shutdown(grace=5)
