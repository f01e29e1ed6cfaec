"""The gRPC servicer shared by every provider.

It only adapts: check the request (``requests``), hand quick calls to the driver,
turn mutating calls into tasks (``tasks``), and turn exceptions into gRPC statuses
through the one error table (``virtrigaud.errors``). Request bodies are never logged:
they can carry storage credentials.
"""

from __future__ import annotations

import base64
import fnmatch
import functools
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from providers.common import storagecheck
from providers.runtime import requests as checks
from providers.runtime.driver import ProviderDriver
from providers.runtime.tasks import TaskContext, TaskRegistry, TaskResult, fingerprint
from virtrigaud import errors
from virtrigaud.logging import get_logger
from virtrigaud.provider.v1 import provider_pb2 as pb
from virtrigaud.provider.v1 import provider_pb2_grpc as pb_grpc

log = get_logger("virtrigaud.provider")

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

F = TypeVar("F", bound=Callable[..., Any])


def _abort(context: grpc.ServicerContext, exc: BaseException) -> None:
    status, details, trailing = errors.to_grpc_status(exc)
    context.set_trailing_metadata(trailing)
    context.abort(status, details)


def rpc(method: F) -> F:
    """Translate exceptions into statuses and log each call (name, code, duration)."""

    @functools.wraps(method)
    def wrapper(self: ProviderServicer, request: Any, context: grpc.ServicerContext) -> Any:
        started = time.monotonic()
        name = method.__name__
        try:
            result = method(self, request, context)
        except Exception as exc:
            if not isinstance(exc, errors.VirtrigaudError):
                log.exception("rpc_crashed", method=name)
            else:
                log.info(
                    "rpc_failed",
                    method=name,
                    code=errors.error_code_name(exc.code),
                    message=exc.message,
                )
            _abort(context, exc)
            raise  # unreachable: abort raises
        log.debug("rpc", method=name, ms=round(1000 * (time.monotonic() - started), 1))
        return result

    return wrapper  # type: ignore[return-value]


