"""The manager's typed client of the provider contract.

Every call has a deadline and raises the typed errors of ``virtrigaud.errors``
(rebuilt through the shared error table). Calls that fail with a transient status
(UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED, RESOURCE_EXHAUSTED) are retried with
exponential backoff and jitter; that is safe for the mutating calls too, because
each carries an operation_id and the provider returns the same task for it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from virtrigaud import errors
from virtrigaud.logging import get_logger
from virtrigaud.provider.v1 import provider_pb2 as pb
from virtrigaud.provider.v1 import provider_pb2_grpc as pb_grpc

log = get_logger("virtrigaud.providerclient")

T = TypeVar("T")

TERMINAL_STATES = frozenset(
    {pb.TASK_STATE_SUCCEEDED, pb.TASK_STATE_FAILED, pb.TASK_STATE_CANCELLED}
)
RETRYABLE_STATUS = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


@dataclass(frozen=True)
class ClientTLS:
    """CA to verify the provider; client cert/key for mutual TLS."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None  # override when the address is not in the cert

    def credentials(self) -> grpc.ChannelCredentials:
        cert = self.cert.read_bytes() if self.cert else None
        key = self.key.read_bytes() if self.key else None
        return grpc.ssl_channel_credentials(self.ca.read_bytes(), key, cert)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4
    initial_backoff: float = 0.2
    max_backoff: float = 5.0

    def delay(self, attempt: int) -> float:
        base: float = min(self.max_backoff, self.initial_backoff * (2.0**attempt))
        return base * (0.5 + random.random() / 2)  # noqa: S311 - jitter, not crypto


class ProviderClient:
    """One connection to one provider server."""

    def __init__(
        self,
        target: str,
        tls: ClientTLS | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        options: list[tuple[str, Any]] = []
        if tls is None:
            self._channel = grpc.insecure_channel(target, options=options)
        else:
            if tls.server_name:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            self._channel = grpc.secure_channel(target, tls.credentials(), options=options)
        self._stub = pb_grpc.ProviderStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ProviderClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- plumbing -----------------------------------------------------------------

    def _call(self, name: str, method: Callable[..., T], request: Any, timeout: float | None) -> T:
        attempt = 0
        while True:
            try:
                return method(request, timeout=timeout or self.timeout)
            except grpc.RpcError as exc:
                status = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
                if status in RETRYABLE_STATUS and attempt + 1 < self.retry.attempts:
                    delay = self.retry.delay(attempt)
                    log.info("rpc_retry", method=name, status=status.name, delay=round(delay, 2))
                    time.sleep(delay)
                    attempt += 1
                    continue
                raise errors.from_grpc_error(exc) from None

    # -- the contract -------------------------------------------------------------

    def health(self, timeout: float | None = None) -> bool:
        """True when the provider's health service reports SERVING."""
        try:
            reply = self._health.Check(health_pb2.HealthCheckRequest(), timeout=timeout or 5.0)
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def get_capabilities(self, timeout: float | None = None) -> pb.Capabilities:
        return self._call(
            "GetCapabilities", self._stub.GetCapabilities, pb.GetCapabilitiesRequest(), timeout
        )

    def validate(
        self,
        storage_hint: str = "",
        networks: list[str] | None = None,
        timeout: float | None = None,
        storage_probe: pb.StorageLocation | None = None,
    ) -> pb.ValidateResponse:
        request = pb.ValidateRequest(
            storage_hint=storage_hint, networks=networks or [], storage_probe=storage_probe
        )
        return self._call("Validate", self._stub.Validate, request, timeout)

    def list_vms(
        self, page_size: int = 0, page_token: str = "", name_filter: str = ""
    ) -> pb.ListVMsResponse:
        request = pb.ListVMsRequest(
            page_size=page_size, page_token=page_token, name_filter=name_filter
        )
        return self._call("ListVMs", self._stub.ListVMs, request, None)

    def iter_vms(self, name_filter: str = "", page_size: int = 0) -> Iterator[pb.VM]:
        token = ""
        while True:
            page = self.list_vms(page_size, token, name_filter)
            yield from page.vms
            token = page.next_page_token
            if not token:
                return

    def describe_vm(self, vm_id: str) -> pb.VM:
        return self._call(
            "DescribeVM", self._stub.DescribeVM, pb.DescribeVMRequest(vm_id=vm_id), None
        )

    def create_vm(self, request: pb.CreateVMRequest) -> pb.Task:
        return self._call("CreateVM", self._stub.CreateVM, request, None)

    def delete_vm(self, request: pb.DeleteVMRequest) -> pb.Task:
        return self._call("DeleteVM", self._stub.DeleteVM, request, None)

    def power(self, request: pb.PowerRequest) -> pb.Task:
        return self._call("Power", self._stub.Power, request, None)

    def create_snapshot(self, request: pb.CreateSnapshotRequest) -> pb.Task:
        return self._call("CreateSnapshot", self._stub.CreateSnapshot, request, None)

    def delete_snapshot(self, request: pb.DeleteSnapshotRequest) -> pb.Task:
        return self._call("DeleteSnapshot", self._stub.DeleteSnapshot, request, None)

    def export_disk(self, request: pb.ExportDiskRequest) -> pb.Task:
        return self._call("ExportDisk", self._stub.ExportDisk, request, None)

    def import_disk(self, request: pb.ImportDiskRequest) -> pb.Task:
        return self._call("ImportDisk", self._stub.ImportDisk, request, None)

    def delete_object(self, request: pb.DeleteObjectRequest) -> pb.Task:
        return self._call("DeleteObject", self._stub.DeleteObject, request, None)

    def delete_disk(self, request: pb.DeleteDiskRequest) -> pb.Task:
        return self._call("DeleteDisk", self._stub.DeleteDisk, request, None)

    def get_task(self, task_id: str) -> pb.Task:
        return self._call("GetTask", self._stub.GetTask, pb.GetTaskRequest(task_id=task_id), None)

    def cancel_task(self, task_id: str) -> pb.Task:
        return self._call(
            "CancelTask", self._stub.CancelTask, pb.CancelTaskRequest(task_id=task_id), None
        )

    def watch_task(self, task_id: str, timeout: float | None = None) -> Iterator[pb.Task]:
        """Stream task updates until a terminal state (no retries: re-watch to resume)."""
        try:
            yield from self._stub.WatchTask(pb.WatchTaskRequest(task_id=task_id), timeout=timeout)
        except grpc.RpcError as exc:
            raise errors.from_grpc_error(exc) from None

    def wait_task(self, task_id: str, timeout: float = 600.0, poll: float = 0.2) -> pb.Task:
        """Poll until the task is terminal (for the CLI and tests; reconcilers never block)."""
        deadline = time.monotonic() + timeout
        while True:
            task = self.get_task(task_id)
            if task.state in TERMINAL_STATES:
                return task
            if time.monotonic() > deadline:
                raise errors.Timeout(f"task {task_id} not finished after {timeout:.0f}s")
            time.sleep(poll)


def raise_for_task(task: pb.Task) -> pb.Task:
    """Return a succeeded task; raise its typed error if it failed or was cancelled."""
    if task.state == pb.TASK_STATE_SUCCEEDED:
        return task
    if task.HasField("error"):
        raise errors.from_task_error(task.error)
    raise errors.InternalError(f"task {task.id} ended in {pb.TaskState.Name(task.state)}")
