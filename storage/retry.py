"""The one backoff helper every storage backend uses.

S3 requests are retried by botocore itself (its ``standard`` retry mode, configured from
the same :class:`RetryPolicy`); this module covers what botocore cannot: resuming a
broken download at its current offset (S3 and HTTP readers) and retrying idempotent
HTTP requests. A failure budget is *consecutive*: a reader that makes progress between
two failures starts with a fresh budget, so a long download over a flaky link is not
killed by failures that are hours apart, while a dead endpoint still fails after
``attempts`` tries.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

Sleep = Callable[[float], None]


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter.

    ``attempts`` counts every try, the first included: ``attempts=1`` means no retry.
    """

    attempts: int = 5
    initial_backoff: float = 0.5
    max_backoff: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be >= 1")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError("RetryPolicy backoff values must be non-negative, multiplier >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("RetryPolicy.jitter must be within [0, 1]")

    def delays(self) -> Iterator[float]:
        """The pause before each retry (``attempts - 1`` values)."""
        delay = self.initial_backoff
        for _ in range(self.attempts - 1):
            spread = delay * self.jitter
            # Jitter is for spreading load, not for security.
            yield max(0.0, delay + random.uniform(-spread, spread))  # noqa: S311
            delay = min(self.max_backoff, delay * self.multiplier)


class Attempts:
    """A consecutive-failure budget for one logical operation (a download, a request).

    Call :meth:`failed` from an ``except`` block: it sleeps and returns when another try
    is allowed, and raises ``error`` when the budget is spent. :meth:`progress` refills
    the budget after useful work.
    """

    def __init__(self, policy: RetryPolicy, sleep: Sleep = time.sleep) -> None:
        self._policy = policy
        self._sleep = sleep
        self._delays = policy.delays()
        self.failures = 0

    def failed(self, error: BaseException) -> None:
        self.failures += 1
        delay = next(self._delays, None)
        if delay is None:
            raise error
        self._sleep(delay)

    def progress(self) -> None:
        if self.failures:
            self.failures = 0
            self._delays = self._policy.delays()


def retry_call(
    fn: Callable[[], T],
    *,
    policy: RetryPolicy,
    translate: Callable[[Exception], Exception],
    sleep: Sleep = time.sleep,
) -> T:
    """Call ``fn`` until it succeeds or the budget is spent.

    ``translate`` maps a raised exception to the error to surface; only translated errors
    that are retryable (``.retryable`` true, see ``virtrigaud.errors``) are retried.
    """
    attempts = Attempts(policy, sleep)
    while True:
        try:
            return fn()
        except Exception as exc:  # translated right away, re-raised if not retryable
            error = translate(exc)
            if not getattr(error, "retryable", False):
                raise error from exc
            try:
                attempts.failed(error)
            except Exception:
                raise error from exc
