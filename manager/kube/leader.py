"""Leader election on a ``coordination.k8s.io/v1`` Lease, so replicas never act at once.

The official client's ``kubernetes.leaderelection`` only has a ConfigMap lock, blocks
forever without a way to stop, and calls ``sys.exit`` on bad input, so this is a small
elector of our own with client-go's algorithm:

* a candidate reads the Lease; it may take it when nobody holds it, when it already
  holds it, or when the holder has not renewed for ``leaseDurationSeconds`` *as seen
  on our own clock* (the time we last saw the record change, never the holder's
  timestamps, so clock skew between nodes does not matter);
* every write is a PUT with the Lease's ``resourceVersion``, so of two candidates
  racing for an expired Lease exactly one wins (the other gets 409 Conflict);
* the leader renews every ``retry_period``; when it cannot renew for
  ``renew_deadline`` (shorter than the lease duration), or sees another holder, it
  stops leading *before* anyone else may take over;
* on a clean stop the leader releases the Lease (empty ``holderIdentity``) so a
  standby takes over at once instead of waiting for expiry.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from manager.kube.rest import KINDS, Rest
from virtrigaud import errors
from virtrigaud.logging import get_logger

log = get_logger("virtrigaud.kube.leader")

_LEASE = KINDS["Lease"]


def micro_time() -> str:
    """metav1.MicroTime as the API server writes it."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class LeaseConfig:
    namespace: str
    name: str
    identity: str
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not self.identity:
            raise errors.InvalidArgument("leader election: the identity must not be empty")
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise errors.InvalidArgument(
                "leader election: need 0 < retry period < renew deadline < lease duration "
                f"(got {self.retry_period}, {self.renew_deadline}, {self.lease_duration})"
            )


class LeaderElector:
    """Acquire, hold and release one Lease (see the module docstring)."""

    def __init__(
        self, rest: Rest, config: LeaseConfig, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rest = rest
        self.config = config
        self.clock = clock
        self.leading = threading.Event()
        self.transitions_seen = 0
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._what = f"lease {config.namespace}/{config.name}"

    @property
    def holder(self) -> str:
        """The holder we last saw ("" when none)."""
        return str(self._observed[0]) if self._observed else ""

    # -- one attempt --------------------------------------------------------------------

    def _spec(self, old: dict[str, Any] | None) -> dict[str, Any]:
        now = micro_time()
        spec: dict[str, Any] = {
            "holderIdentity": self.config.identity,
            "leaseDurationSeconds": max(1, round(self.config.lease_duration)),
            "renewTime": now,
        }
        if old and old.get("holderIdentity") == self.config.identity:
            spec["acquireTime"] = old.get("acquireTime") or now
            spec["leaseTransitions"] = int(old.get("leaseTransitions") or 0)
        else:
            spec["acquireTime"] = now
            spec["leaseTransitions"] = int((old or {}).get("leaseTransitions") or 0) + (
                1 if old else 0
            )
        return spec

    def _observe(self, spec: dict[str, Any]) -> None:
        record = (
            spec.get("holderIdentity") or "",
            spec.get("renewTime"),
            spec.get("acquireTime"),
            spec.get("leaseTransitions"),
            spec.get("leaseDurationSeconds"),
        )
        if record != self._observed:
            self._observed = record
            self._observed_at = self.clock()

    def try_acquire_or_renew(self) -> bool:
        """One attempt; True when we hold the Lease afterwards."""
        cfg = self.config
        try:
            lease = self.rest.get(_LEASE, cfg.namespace, cfg.name, self._what)
        except errors.NotFound:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": cfg.name, "namespace": cfg.namespace},
                "spec": self._spec(None),
            }
            try:
                created = self.rest.create(_LEASE, cfg.namespace, body, self._what)
            except (errors.AlreadyExists, errors.Conflict):
                return False
            self._observe(created.get("spec") or {})
            return True
        old = lease.get("spec") or {}
        self._observe(old)
        holder = old.get("holderIdentity") or ""
        duration = float(old.get("leaseDurationSeconds") or cfg.lease_duration)
        if holder and holder != cfg.identity and self._observed_at + duration > self.clock():
            return False  # held by another, and not expired on our clock
        lease["spec"] = self._spec(old)
        try:
            written = self.rest.replace(_LEASE, cfg.namespace, cfg.name, lease, self._what)
        except errors.Conflict:
            return False
        if holder != cfg.identity:
            log.info("lease_acquired", lease=self._what, identity=cfg.identity, previous=holder)
        self._observe(written.get("spec") or {})
        return True

    def release(self) -> None:
        """Give the Lease up (only if we still hold it)."""
        cfg = self.config
        try:
            lease = self.rest.get(_LEASE, cfg.namespace, cfg.name, self._what)
            spec = lease.get("spec") or {}
            if spec.get("holderIdentity") != cfg.identity:
                return
            spec.update(holderIdentity="", leaseDurationSeconds=1, renewTime=micro_time())
            lease["spec"] = spec
            self.rest.replace(_LEASE, cfg.namespace, cfg.name, lease, self._what)
            log.info("lease_released", lease=self._what, identity=cfg.identity)
        except errors.VirtrigaudError as exc:
            log.warning("lease_release_failed", lease=self._what, error=str(exc))

    def _attempt(self) -> bool:
        try:
            return self.try_acquire_or_renew()
        except errors.VirtrigaudError as exc:
            log.warning("lease_attempt_failed", lease=self._what, error=str(exc))
            return False

    # -- the loop -----------------------------------------------------------------------

    def acquire(self, stop: threading.Event) -> bool:
        """Block until we lead (True) or ``stop`` is set (False)."""
        while not stop.is_set():
            if self._attempt():
                return True
            stop.wait(self.config.retry_period)
        return False

    def hold(self, stop: threading.Event) -> bool:
        """Renew until ``stop`` (True: released cleanly) or until leadership is lost
        (False: could not renew within the deadline, or another holder appeared)."""
        last = self.clock()
        while not stop.wait(self.config.retry_period):
            if self._attempt():
                last = self.clock()
                continue
            if self.holder and self.holder != self.config.identity:
                log.error("lease_lost", lease=self._what, holder=self.holder)
                return False
            if self.clock() - last > self.config.renew_deadline:
                log.error("lease_renew_deadline_passed", lease=self._what)
                return False
        return True

    def run(
        self,
        stop: threading.Event,
        on_started_leading: Callable[[], None],
        on_stopped_leading: Callable[[], None],
    ) -> bool:
        """Acquire, lead (callbacks around it) and renew; True when ended by ``stop``."""
        if not self.acquire(stop):
            return True
        self.leading.set()
        log.info("leading", lease=self._what, identity=self.config.identity)
        clean = False
        try:
            on_started_leading()
            clean = self.hold(stop)
        finally:
            self.leading.clear()
            on_stopped_leading()
            if clean:
                self.release()
        return clean
