"""The interface every hypervisor provider implements.

A driver is the provider-specific half of a provider server: it adapts contract
messages to calls on its hypervisor client. The runtime (servicer, task registry,
error mapping, health, reflection, TLS) is shared, so a driver only says *what*
happens; *how* it is exposed is the same for every provider.

Quick methods (capabilities, validate, list, describe) run on the RPC thread and
should answer within seconds. Mutating methods run inside a task: they receive a
``TaskContext`` for progress and cancellation and return the task's result message.
A method a provider does not support keeps the default, which raises ``Unsupported``.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field

from providers.runtime.tasks import TaskContext
from virtrigaud import errors
from virtrigaud.provider.v1 import provider_pb2 as pb


@dataclass(frozen=True)
class ProviderConfig:
    """What a provider process is told at start-up.

    ``endpoint`` is the hypervisor URI/URL (e.g. ``qemu:///system``, a vCenter URL);
    ``credentials`` come from the Provider's Secret (mounted files or a JSON file);
    ``options`` are the non-secret defaults of the Provider object.
    """

    endpoint: str = ""
    credentials: Mapping[str, str] = field(default_factory=dict)
    options: Mapping[str, str] = field(default_factory=dict)
    # Storage hosts the SSRF guard lets through (hostnames, IPs, CIDRs).
    allowed_storage_hosts: tuple[str, ...] = ()

    def __repr__(self) -> str:  # never show credential values
        return (
            f"ProviderConfig(endpoint={self.endpoint!r}, credentials=<{len(self.credentials)} "
            f"keys>, options={dict(self.options)!r})"
        )


class ProviderDriver(abc.ABC):
    """Base class of every provider's driver."""

    #: the Provider ``spec.type`` this driver serves
    provider_type: str = ""
    #: storage hosts the SSRF guard lets through (factories copy
    #: ``ProviderConfig.allowed_storage_hosts`` here)
    storage_allowed_hosts: tuple[str, ...] = ()

    @abc.abstractmethod
    def capabilities(self) -> pb.Capabilities:
        """What this provider can do (no hypervisor round trip needed)."""

    def validate(self, request: pb.ValidateRequest) -> pb.ValidateResponse:
        raise errors.Unsupported(f"{self.provider_type}: Validate is not implemented")

    def list_vms(self, name_filter: str) -> list[pb.VM]:
        """Every VM matching the shell-style ``name_filter`` ("" = all).

        Fetch in bulk; the runtime sorts and pages the result.
        """
        raise errors.Unsupported(f"{self.provider_type}: ListVMs is not implemented")

    def describe_vm(self, vm_id: str) -> pb.VM:
        raise errors.Unsupported(f"{self.provider_type}: DescribeVM is not implemented")

    def create_vm(self, request: pb.CreateVMRequest, ctx: TaskContext) -> pb.CreateVMResult:
        raise errors.Unsupported(f"{self.provider_type}: CreateVM is not implemented")

    def delete_vm(self, request: pb.DeleteVMRequest, ctx: TaskContext) -> None:
        raise errors.Unsupported(f"{self.provider_type}: DeleteVM is not implemented")

    def power(self, request: pb.PowerRequest, ctx: TaskContext) -> None:
        raise errors.Unsupported(f"{self.provider_type}: Power is not implemented")

    def create_snapshot(
        self, request: pb.CreateSnapshotRequest, ctx: TaskContext
    ) -> pb.SnapshotResult:
        raise errors.Unsupported(f"{self.provider_type}: CreateSnapshot is not implemented")

    def delete_snapshot(self, request: pb.DeleteSnapshotRequest, ctx: TaskContext) -> None:
        raise errors.Unsupported(f"{self.provider_type}: DeleteSnapshot is not implemented")

    def export_disk(self, request: pb.ExportDiskRequest, ctx: TaskContext) -> pb.ExportResult:
        raise errors.Unsupported(f"{self.provider_type}: ExportDisk is not implemented")

    def import_disk(self, request: pb.ImportDiskRequest, ctx: TaskContext) -> pb.ImportResult:
        raise errors.Unsupported(f"{self.provider_type}: ImportDisk is not implemented")

    def delete_object(self, request: pb.DeleteObjectRequest, ctx: TaskContext) -> None:
        """Remove an intermediate object. The default works for every provider that
        reaches storage through ``providers.common.transfer``."""
        from providers.common import transfer

        transfer.delete_object(request.location, self.storage_allowed_hosts)

    def delete_disk(self, request: pb.DeleteDiskRequest, ctx: TaskContext) -> None:
        raise errors.Unsupported(f"{self.provider_type}: DeleteDisk is not implemented")

    def close(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Release hypervisor connections (called once at shutdown)."""
