"""Validating: rules 1-6 of the API reference, each with a message that says exactly what.

1. the source VirtualMachine exists, is bound to a VM (``status.id`` or ``spec.vmId``),
   its Provider exists and is ready, and DescribeVM finds the VM;
2. the target Provider exists and is ready;
3. the storage configuration is valid (s3: bucket; http: endpoint; nfs: path -- as the
   CRD requires), object keys can be derived, both providers support that storage
   backend, and the source provider can take snapshots;
4. the credentials Secret exists when one is referenced;
5. the target can take the VM: the target provider's Validate RPC with the storage hint
   (``targetStorageHint``, else the Provider's default pool/datastore) and every mapped
   network (its failed checks are quoted), a format path exists for every disk
   (``formats``), and the target VirtualMachine name is free;
6. no conflicting migration: of the non-terminal, not-deleted migrations of the same
   source the OLDEST (creationTimestamp, then namespace/name) proceeds; a newer one
   fails naming the older.

Problems that time can fix -- an object not created yet, a provider not ready yet, a VM
not bound yet, a provider call that could not be made -- keep the phase at Validating
(condition Validated False with the reason and message, polled every
``Settings.wait_seconds``) for at most ``Settings.validation_timeout`` after
``startTime``, then fail with the same message. Definite problems fail at once
(reason ValidationFailed). Validation runs before anything is changed anywhere, so a
failure here burns no retry and leaves nothing behind.
"""

from __future__ import annotations

from dataclasses import dataclass

from manager.api import MigrationPhase, Provider
from manager.migration import formats, naming, snapshot, target
from manager.migration.context import TERMINAL_PHASES, Pass
from manager.migration.model import RpcFailure
from virtrigaud import errors
from virtrigaud.provider.v1 import provider_pb2 as pb


@dataclass(frozen=True)
class Problem:
    reason: str
    message: str
    wait: bool = False  # may resolve itself: retried until the timeout


def _provider_ref(provider: Provider | None, fallback: str) -> str:
    if provider is None:
        return fallback
    return f"{provider.metadata.namespace or 'default'}/{provider.metadata.name}"


def _ready(provider: Provider) -> tuple[bool, str]:
    status = provider.status
    if status is None or status.ready is None:
        return False, "not checked yet"
    return bool(status.ready), status.message or "no message"


def _bound(p: Pass, out: list[Problem]) -> str | None:
    """The source VM id, once the VirtualMachine exists and is bound."""
    if p.obs.source_object is None:
        out.append(
            Problem("SourceNotFound", f"source VirtualMachine {p.source_ref} not found", True)
        )
        return None
    vm_id = p.source_vm_id()
    if vm_id is None:
        out.append(
            Problem(
                "SourceNotBound",
                f"source VirtualMachine {p.source_ref} is not bound to a VM yet "
                "(neither status.id nor spec.vmId is set)",
                True,
            )
        )
    return vm_id


def _source(p: Pass, out: list[Problem]) -> pb.VM | None:
    vm_id = _bound(p, out)
    if vm_id is None or p.obs.source_object is None:
        return None
    ref = p.obs.source_object.spec.provider_ref
    name = f"{ref.namespace_or(p.spec.source_namespace)}/{ref.name}"
    provider = p.obs.source_provider
    if provider is None:
        out.append(Problem("SourceProviderNotFound", f"source Provider {name} not found", True))
        return None
    ok, why = _ready(provider)
    if not ok:
        out.append(
            Problem("SourceProviderNotReady", f"source Provider {name} is not ready: {why}", True)
        )
        return None
    described = p.obs.source_vm
    if isinstance(described, pb.VM):
        return described
    if isinstance(described, RpcFailure) and described.code == pb.ERROR_CODE_NOT_FOUND:
        message = f"source VM {vm_id} not found on Provider {name}: {described.message}"
        out.append(Problem("SourceVMNotFound", message))
    else:
        message = (
            f"cannot describe source VM {vm_id} on Provider {name}: {described or 'no answer'}"
        )
        out.append(Problem("SourceUnreachable", message, True))
    return None


