"""Retries: backoff arithmetic, permanent errors, lost tasks, checksum mismatches,
and resuming from the status alone (no I/O)."""

from __future__ import annotations

import copy
from datetime import timedelta

import pytest

from manager.api import DiskPhase, MigrationPhase, RetryPolicy
from manager.migration import planner
from manager.migration.model import (
    CreateSnapshot,
    ExportDisk,
    ImportDisk,
    Observations,
    Plan,
    TaskLost,
    TaskRef,
    TaskView,
)
from tests.manager.migration import flows
from tests.manager.migration.builders import (
    GB,
    UID,
    Driver,
    cond,
    events,
    exported,
    failed,
    imported,
    migration,
    reasons,
    task,
)
from virtrigaud.provider.v1 import provider_pb2 as pb

MINUTE = 60.0


def test_backoff_doubles_up_to_the_cap() -> None:
    policy = RetryPolicy(max_attempts=5, backoff_duration="5m", max_backoff_duration="30m")
    assert [policy.delay_before_retry(n) for n in range(1, 6)] == [300, 600, 1200, 1800, 1800]


def _fail_export(d: Driver, obs: Observations, code: int = pb.ERROR_CODE_UNAVAILABLE) -> Plan:
    ref = d.export_refs()[0]
    return d.step(obs, {ref: failed(ref, code, "storage unreachable", True)})


def test_retries_wait_5_10_20_30_minutes_then_max_retries_exceeded() -> None:
    policy = {"maxAttempts": 4, "backoffDuration": "5m", "maxBackoffDuration": "30m"}
    d, obs = flows.exporting((("vda", GB),), retryPolicy=policy)
    for attempt, delay in enumerate([5, 10, 20, 30], start=1):
        plan = _fail_export(d, obs)
        disk = d.status.disks[0]
        assert (d.status.retry_attempts, disk.attempt, disk.phase) == (
            attempt,
            attempt + 1,
            DiskPhase.PENDING,
        )
        assert d.status.last_retry_time == d.now + timedelta(minutes=delay)
        assert plan.requeue_after == delay * MINUTE
        assert (
            "RetryScheduled",
            f"Migration failed, retry scheduled in {delay}m: "
            "export of disk vda failed: UNAVAILABLE: storage unreachable",
        ) in events(plan)
        plan = d.step(obs, advance=delay * MINUTE - 1)  # not yet
        assert plan.actions == [] and plan.requeue_after == 1
        plan = d.step(obs, advance=1)  # due: the same step again, new attempt in the op id
        (action,) = plan.actions
        assert isinstance(action, ExportDisk) and action.op_id == f"{UID}/{attempt + 1}/export/vda"
        assert action.url.endswith("/vda.raw")  # same object key: an S3 upload resumes
    plan = _fail_export(d, obs)
    assert d.phase() is MigrationPhase.FAILED
    assert ("MaxRetriesExceeded", "Maximum retry attempts (4) exceeded") in events(plan)
    assert cond(d.status, "Failed")[1] == "MaxRetriesExceeded"


@pytest.mark.parametrize(
    "code",
    [
        pb.ERROR_CODE_UNAUTHENTICATED,
        pb.ERROR_CODE_PERMISSION_DENIED,
        pb.ERROR_CODE_INVALID_ARGUMENT,
        pb.ERROR_CODE_NOT_FOUND,
    ],
)
def test_permanent_errors_fail_without_burning_retries(code: int) -> None:
    d, obs = flows.exporting((("vda", GB), ("vdb", GB)))
    refs = d.export_refs()
    tasks: dict[str, TaskView] = {
        refs[0]: failed(refs[0], code, "access key rejected", False),
        refs[1]: task(refs[1], stage="uploading"),
    }
    plan = d.step(obs, tasks)
    assert d.phase() is MigrationPhase.FAILED
    assert d.status.retry_attempts is None
    name = pb.ErrorCode.Name(code).removeprefix("ERROR_CODE_")
    assert d.status.message == f"export of disk vda failed: {name}: access key rejected"
    assert ("MigrationFailed", f"Migration failed: {d.status.message}") in events(plan)
    assert d.status.completion_time == d.now
    # the other disk's running export is cancelled
    assert [type(a).__name__ for a in plan.actions] == ["CancelTask"]


