"""The Manager: several controllers over one store, started and stopped together."""

from __future__ import annotations

from collections.abc import Sequence

from manager.runtime.controller import Controller, Watch
from manager.runtime.queue import Backoff
from manager.runtime.types import Reconciler
from manager.store.base import ObjectKey, ObjectStore
from virtrigaud import errors
from virtrigaud.logging import get_logger

log = get_logger("virtrigaud.manager")


class Manager:
    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.controllers: list[Controller] = []
        self._started = False

    def add(
        self,
        reconciler: Reconciler,
        *,
        workers: int = 2,
        watches: Sequence[Watch] = (),
        resync_period: float = 300.0,
        backoff: Backoff[ObjectKey] | None = None,
        name: str | None = None,
    ) -> Controller:
        """Register a controller (before ``start``)."""
        if self._started:
            raise errors.FailedPrecondition("controllers must be added before start()")
        controller = Controller(
            reconciler,
            self.store,
            name=name,
            workers=workers,
            watches=watches,
            resync_period=resync_period,
            backoff=backoff,
        )
        self.controllers.append(controller)
        return controller

    def controller(self, kind: str) -> Controller:
        for controller in self.controllers:
            if controller.kind == kind:
                return controller
        raise errors.NotFound(f"no controller for kind {kind!r}")

    def start(self) -> None:
        self._started = True
        for controller in self.controllers:
            controller.start()
        log.info("manager_started", controllers=[c.name for c in self.controllers])

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every controller; running reconciles get ``timeout`` seconds to finish."""
        for controller in self.controllers:
            controller.request_stop()
        for controller in self.controllers:
            controller.stop(timeout)
        log.info("manager_stopped")

    def __enter__(self) -> Manager:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
