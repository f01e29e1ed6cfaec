"""VMMigration: move a VirtualMachine to another provider through intermediate storage.

Field names, defaults and rules follow docs ``vmmigration-api-reference.md`` and the CRD
``config/crd/bases/infra.virtrigaud.io_vmmigrations.yaml``.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from enum import StrEnum
from typing import Annotated, ClassVar

from manager.api._codec import JsonField, join
from manager.api.meta import (
    API_VERSION,
    Condition,
    DiskFormat,
    DnsLabel,
    DnsSubdomain,
    Duration,
    NonNegative,
    ObjectMeta,
    ObjectReference,
    Resource,
    StorageType,
    parse_duration,
)
from virtrigaud.errors import ValidationError

BUCKET_PATTERN = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
ABSOLUTE_PATH_PATTERN = r"^/"
Positive = Annotated[int, JsonField(minimum=1)]


class MigrationPhase(StrEnum):
    PENDING = "Pending"
    VALIDATING = "Validating"
    SNAPSHOTTING = "Snapshotting"
    EXPORTING = "Exporting"
    TRANSFERRING = "Transferring"
    CONVERTING = "Converting"
    IMPORTING = "Importing"
    CREATING = "Creating"
    VALIDATING_TARGET = "ValidatingTarget"
    READY = "Ready"
    FAILED = "Failed"


class DiskPhase(StrEnum):
    """Progress of one disk: export to intermediate storage, then import on the target."""

    PENDING = "Pending"
    EXPORTING = "Exporting"
    EXPORTED = "Exported"
    IMPORTING = "Importing"
    IMPORTED = "Imported"
    FAILED = "Failed"


class SourcePowerPolicy(StrEnum):
    """``Keep``: leave the source running (crash-consistent snapshot, warm migration).
    ``ShutdownBeforeSnapshot``: shut the source down before the snapshot (cold migration)."""

    KEEP = "Keep"
    SHUTDOWN_BEFORE_SNAPSHOT = "ShutdownBeforeSnapshot"


class TargetPowerPolicy(StrEnum):
    """``Off``: the target VM is created powered off. ``PowerOnAndVerify``: during
    ValidatingTarget the target VM is powered on and must be seen running."""

    OFF = "Off"
    POWER_ON_AND_VERIFY = "PowerOnAndVerify"


@dataclasses.dataclass(kw_only=True, slots=True)
class ResourceHints:
    cpu: Positive | None = None
    memory: Positive | None = None  # MB
    disk: Positive | None = None  # GB


@dataclasses.dataclass(kw_only=True, slots=True)
class NetworkHint:
    name: str | None = None
    network: str | None = None
    bridge: str | None = None


@dataclasses.dataclass(kw_only=True, slots=True)
class MigrationStorage:
    type: StorageType
    bucket: Annotated[str | None, JsonField(pattern=BUCKET_PATTERN)] = None
    region: Annotated[str | None, JsonField(min_length=1)] = None
    endpoint: Annotated[str | None, JsonField(min_length=1)] = None
    path: Annotated[str | None, JsonField(pattern=ABSOLUTE_PATH_PATTERN)] = None
    prefix: str | None = None
    credentials_secret_ref: ObjectReference | None = None

    # Validation rule 3 of the API reference (without region: S3-compatible servers and
    # the SDK default work without one); mirrored by the CRD's CEL rules.
    REQUIRED_BY_TYPE: ClassVar[dict[StorageType, tuple[str, ...]]] = {
        StorageType.S3: ("bucket",),
        StorageType.HTTP: ("endpoint",),
        StorageType.NFS: ("path",),
    }

    def check_rules(self, path: str) -> None:
        for name in self.REQUIRED_BY_TYPE[self.type]:
            if getattr(self, name) is None:
                raise ValidationError(
                    join(path, name), f"required when storage type is {self.type.value}"
                )


@dataclasses.dataclass(kw_only=True, slots=True)
class CleanupPolicy:
    delete_intermediate: bool = True
    delete_snapshot: bool = True
    delete_source: bool = False


@dataclasses.dataclass(kw_only=True, slots=True)
class RetryPolicy:
    max_attempts: NonNegative = 3
    backoff_duration: Duration = "5m"
    max_backoff_duration: Duration = "30m"

    def check_rules(self, path: str) -> None:
        if self.backoff_seconds > self.max_backoff_seconds:
            raise ValidationError(
                join(path, "backoffDuration"), "must not be longer than maxBackoffDuration"
            )

    @property
    def backoff_seconds(self) -> float:
        return parse_duration(self.backoff_duration, "backoffDuration")

    @property
    def max_backoff_seconds(self) -> float:
        return parse_duration(self.max_backoff_duration, "maxBackoffDuration")

    def delay_before_retry(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based): 5m, 10m, 20m, 30m..."""
        return min(self.backoff_seconds * 2.0 ** max(retry - 1, 0), self.max_backoff_seconds)