def test_resume_after_a_manager_restart_polls_the_saved_tasks() -> None:
    d, obs = flows.exporting()
    saved = copy.deepcopy(d.status)
    restarted = Driver(migration(saved), now=d.now + timedelta(minutes=3))
    refs = [x.export_task_ref for x in saved.disks]
    assert planner.needs(restarted.mig).tasks == tuple(TaskRef("source", r) for r in refs if r)
    tasks = {r: task(r, stage="uploading", done=GB // 2, total=GB) for r in refs if r}
    plan = restarted.step(obs, tasks)
    assert plan.actions == []  # nothing re-submitted
    assert [x.export_task_ref for x in restarted.status.disks] == refs
    assert restarted.phase() is MigrationPhase.TRANSFERRING


def test_a_lost_task_is_retried_for_that_disk_only() -> None:
    d, obs = flows.exporting()
    refs = d.export_refs()
    tasks: dict[str, TaskView] = {
        refs[0]: exported(refs[0], GB),
        refs[1]: TaskLost(refs[1]),
        refs[2]: task(refs[2], stage="uploading"),
    }
    plan = d.step(obs, tasks)
    assert reasons(plan) == ["RetryScheduled", "TransferStarted"]
    vda, vdb, vdc = d.status.disks
    assert (vda.phase, vdb.phase, vdc.phase) == (
        DiskPhase.EXPORTED,
        DiskPhase.PENDING,
        DiskPhase.EXPORTING,
    )
    assert (
        vdb.message == f"export task {refs[1]} of disk vdb was lost (the source provider restarted)"
    )
    tasks.pop(refs[1])
    plan = d.step(obs, tasks, advance=5 * MINUTE)
    (action,) = plan.actions
    assert isinstance(action, ExportDisk)
    assert (action.disk, action.op_id) == ("vdb", f"{UID}/2/export/vdb")
    assert d.status.disks[0].export_task_ref == refs[0]  # finished disk untouched


def test_checksum_mismatch_restarts_that_disks_export_only() -> None:
    d, obs = flows.all_exported((("vda", GB), ("vdb", GB)))
    a, b = d.import_refs()
    tasks: dict[str, TaskView] = {
        a: imported(a, "pool/a", GB),
        b: failed(b, pb.ERROR_CODE_CHECKSUM_MISMATCH, "sha256 differs", False),
    }
    plan = d.step(obs, tasks)
    assert reasons(plan) == ["RetryScheduled"]
    vda, vdb = d.status.disks
    assert vda.phase is DiskPhase.IMPORTED and vda.imported_disk_id == "pool/a"
    assert (vdb.phase, vdb.attempt, vdb.checksum, vdb.import_task_ref) == (
        DiskPhase.PENDING,
        2,
        None,
        None,
    )
    assert d.phase() is MigrationPhase.EXPORTING
    plan = d.step(obs, advance=5 * MINUTE)
    (action,) = plan.actions
    assert isinstance(action, ExportDisk) and action.op_id == f"{UID}/2/export/vdb"
    ref = d.export_refs()[1]
    plan = d.step(obs, {ref: exported(ref, GB)})
    (action,) = plan.actions
    assert isinstance(action, ImportDisk)
    assert (action.op_id, action.volume_name) == (f"{UID}/2/import/vdb", "migrated-vdb-r2.raw")


def test_content_digest_mismatch_on_import_is_a_reexport() -> None:
    d, obs = flows.all_exported((("vda", GB),))
    (ref,) = d.import_refs()
    d.step(obs, {ref: imported(ref, "pool/a", GB, content="ee" * 32)})
    assert d.status.disks[0].phase is DiskPhase.PENDING
    assert "content digest" in (d.status.disks[0].message or "")


def test_retryable_import_failure_keeps_the_export() -> None:
    d, obs = flows.all_exported((("vda", GB),))
    (ref,) = d.import_refs()
    d.step(obs, {ref: failed(ref, pb.ERROR_CODE_OUT_OF_SPACE, "pool full", True)})
    disk = d.status.disks[0]
    assert (disk.phase, disk.attempt, disk.checksum) == (
        DiskPhase.EXPORTED,
        2,
        "sha256:" + "ab" * 32,
    )
    plan = d.step(obs, advance=5 * MINUTE)
    (action,) = plan.actions
    assert isinstance(action, ImportDisk) and action.op_id == f"{UID}/2/import/vda"


def test_failed_snapshot_is_retried_with_a_new_name() -> None:
    d, obs = flows.snapshotting()
    (probe,) = planner.probes(d.mig, obs, d.now)
    d.step(obs, probes={probe.op_id: failed("t", pb.ERROR_CODE_TIMEOUT, "slow", True)})
    assert d.status.retry_attempts == 1
    assert planner.probes(d.mig, obs, d.now) == []  # not before the backoff
    d.now += timedelta(minutes=5)
    (probe,) = planner.probes(d.mig, obs, d.now)
    assert isinstance(probe, CreateSnapshot)
    assert (probe.op_id, probe.name) == (f"{UID}/2/snapshot/vm-1", "vmmig-0f1e2d3c-2")


def test_submission_errors_transient_then_permanent() -> None:
    from tests.manager.migration.builders import failure

    d, obs = flows.exporting((("vda", GB),))
    plan = planner.plan(d.mig, obs, d.now)
    action = ExportDisk("op", "vda", "vm-1", "vda", "s", "u", "raw")
    planner.record_submission_error(
        d.mig, plan, action, failure(pb.ERROR_CODE_UNAVAILABLE, "down", True), d.now
    )
    assert plan.status.phase is not MigrationPhase.FAILED
    assert (
        plan.status.disks[0].message
        == "submitting the export of disk vda failed: UNAVAILABLE: down"
    )
    planner.record_submission_error(
        d.mig, plan, action, failure(pb.ERROR_CODE_INVALID_ARGUMENT, "bad url"), d.now
    )
    assert plan.status.phase == MigrationPhase.FAILED  # type: ignore[comparison-overlap]