def _encode_token(key: tuple[str, str]) -> str:
    raw = "\x00".join(key).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str) -> tuple[str, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        name, vm_id = raw.split("\x00", 1)
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.InvalidArgument("page_token: not a token this server issued") from exc
    return name, vm_id


def paginate(vms: list[pb.VM], page_size: int, page_token: str) -> pb.ListVMsResponse:
    """Keyset paging over (name, id): stable when VMs appear or vanish between pages."""
    size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    ordered = sorted(vms, key=lambda vm: (vm.name, vm.id))
    if page_token:
        after = _decode_token(page_token)
        ordered = [vm for vm in ordered if (vm.name, vm.id) > after]
    page = ordered[:size]
    next_token = _encode_token((page[-1].name, page[-1].id)) if len(ordered) > size else ""
    return pb.ListVMsResponse(vms=page, next_page_token=next_token)


class ProviderServicer(pb_grpc.ProviderServicer):
    """Serves the contract for one driver, with its task registry."""

    def __init__(self, driver: ProviderDriver, registry: TaskRegistry) -> None:
        self.driver = driver
        self.registry = registry

    def _submit(
        self,
        kind: int,
        request: Any,
        work: Callable[[TaskContext], TaskResult],
        *,
        vm_id: str = "",
        disk_id: str = "",
    ) -> pb.Task:
        return self.registry.submit(
            kind, request.operation_id, fingerprint(request), work, vm_id=vm_id, disk_id=disk_id
        )

    # -- quick calls --------------------------------------------------------------

    @rpc
    def GetCapabilities(self, request: pb.GetCapabilitiesRequest, context: Any) -> Any:
        caps = self.driver.capabilities()
        caps.max_concurrent_tasks = self.registry.max_workers
        return caps

    @rpc
    def Validate(self, request: pb.ValidateRequest, context: Any) -> Any:
        response = self.driver.validate(request)
        if request.HasField("storage_probe"):
            checks.storage_probe(request)
            found = storagecheck.probe(request.storage_probe, self.driver.storage_allowed_hosts)
            response.checks.add(name=found.name, ok=found.ok, message=found.message)
        response.ok = all(check.ok for check in response.checks)
        return response

    @rpc
    def ListVMs(self, request: pb.ListVMsRequest, context: Any) -> Any:
        checks.list_vms(request)
        vms = self.driver.list_vms(request.name_filter)
        if request.name_filter:  # drivers may filter natively; make the result exact
            vms = [vm for vm in vms if fnmatch.fnmatchcase(vm.name, request.name_filter)]
        return paginate(vms, request.page_size, request.page_token)

    @rpc
    def DescribeVM(self, request: pb.DescribeVMRequest, context: Any) -> Any:
        checks.describe_vm(request)
        return self.driver.describe_vm(request.vm_id)

    # -- tasks --------------------------------------------------------------------

    @rpc
    def CreateVM(self, request: pb.CreateVMRequest, context: Any) -> Any:
        checks.create_vm(request)
        return self._submit(
            pb.TASK_KIND_CREATE_VM, request, lambda ctx: self.driver.create_vm(request, ctx)
        )

    @rpc
    def DeleteVM(self, request: pb.DeleteVMRequest, context: Any) -> Any:
        checks.delete_vm(request)
        return self._submit(
            pb.TASK_KIND_DELETE_VM,
            request,
            lambda ctx: self.driver.delete_vm(request, ctx),
            vm_id=request.vm_id,
        )

    @rpc
    def Power(self, request: pb.PowerRequest, context: Any) -> Any:
        checks.power(request)
        return self._submit(
            pb.TASK_KIND_POWER,
            request,
            lambda ctx: self.driver.power(request, ctx),
            vm_id=request.vm_id,
        )

    @rpc
    def CreateSnapshot(self, request: pb.CreateSnapshotRequest, context: Any) -> Any:
        checks.create_snapshot(request)
        return self._submit(
            pb.TASK_KIND_CREATE_SNAPSHOT,
            request,
            lambda ctx: self.driver.create_snapshot(request, ctx),
            vm_id=request.vm_id,
        )

    @rpc
    def DeleteSnapshot(self, request: pb.DeleteSnapshotRequest, context: Any) -> Any:
        checks.delete_snapshot(request)
        return self._submit(
            pb.TASK_KIND_DELETE_SNAPSHOT,
            request,
            lambda ctx: self.driver.delete_snapshot(request, ctx),
            vm_id=request.vm_id,
        )

    @rpc
    def ExportDisk(self, request: pb.ExportDiskRequest, context: Any) -> Any:
        checks.export_disk(request)
        return self._submit(
            pb.TASK_KIND_EXPORT_DISK,
            request,
            lambda ctx: self.driver.export_disk(request, ctx),
            vm_id=request.vm_id,
            disk_id=request.disk_id,
        )

    @rpc
    def ImportDisk(self, request: pb.ImportDiskRequest, context: Any) -> Any:
        checks.import_disk(request)
        return self._submit(
            pb.TASK_KIND_IMPORT_DISK, request, lambda ctx: self.driver.import_disk(request, ctx)
        )

    @rpc
    def DeleteObject(self, request: pb.DeleteObjectRequest, context: Any) -> Any:
        checks.delete_object(request)
        return self._submit(
            pb.TASK_KIND_DELETE_OBJECT, request, lambda ctx: self.driver.delete_object(request, ctx)
        )

    @rpc
    def DeleteDisk(self, request: pb.DeleteDiskRequest, context: Any) -> Any:
        checks.delete_disk(request)
        return self._submit(
            pb.TASK_KIND_DELETE_DISK,
            request,
            lambda ctx: self.driver.delete_disk(request, ctx),
            disk_id=request.disk_id,
        )

    @rpc
    def GetTask(self, request: pb.GetTaskRequest, context: Any) -> Any:
        checks.task_id(request.task_id)
        return self.registry.get(request.task_id)

    @rpc
    def CancelTask(self, request: pb.CancelTaskRequest, context: Any) -> Any:
        checks.task_id(request.task_id)
        return self.registry.cancel(request.task_id)

    def WatchTask(self, request: pb.WatchTaskRequest, context: Any) -> Iterator[pb.Task]:
        # A generator: errors before the first message still become a status.
        try:
            checks.task_id(request.task_id)
            stream = self.registry.watch(request.task_id, is_active=context.is_active)
            first = next(stream)
        except errors.VirtrigaudError as exc:
            _abort(context, exc)
            return
        yield first
        yield from stream
