"""Waiting for vSphere tasks: the one place it is done.

A vSphere method ending in ``_Task`` returns a Task object at once; the work runs on
the server. ``wait`` polls ``info.state`` / ``info.error`` / ``info.result`` /
``info.progress`` through the PropertyCollector (``RetrievePropertiesEx``) with a
growing interval (0.1 s .. 1 s) until the task ends.

Why not pyvmomi's ``WaitForTask``: it reads ``info.entity`` and other properties with
separate calls and assumes their types; the simulator the tests run against (vcsim
0.24) sets ``info.entity`` to the snapshot for snapshot tasks and to odd objects for
FileManager / VirtualDiskManager tasks, and ``WaitForTask`` then raises a TypeError.
Polling exactly the three fields we need works on vcsim and on real vCenter alike,
and gives cancellation (``CancelTask`` when the caller's task is cancelled) and a
deadline in the same loop.
"""

from __future__ import annotations

import time
from typing import Any

from providers.runtime.tasks import Progress
from providers.vsphere.client import VSphereClient, fault_error
from virtrigaud import errors
from virtrigaud.logging import get_logger

log = get_logger("virtrigaud.vsphere")

_FIELDS = ("info.state", "info.error", "info.result", "info.progress", "info.cancelable")
_FIRST_INTERVAL = 0.1
_MAX_INTERVAL = 1.0


def wait(
    client: VSphereClient,
    task: Any,
    what: str,
    *,
    ctx: Progress | None = None,
    timeout: float | None = None,
) -> Any:
    """The task's result once it succeeded; its fault as a typed error otherwise.

    When ``ctx`` is cancelled the vSphere task is asked to cancel (if it can be) and
    ``errors.Cancelled`` is raised once it has ended -- unless it succeeded anyway,
    in which case its result stands. After ``timeout`` seconds: ``errors.Timeout``
    (the vSphere task keeps running; it is asked to cancel).
    """
    deadline = time.monotonic() + (timeout or client.settings.task_timeout)
    interval = _FIRST_INTERVAL
    cancel_sent = False
    while True:
        info = client.properties(task, _FIELDS, what)
        state = str(info.get("info.state", ""))
        if state == "success":
            return info.get("info.result")
        if state == "error":
            fault = info.get("info.error")
            if cancel_sent and ctx is not None and ctx.cancelled():
                raise errors.Cancelled(f"{what}: cancelled")
            raise (
                fault_error(fault, what)
                if fault is not None
                else errors.InternalError(f"{what}: the vSphere task failed without a fault")
            )
        expired = time.monotonic() > deadline
        if ((ctx is not None and ctx.cancelled()) or expired) and not cancel_sent:
            cancel_sent = True
            if info.get("info.cancelable"):
                try:
                    client.call(lambda _c: task.CancelTask(), f"{what}: cancelling")
                except errors.VirtrigaudError as exc:  # it may have just finished
                    log.info("vsphere_task_cancel_failed", task=task._moId, error=exc.message)
        if expired:
            raise errors.Timeout(f"{what}: the vSphere task {task._moId} did not finish in time")
        time.sleep(interval)
        interval = min(interval * 1.5, _MAX_INTERVAL)
