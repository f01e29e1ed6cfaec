"""Which failures are retried, and when.

Classification of a failed step (task error code, or a lost task):

* **permanent** -- retrying the same request cannot help, the user must change
  something: INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, UNAUTHENTICATED,
  PERMISSION_DENIED, FAILED_PRECONDITION, UNIMPLEMENTED. The migration fails at once
  and no retry is burned.
* **re-export** -- CHECKSUM_MISMATCH on import (or content digests that differ): the
  object in intermediate storage is corrupt, so that disk goes back to export; the same
  object key is rewritten.
* **retryable** -- everything else: UNAVAILABLE, TIMEOUT, CONFLICT, OUT_OF_SPACE,
  INTERNAL, CANCELLED (by someone else), and a task the provider lost (GetTask
  NOT_FOUND: it restarted). The step is retried for the failed disk only.

Scheduling (``schedule``): one retry per pass whatever the number of disks that failed
in it; ``status.retryAttempts`` counts retries; retry ``n`` waits
``RetryPolicy.delay_before_retry(n)`` (backoffDuration doubling up to
maxBackoffDuration: 5m, 10m, 20m, 30m, 30m...). ``status.lastRetryTime`` is the time
the retry attempt is made (set when it is scheduled, so until then it lies in the
future and nothing is submitted before it). Once ``retryAttempts`` has reached
``maxAttempts``, the next retryable failure fails the migration (MaxRetriesExceeded).
"""

from __future__ import annotations

from datetime import timedelta
from enum import Enum

from manager.api import format_duration
from manager.migration.context import Pass
from manager.migration.model import RpcFailure
from virtrigaud.provider.v1 import provider_pb2 as pb

PERMANENT_CODES = frozenset(
    {
        pb.ERROR_CODE_INVALID_ARGUMENT,
        pb.ERROR_CODE_NOT_FOUND,
        pb.ERROR_CODE_ALREADY_EXISTS,
        pb.ERROR_CODE_UNAUTHENTICATED,
        pb.ERROR_CODE_PERMISSION_DENIED,
        pb.ERROR_CODE_FAILED_PRECONDITION,
        pb.ERROR_CODE_UNIMPLEMENTED,
    }
)


class Disposition(Enum):
    PERMANENT = "permanent"
    RETRY = "retry"
    REEXPORT = "reexport"


def classify(failure: RpcFailure, *, importing: bool = False) -> Disposition:
    if failure.code == pb.ERROR_CODE_CHECKSUM_MISMATCH and importing:
        return Disposition.REEXPORT
    if failure.code in PERMANENT_CODES:
        return Disposition.PERMANENT
    return Disposition.RETRY


def failure_reason(failure: RpcFailure) -> str:
    """A condition reason for a failure: ``Unauthenticated``, ``ChecksumMismatch``..."""
    return "".join(part.capitalize() for part in failure.code_name.split("_")) or "Failed"


def schedule(step: Pass, message: str) -> bool:
    """Schedule a retry for ``message``; False (and the migration Failed) when exhausted."""
    policy = step.spec.retry_policy
    done = step.status.retry_attempts or 0
    if done >= policy.max_attempts:
        step.event(
            "MaxRetriesExceeded",
            f"Maximum retry attempts ({policy.max_attempts}) exceeded",
            warning=True,
        )
        step.fail(
            "MaxRetriesExceeded",
            f"{message} (maximum retry attempts ({policy.max_attempts}) exceeded)",
        )
        return False
    attempt = done + 1
    delay = policy.delay_before_retry(attempt)
    step.status.retry_attempts = attempt
    step.status.last_retry_time = step.now + timedelta(seconds=delay)
    when = format_duration(delay)
    step.status.message = f"retry {attempt}/{policy.max_attempts} in {when}: {message}"
    step.event(
        "RetryScheduled", f"Migration failed, retry scheduled in {when}: {message}", warning=True
    )
    step.requeue(delay)
    return True
