"""The planner's vocabulary: what the shell observed, what it must do, and the settings.

``Observations`` is everything one pass gathered; ``Plan`` is what the pure planner
decided. Actions are frozen dataclasses. Two families:

* **probes** (``PowerOffSource``, ``CreateSnapshot``, ``DeleteObject``,
  ``DeleteSnapshot``, ``DeleteSourceVM``): short provider operations whose *result* the
  planner needs. The shell submits them while gathering and hands the returned task to
  the planner in ``Observations.probes`` (keyed by operation id). Because the contract
  returns the same task for the same operation id, submitting again is how the planner
  polls them; nothing has to be stored until the result is known.
* **actions** proper (``ExportDisk``, ``ImportDisk``, ``CreateTargetVM``,
  ``DeleteTargetVM``, ``DeleteSourceObject``, ``CancelTask``, ``AddFinalizer``,
  ``RemoveFinalizer``): executed after planning. Export/import return a task whose id
  ``planner.record_submission`` writes into the status in the same pass; their progress
  is read with GetTask (``Observations.tasks``) on later passes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from manager.api import MigrationPhase, Provider, VirtualMachine, VMMigrationStatus
from virtrigaud import errors
from virtrigaud.provider.v1 import provider_pb2 as pb

FINALIZER = "vmmigration.infra.virtrigaud.io/cleanup"
FORCE_DELETE_ANNOTATION = "virtrigaud.io/force-delete"
ANN_MIGRATED_FROM = "virtrigaud.io/migrated-from"
ANN_MIGRATION = "virtrigaud.io/migration"
ANN_MIGRATION_UID = "virtrigaud.io/migration-uid"
ANN_IMPORTED_DISK_ID = "virtrigaud.io/imported-disk-id"
ANN_DISK_CHECKSUM = "virtrigaud.io/disk-checksum"

Side = Literal["source", "target"]


# -- what the shell observed -------------------------------------------------------------


@dataclass(frozen=True)
class RpcFailure:
    """A call that failed (or could not be made): the typed error, flattened."""

    code: int  # pb.ErrorCode
    message: str
    retryable: bool

    @classmethod
    def of(cls, error: errors.VirtrigaudError) -> RpcFailure:
        return cls(int(error.code), error.message, error.retryable)

    @classmethod
    def from_task(cls, task: pb.Task) -> RpcFailure:
        if task.HasField("error"):
            return cls(int(task.error.code), task.error.message, task.error.retryable)
        state = pb.TaskState.Name(task.state).removeprefix("TASK_STATE_")
        return cls(pb.ERROR_CODE_INTERNAL, f"task {task.id} ended {state}", False)

    @property
    def code_name(self) -> str:
        return errors.error_code_name(self.code)

    def __str__(self) -> str:
        return f"{self.code_name}: {self.message}"


@dataclass(frozen=True)
class TaskLost:
    """GetTask answered NOT_FOUND: the provider forgot the task (it restarted)."""

    task_id: str


TaskView = pb.Task | TaskLost | RpcFailure


@dataclass(frozen=True)
class OtherMigration:
    """Another VMMigration of the same source VirtualMachine (validation rule 6)."""

    namespace: str
    name: str
    created: datetime | None
    phase: MigrationPhase | None
    deleting: bool = False


@dataclass(frozen=True)
class Slots:
    """Data-task slots of one Provider (the bound on concurrent exports + imports).

    ``limit`` 0 means unbounded. ``others`` counts the exports and imports other
    migrations have in flight on the same Provider (this migration's own are counted
    from its status by the planner).
    """

    provider: str  # namespace/name of the Provider
    limit: int
    others: int


@dataclass(frozen=True)
class Observations:
    """Everything one pass gathered. ``None`` means "not asked" or "not possible"."""

    source_object: VirtualMachine | None = None
    source_provider: Provider | None = None
    target_provider: Provider | None = None
    secret_found: bool | None = None  # None: no Secret referenced
    source_vm: pb.VM | RpcFailure | None = None
    source_caps: pb.Capabilities | RpcFailure | None = None
    target_caps: pb.Capabilities | RpcFailure | None = None
    validation: pb.ValidateResponse | RpcFailure | None = None
    target_object: VirtualMachine | None = None
    target_vm: pb.VM | RpcFailure | None = None
    tasks: Mapping[str, TaskView] = field(default_factory=dict)  # by task id
    probes: Mapping[str, pb.Task | RpcFailure] = field(default_factory=dict)  # by op id
    others: tuple[OtherMigration, ...] = ()
    slots: Mapping[Side, Slots] = field(default_factory=dict)  # empty: unbounded

    def with_probes(self, probes: Mapping[str, pb.Task | RpcFailure]) -> Observations:
        return dataclasses.replace(self, probes=dict(probes))


@dataclass(frozen=True)
class TaskRef:
    """A task the shell must look up with GetTask."""

    side: Side
    task_id: str


@dataclass(frozen=True)
class Needs:
    """Which quick RPCs the planner needs in this pass."""

    source_vm: bool = False
    capabilities: bool = False
    validate: bool = False
    target_vm: bool = False
    tasks: tuple[TaskRef, ...] = ()


# -- what the planner decided ----------------------------------------------------------------


@dataclass(frozen=True)
class AddFinalizer:
    pass


@dataclass(frozen=True)
class RemoveFinalizer:
    pass


@dataclass(frozen=True)
class PowerOffSource:
    """Graceful shutdown (Power SHUTDOWN) of the source before the snapshot."""

    op_id: str
    vm_id: str
    timeout_seconds: int


@dataclass(frozen=True)
class PowerOnSource:
    """Power ON of a source this migration shut down, once the migration failed or is
    deleted before Ready (a cold migration must not leave a workload off for nothing)."""

    op_id: str
    vm_id: str


@dataclass(frozen=True)
class CreateSnapshot:
    op_id: str
    vm_id: str
    name: str
    description: str


@dataclass(frozen=True)
class ExportDisk:
    op_id: str
    disk: str  # status.disks[].name
    vm_id: str
    disk_id: str
    snapshot_id: str
    url: str
    target_format: str | None  # None: keep the source format


@dataclass(frozen=True)
class ImportDisk:
    op_id: str
    disk: str
    url: str
    source_format: str
    target_format: str | None  # None: the target's native format
    expected_sha256: str
    expected_content_sha256: str
    storage_hint: str
    volume_name: str


@dataclass(frozen=True)
class CreateTargetVM:
    manifest: dict[str, Any] = field(hash=False)


@dataclass(frozen=True)
class DeleteObject:
    op_id: str
    disk: str
    url: str


@dataclass(frozen=True)
class DeleteSnapshot:
    op_id: str
    vm_id: str
    snapshot_id: str


@dataclass(frozen=True)
class DeleteImportedDisk:
    """DeleteDisk on the target provider: a disk this migration imported."""

    op_id: str
    disk: str
    disk_id: str


@dataclass(frozen=True)
class DeleteSourceVM:
    op_id: str
    vm_id: str


@dataclass(frozen=True)
class DeleteSourceObject:
    namespace: str
    name: str


@dataclass(frozen=True)
class DeleteTargetVM:
    namespace: str
    name: str


@dataclass(frozen=True)
class PowerOnTargetVM:
    """Set the target VirtualMachine's ``spec.powerState: On`` (targetPowerPolicy
    PowerOnAndVerify); its controller powers the VM on."""

    namespace: str
    name: str


@dataclass(frozen=True)
class CancelTask:
    side: Side
    task_id: str


Probe = (
    PowerOffSource
    | PowerOnSource
    | CreateSnapshot
    | DeleteObject
    | DeleteSnapshot
    | DeleteSourceVM
    | DeleteImportedDisk
)
Action = (
    AddFinalizer
    | RemoveFinalizer
    | ExportDisk
    | ImportDisk
    | CreateTargetVM
    | DeleteTargetVM
    | PowerOnTargetVM
    | DeleteSourceObject
    | CancelTask
)


@dataclass(frozen=True)
class EventRecord:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass
class Plan:
    status: VMMigrationStatus
    actions: list[Action] = field(default_factory=list)
    events: list[EventRecord] = field(default_factory=list)
    requeue_after: float | None = None


@dataclass(frozen=True)
class Settings:
    """Timings of the engine (seconds). Tests shorten them; defaults suit production."""

    poll_seconds: float = 2.0  # polling running provider tasks
    wait_seconds: float = 5.0  # waiting for another object (provider ready, VM bound)
    validation_timeout: float = 300.0  # how long Validating waits for "not yet" problems
    target_vm_timeout: float = 1800.0  # how long Creating waits for the target VM
    cleanup_retry_seconds: float = 60.0  # a failed cleanup delete is re-submitted after
    shutdown_timeout_seconds: int = 300  # graceful shutdown before forcing power off
    # Bound on concurrent exports + imports per Provider across all migrations; the
    # smaller of this (0: none) and the provider's reported maxConcurrentTasks applies.
    max_tasks_per_provider: int = 0


DEFAULT_SETTINGS = Settings()
