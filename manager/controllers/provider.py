"""The Provider controller: is the provider process serving, and what can it do?

Each pass asks the provider at ``status.endpoint`` for its health (gRPC health
service) and its capabilities (``GetCapabilities``) and records ``ready``,
``capabilities``, ``lastHealthCheck``, ``message``, ``observedGeneration`` and a
``Ready`` condition. A healthy provider is checked again every ``healthy_interval``
seconds, an unhealthy one every ``unhealthy_interval``; a status-only change (our
own write, or the launcher setting a new endpoint) re-checks at once only when the
endpoint or generation changed since the last check. Events ``ProviderReady`` /
``ProviderNotReady`` mark transitions.

Who starts the provider process is not this controller's business: the one-machine
launcher (``manager.onemachine.launcher``) or, later, a Kubernetes Deployment writes
``status.endpoint``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from manager.api import (
    DiskFormat,
    Provider,
    ProviderCapabilities,
    ProviderStatus,
    ProviderType,
    StorageType,
    find_condition,
    set_condition,
)
from manager.connections import ProviderConnections
from manager.controllers.common import condition, now, write_status
from manager.runtime.types import Result
from manager.store.base import ObjectKey, ObjectStore
from virtrigaud import errors
from virtrigaud.logging import get_logger
from virtrigaud.provider.v1 import provider_pb2 as pb

log = get_logger("virtrigaud.controllers.provider")

DISK_FORMATS = {
    pb.DISK_FORMAT_QCOW2: DiskFormat.QCOW2,
    pb.DISK_FORMAT_VMDK: DiskFormat.VMDK,
    pb.DISK_FORMAT_RAW: DiskFormat.RAW,
    pb.DISK_FORMAT_VDI: DiskFormat.VDI,
    pb.DISK_FORMAT_VHDX: DiskFormat.VHDX,
}
STORAGE_BACKENDS = {
    pb.STORAGE_BACKEND_S3: StorageType.S3,
    pb.STORAGE_BACKEND_HTTP: StorageType.HTTP,
    pb.STORAGE_BACKEND_NFS: StorageType.NFS,
}
# status.capabilities.features: the contract's Feature names in CamelCase.
FEATURES = {
    pb.FEATURE_SNAPSHOTS: "Snapshots",
    pb.FEATURE_LIVE_EXPORT: "LiveExport",
    pb.FEATURE_IMAGE_CLONE: "ImageClone",
    pb.FEATURE_IMPORTED_DISKS: "ImportedDisks",
    pb.FEATURE_SPARSE_EXPORT: "SparseExport",
    pb.FEATURE_RESUMABLE_TRANSFER: "ResumableTransfer",
    pb.FEATURE_CONTENT_DIGEST: "ContentDigest",
    pb.FEATURE_UEFI: "UEFI",
    pb.FEATURE_GRACEFUL_SHUTDOWN: "GracefulShutdown",
}


def capabilities_of(caps: pb.Capabilities) -> ProviderCapabilities:
    """Contract capabilities -> the Provider status shape (unknown values dropped)."""
    formats = [*caps.export_formats, *caps.import_formats]
    known_types = {t.value for t in ProviderType}
    return ProviderCapabilities(
        provider_type=ProviderType(caps.provider_type)
        if caps.provider_type in known_types
        else None,
        version=caps.provider_version or None,
        disk_formats=list(dict.fromkeys(DISK_FORMATS[f] for f in formats if f in DISK_FORMATS)),
        storage_backends=list(
            dict.fromkeys(
                STORAGE_BACKENDS[b] for b in caps.storage_backends if b in STORAGE_BACKENDS
            )
        ),
        features=list(dict.fromkeys(FEATURES[f] for f in caps.features if f in FEATURES)),
        max_concurrent_tasks=caps.max_concurrent_tasks or None,
    )


@dataclass(frozen=True)
class _Checked:
    endpoint: str | None
    generation: int | None
    at: float
    ready: bool


@dataclass
class _Outcome:
    ready: bool
    reason: str
    message: str
    capabilities: ProviderCapabilities | None = None


class ProviderReconciler:
    kind = "Provider"

    def __init__(
        self,
        store: ObjectStore,
        connections: ProviderConnections,
        *,
        healthy_interval: float = 45.0,
        unhealthy_interval: float = 10.0,
        health_timeout: float = 5.0,
    ) -> None:
        self.store = store
        self.connections = connections
        self.healthy_interval = healthy_interval
        self.unhealthy_interval = unhealthy_interval
        self.health_timeout = health_timeout
        self._checked: dict[ObjectKey, _Checked] = {}

    def _interval(self, ready: bool) -> float:
        return self.healthy_interval if ready else self.unhealthy_interval

    def reconcile(self, key: ObjectKey) -> Result:
        try:
            obj = self.store.get(key.kind, key.namespace, key.name)
        except errors.NotFound:
            self._checked.pop(key, None)
            return Result()
        provider = Provider.from_dict(obj)
        if provider.metadata.deletion_timestamp is not None:
            return Result()
        status = provider.status or ProviderStatus()
        last = self._checked.get(key)
        if (
            last is not None
            and last.endpoint == status.endpoint
            and last.generation == provider.metadata.generation
        ):
            remaining = self._interval(last.ready) - (time.monotonic() - last.at)
            if remaining > 0.5:
                return Result(requeue_after=remaining)
        outcome = self._check(provider, obj)
        self._record(key, obj, provider, status, outcome)
        return Result(requeue_after=self._interval(outcome.ready))

    def _check(self, provider: Provider, obj: dict[str, object]) -> _Outcome:
        endpoint = provider.status.endpoint if provider.status else None
        if not endpoint:
            launched = (
                find_condition(provider.status.conditions, "Launched") if provider.status else None
            )
            if launched is not None and launched.message:
                return _Outcome(False, "EndpointMissing", launched.message)
            return _Outcome(
                False,
                "EndpointMissing",
                "no provider process serves this Provider yet (status.endpoint is empty)",
            )
        client = self.connections.client_for(obj)
        if not client.health(timeout=self.health_timeout):
            return _Outcome(
                False,
                "HealthCheckFailed",
                f"provider at {endpoint} does not answer health checks with SERVING",
            )
        try:
            caps = client.get_capabilities(timeout=self.health_timeout * 2)
        except errors.VirtrigaudError as exc:
            return _Outcome(False, "CapabilitiesFailed", f"GetCapabilities at {endpoint}: {exc}")
        found = capabilities_of(caps)
        if caps.provider_type != provider.spec.type.value:
            return _Outcome(
                False,
                "TypeMismatch",
                f"the provider at {endpoint} serves type {caps.provider_type!r}, "
                f"but spec.type is {provider.spec.type.value!r}",
                found,
            )
        message = f"{caps.provider_type} provider {caps.provider_version} at {endpoint} is serving"
        if caps.hypervisor_version:
            message += f" ({caps.hypervisor_version})"
        return _Outcome(True, "HealthCheckSucceeded", message, found)

    def _record(
        self,
        key: ObjectKey,
        obj: dict[str, object],
        provider: Provider,
        status: ProviderStatus,
        outcome: _Outcome,
    ) -> None:
        was_ready = status.ready
        generation = provider.metadata.generation
        status.ready = outcome.ready
        status.message = outcome.message
        status.last_health_check = now()
        status.observed_generation = generation
        if outcome.capabilities is not None:
            status.capabilities = outcome.capabilities
        set_condition(
            status.conditions,
            condition("Ready", outcome.ready, outcome.reason, outcome.message, generation),
        )
        provider.status = status
        write_status(self.store, dict(obj), provider.to_dict()["status"])
        self._checked[key] = _Checked(status.endpoint, generation, time.monotonic(), outcome.ready)
        if was_ready != outcome.ready:
            reason = "ProviderReady" if outcome.ready else "ProviderNotReady"
            kind = "Normal" if outcome.ready else "Warning"
            self.store.emit_event(dict(obj), kind, reason, outcome.message)
            log.info("provider_ready_changed", provider=str(key), ready=outcome.ready)