def _target_provider(p: Pass, out: list[Problem]) -> bool:
    provider = p.obs.target_provider
    if provider is None:
        out.append(
            Problem(
                "TargetProviderNotFound", f"target Provider {p.target_provider_ref} not found", True
            )
        )
        return False
    ok, why = _ready(provider)
    if not ok:
        out.append(
            Problem(
                "TargetProviderNotReady",
                f"target Provider {p.target_provider_ref} is not ready: {why}",
                True,
            )
        )
    return ok


def _backend(
    p: Pass, side: str, caps: pb.Capabilities | RpcFailure | None, ref: str, out: list[Problem]
) -> None:
    if not isinstance(caps, pb.Capabilities):
        out.append(
            Problem(
                "CapabilitiesUnavailable",
                f"cannot read the capabilities of {side} Provider {ref}: {caps or 'no answer'}",
                True,
            )
        )
        return
    wanted = naming.BACKENDS[p.spec.storage.type]
    if caps.storage_backends and wanted not in caps.storage_backends:
        have = ", ".join(
            naming.BACKEND_TYPES[b].value
            for b in caps.storage_backends
            if b in naming.BACKEND_TYPES
        )
        out.append(
            Problem(
                "StorageUnsupported",
                f"{side} Provider {ref} cannot use {p.spec.storage.type.value} storage "
                f"(it supports: {have})",
            )
        )
    if side == "source" and pb.FEATURE_SNAPSHOTS not in caps.features:
        out.append(
            Problem("SnapshotsUnsupported", f"source Provider {ref} does not support snapshots")
        )


def _storage(p: Pass, out: list[Problem]) -> None:
    try:
        p.spec.storage.check_rules("spec.storage")
        naming.object_key(p.migration, "disk", "raw")
    except errors.InvalidArgument as exc:
        out.append(Problem("InvalidStorage", str(exc)))
        return
    source_name = _provider_ref(p.obs.source_provider, "(unknown)")
    if p.obs.source_provider is not None:
        _backend(p, "source", p.obs.source_caps, source_name, out)
    if p.obs.target_provider is not None:
        _backend(p, "target", p.obs.target_caps, p.target_provider_ref, out)


def _secret(p: Pass, out: list[Problem]) -> None:
    ref = p.spec.storage.credentials_secret_ref
    if ref is not None and p.obs.secret_found is False:
        name = f"{ref.namespace_or(p.namespace)}/{ref.name}"
        out.append(Problem("SecretNotFound", f"credentials Secret {name} not found", True))


def _target(p: Pass, vm: pb.VM | None, out: list[Problem]) -> None:
    found = p.obs.target_object
    if found is not None and not target.is_ours(p.migration, found):
        out.append(Problem("TargetExists", f"target VirtualMachine {p.target_ref} already exists"))
    checked = p.obs.validation
    if isinstance(checked, RpcFailure) or (checked is None and vm is not None):
        out.append(
            Problem(
                "TargetUnreachable",
                f"cannot validate on target Provider {p.target_provider_ref}: "
                f"{checked or 'no answer'}",
                True,
            )
        )
    elif checked is not None and not checked.ok:
        out.append(_failed_checks(p.target_provider_ref, [c for c in checked.checks if not c.ok]))
    src, tgt = p.obs.source_caps, p.obs.target_caps
    if vm is None or not isinstance(src, pb.Capabilities) or not isinstance(tgt, pb.Capabilities):
        return
    desired = p.spec.target_disk_format.value if p.spec.target_disk_format else None
    for disk in vm.disks:
        if disk.device != pb.DISK_DEVICE_CDROM:
            plan = formats.choose(disk.format, desired, src, tgt)
            if isinstance(plan, str):
                out.append(Problem("FormatUnsupported", f"disk {disk.id}: {plan}"))