@dataclasses.dataclass(kw_only=True, slots=True)
class VMMigrationSpec:
    source_name: DnsSubdomain
    source_namespace: DnsLabel
    target_provider_ref: ObjectReference
    target_name: DnsSubdomain
    storage: MigrationStorage
    target_namespace: DnsLabel | None = None
    target_storage_hint: str | None = None
    target_disk_format: DiskFormat | None = None
    target_resource_hints: ResourceHints | None = None
    target_network_hints: list[NetworkHint] = dataclasses.field(default_factory=list)
    cleanup_policy: CleanupPolicy = dataclasses.field(default_factory=CleanupPolicy)
    retry_policy: RetryPolicy = dataclasses.field(default_factory=RetryPolicy)
    source_power_policy: SourcePowerPolicy = SourcePowerPolicy.KEEP
    target_power_policy: TargetPowerPolicy = TargetPowerPolicy.OFF

    @property
    def effective_target_namespace(self) -> str:
        """targetNamespace, defaulting to sourceNamespace."""
        return self.target_namespace or self.source_namespace


@dataclasses.dataclass(kw_only=True, slots=True)
class DiskMigrationStatus:
    """State of one source disk, so a retry resumes at the disk and step that failed."""

    name: str
    id: str | None = None
    phase: DiskPhase | None = None
    export_task_ref: str | None = None
    import_task_ref: str | None = None
    bytes_transferred: NonNegative | None = None
    total_bytes: NonNegative | None = None
    checksum: str | None = None
    content_checksum: str | None = None
    intermediate_storage_url: Annotated[str | None, JsonField(key="intermediateStorageURL")] = None
    imported_disk_id: str | None = None
    source_format: str | None = None
    format: DiskFormat | None = None
    size_bytes: NonNegative | None = None
    attempt: NonNegative | None = None
    message: str | None = None


@dataclasses.dataclass(kw_only=True, slots=True)
class VMMigrationStatus:
    phase: MigrationPhase | None = None
    progress: Annotated[int | None, JsonField(minimum=0, maximum=100)] = None
    message: str | None = None
    observed_generation: NonNegative | None = None
    start_time: datetime | None = None
    completion_time: datetime | None = None
    snapshot_id: str | None = None
    export_task_ref: str | None = None
    import_task_ref: str | None = None
    intermediate_storage_url: Annotated[str | None, JsonField(key="intermediateStorageURL")] = None
    checksum: str | None = None
    bytes_transferred: NonNegative | None = None
    retry_attempts: NonNegative | None = None
    last_retry_time: datetime | None = None
    source_powered_off: bool | None = None
    disks: Annotated[list[DiskMigrationStatus], JsonField(map_key="name")] = dataclasses.field(
        default_factory=list
    )
    conditions: Annotated[list[Condition], JsonField(map_key="type")] = dataclasses.field(
        default_factory=list
    )


@dataclasses.dataclass(kw_only=True, slots=True)
class VMMigration(Resource):
    API_VERSION: ClassVar[str] = API_VERSION
    KIND: ClassVar[str] = "VMMigration"

    metadata: ObjectMeta
    spec: VMMigrationSpec
    status: VMMigrationStatus | None = None
