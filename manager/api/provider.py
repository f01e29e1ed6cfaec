"""Provider: a hypervisor endpoint and the gRPC provider process that drives it.

See the CRD ``config/crd/bases/infra.virtrigaud.io_providers.yaml``.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from enum import StrEnum
from typing import Annotated, ClassVar

from manager.api._codec import JsonField
from manager.api.meta import (
    API_VERSION,
    Condition,
    DiskFormat,
    NonNegative,
    ObjectMeta,
    ObjectReference,
    Resource,
    StorageType,
)

# resource.Quantity as the API server accepts it ("500m", "2Gi", "1.5", 4).
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
Quantity = Annotated[int | str, JsonField(pattern=QUANTITY_PATTERN)]


class ProviderType(StrEnum):
    LIBVIRT = "libvirt"
    VSPHERE = "vsphere"
    PROXMOX = "proxmox"


@dataclasses.dataclass(kw_only=True, slots=True)
class ProviderDefaults:
    """Placement defaults used when a VirtualMachine or VMMigration names none."""

    storage_pool: str | None = None
    datastore: str | None = None
    node: str | None = None
    network: str | None = None
    folder: str | None = None
    resource_pool: str | None = None
    cluster: str | None = None


@dataclasses.dataclass(kw_only=True, slots=True)
class ResourceRequirements:
    limits: dict[str, Quantity] = dataclasses.field(default_factory=dict)
    requests: dict[str, Quantity] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(kw_only=True, slots=True)
class ProviderRuntime:
    """How the manager runs the provider process (absent: it runs elsewhere)."""

    image: Annotated[str, JsonField(min_length=1)]
    replicas: NonNegative = 1
    port: Annotated[int, JsonField(minimum=1, maximum=65535)] = 9443
    tls_secret_ref: ObjectReference | None = None
    resources: ResourceRequirements | None = None


@dataclasses.dataclass(kw_only=True, slots=True)
class ProviderSpec:
    type: ProviderType
    endpoint: Annotated[str, JsonField(min_length=1)]
    credentials_secret_ref: ObjectReference | None = None
    defaults: ProviderDefaults | None = None
    runtime: ProviderRuntime | None = None
    allowed_storage_hosts: Annotated[
        list[Annotated[str, JsonField(min_length=1)]], JsonField(unique=True)
    ] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(kw_only=True, slots=True)
class ProviderCapabilities:
    provider_type: ProviderType | None = None
    version: str | None = None
    disk_formats: Annotated[list[DiskFormat], JsonField(unique=True)] = dataclasses.field(
        default_factory=list
    )
    storage_backends: Annotated[list[StorageType], JsonField(unique=True)] = dataclasses.field(
        default_factory=list
    )
    features: Annotated[list[str], JsonField(unique=True)] = dataclasses.field(default_factory=list)
    max_concurrent_tasks: NonNegative | None = None


@dataclasses.dataclass(kw_only=True, slots=True)
class ProviderStatus:
    ready: bool | None = None
    endpoint: str | None = None
    message: str | None = None
    capabilities: ProviderCapabilities | None = None
    conditions: Annotated[list[Condition], JsonField(map_key="type")] = dataclasses.field(
        default_factory=list
    )
    last_health_check: datetime | None = None
    observed_generation: NonNegative | None = None


@dataclasses.dataclass(kw_only=True, slots=True)
class Provider(Resource):
    API_VERSION: ClassVar[str] = API_VERSION
    KIND: ClassVar[str] = "Provider"

    metadata: ObjectMeta
    spec: ProviderSpec
    status: ProviderStatus | None = None