def _failed_checks(ref: str, failed: list[pb.ValidationCheck]) -> Problem:
    """One problem for the target's failed Validate checks, named after the first kind
    that failed. A failed ``connection`` (the hypervisor unreachable, or refusing the
    login) may be an outage: it is waited for until the validation timeout, and the
    checks it left undone are not listed."""
    connection = [c for c in failed if c.name == "connection"]
    if connection:
        message = f"target Provider {ref} cannot reach its hypervisor: {connection[0].message}"
        return Problem("TargetUnreachable", message, True)
    storage = [c for c in failed if c.name == "intermediate-storage"]
    if storage:
        return _storage_problem(ref, storage[0].message)
    kinds = (
        ("storage", "TargetStorageInvalid"),
        ("network", "TargetNetworkInvalid"),
    )
    first = failed[0].name.partition(":")[0]
    reason = next((r for prefix, r in kinds if first.startswith(prefix)), "TargetValidationFailed")
    details = "; ".join(c.message or c.name for c in failed)
    return Problem(reason, f"target Provider {ref}: {details}")


_STORAGE_REASONS = {
    "UNAUTHENTICATED": "StorageAuthenticationFailed",
    "PERMISSION_DENIED": "StoragePermissionDenied",
    "NOT_FOUND": "StorageNotFound",
}
_STORAGE_OUTAGES = ("UNAVAILABLE", "TIMEOUT", "OUT_OF_SPACE")


def _storage_problem(ref: str, message: str) -> Problem:
    """The storage probe failed: a refusal fails the migration before anything moved;
    an outage is waited for until the validation timeout."""
    code = message.partition(":")[0]
    text = f"target Provider {ref} cannot use the intermediate storage: {message}"
    if code in _STORAGE_OUTAGES:
        return Problem("StorageUnreachable", text, True)
    return Problem(_STORAGE_REASONS.get(code, "StorageInvalid"), text)


def _conflicts(p: Pass, out: list[Problem]) -> None:
    mine = (
        p.migration.metadata.creation_timestamp or p.now,
        p.namespace,
        p.migration.metadata.name,
    )
    for other in sorted(p.obs.others, key=lambda o: (o.created or p.now, o.namespace, o.name)):
        if other.deleting or other.phase in TERMINAL_PHASES:
            continue
        if (other.created or p.now, other.namespace, other.name) < mine:
            out.append(
                Problem(
                    "ConflictingMigration",
                    f"source VirtualMachine {p.source_ref} is already being migrated by "
                    f"VMMigration {other.namespace}/{other.name} (created earlier)",
                )
            )
            return


def problems(p: Pass) -> tuple[list[Problem], pb.VM | None]:
    out: list[Problem] = []
    vm = _source(p, out)
    _target_provider(p, out)
    _storage(p, out)
    _secret(p, out)
    _target(p, vm, out)
    _conflicts(p, out)
    return out, vm


def step(p: Pass) -> None:
    found, vm = problems(p)
    definite = [x for x in found if not x.wait]
    started = p.status.start_time or p.now
    expired = (p.now - started).total_seconds() > p.settings.validation_timeout
    if definite or (found and expired):
        bad = definite or found
        message = "; ".join(x.message for x in bad)
        p.condition("Validated", False, bad[0].reason, message)
        p.fail("ValidationFailed", message)
        return
    if found:
        p.condition("Validated", False, found[0].reason, "; ".join(x.message for x in found))
        p.status.message = f"waiting: {found[0].message}"
        p.wait()
        return
    assert vm is not None
    _passed(p, vm)


def _passed(p: Pass, vm: pb.VM) -> None:
    plans, hint_notes = target.map_nics(
        list(vm.nics), p.spec.target_network_hints, _default_network(p)
    )
    notes = [plan.note for plan in plans if plan.note] + hint_notes
    message = "Source VM and target provider validated"
    p.condition("Validated", True, "ValidationSuccessful", "; ".join([message, *notes]))
    p.event("ValidationSuccessful", message)
    for note in notes:
        p.event("NetworkNotMapped", note, warning=True)
    snapshot.enter(p, vm)


def _default_network(p: Pass) -> str | None:
    provider = p.obs.target_provider
    return provider.spec.defaults.network if provider and provider.spec.defaults else None


def start(p: Pass) -> None:
    """Pending -> Validating."""
    p.status.start_time = p.status.start_time or p.now
    p.enter(MigrationPhase.VALIDATING, "Validating source, target and storage")
    p.condition(
        "Validated",
        False,
        "ValidationInProgress",
        "Validating source VM, target provider and storage",
    )
    p.event("ValidationStarted", "Source VM validation started")
    p.requeue(0)
