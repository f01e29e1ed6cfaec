"""Creating, ValidatingTarget and Ready.

Creating: the target ``VirtualMachine`` object is created (``target.build_manifest``;
``powerState: Off``); the VirtualMachine controller creates the VM on the target
provider from the imported disks. Created is True (event VMCreated) once that object
has ``status.id``; its ``status.phase: Failed`` fails the migration with its message,
and so does waiting longer than ``Settings.target_vm_timeout``. An existing object of
that name that this migration did not create (``virtrigaud.io/migration-uid``) fails it
too (validation already refuses it; this covers one created in between).

ValidatingTarget (Ready False, reason ValidatingTarget): DescribeVM on the target must
show the migrated disks in order with the source's virtual sizes (the boot disk may be
larger with ``targetResourceHints.disk``) and formats, and the NICs on the mapped
networks; each disk's content digest was compared with the source snapshot's when it
was imported (``disks._import_done``), and the Ready message says per disk whether the
content digest or only the transport digest could be verified (a provider without
FEATURE_CONTENT_DIGEST reports none). With ``targetPowerPolicy: PowerOnAndVerify`` the
target VirtualMachine is then set to ``powerState: On`` and the migration waits until
DescribeVM shows it running (its VirtualMachine failing to power it on, or
``Settings.target_vm_timeout`` after Created, fails the migration with
TargetPowerOnFailed). Then Ready (event MigrationCompleted) and the cleanup policy
starts (``cleanup``).
"""

from __future__ import annotations

from manager.api import (
    DiskMigrationStatus,
    MigrationPhase,
    PowerState,
    TargetPowerPolicy,
    VirtualMachine,
    VMPhase,
    find_condition,
)
from manager.migration import progress, target
from manager.migration.context import Pass
from manager.migration.model import CreateTargetVM, PowerOnTargetVM, RpcFailure
from virtrigaud.provider.v1 import provider_pb2 as pb


def enter_creating(p: Pass) -> None:
    p.enter(MigrationPhase.CREATING, f"Creating VirtualMachine {p.target_ref}")
    p.status.progress = 99
    p.condition("Created", False, "CreatingVM", f"Creating VirtualMachine {p.target_ref}")
    _ensure_target(p)


def _nic_notes(p: Pass) -> list[str]:
    vm = p.obs.source_vm
    if not isinstance(vm, pb.VM):
        return []
    return [n.note for n in target.nic_plans(p.migration, vm, p.obs.target_provider) if n.note]


def _ensure_target(p: Pass) -> bool:
    """True once our target VirtualMachine object exists; creates it when missing."""
    found = p.obs.target_object
    if found is not None:
        if target.is_ours(p.migration, found):
            return True
        p.fail(
            "TargetExists",
            f"target VirtualMachine {p.target_ref} already exists and was not created by "
            "this migration",
        )
        return False
    vm = p.obs.source_vm
    if not isinstance(vm, pb.VM):
        p.status.message = "waiting for the source VM description to build the target VM"
        p.wait()
        return False
    nics = target.nic_plans(p.migration, vm, p.obs.target_provider)
    manifest = target.build_manifest(p.migration, vm, p.status.disks, nics, p.status.checksum)
    p.act(CreateTargetVM(manifest))
    p.poll()
    return False


def creating(p: Pass) -> None:
    if not _ensure_target(p):
        return
    found = p.obs.target_object
    vm_status = found.status if found else None
    if vm_status is not None and vm_status.phase is VMPhase.FAILED:
        p.fail(
            "TargetVMFailed",
            f"target VirtualMachine {p.target_ref} failed: {vm_status.message or 'no message'}",
        )
        return
    if vm_status is not None and vm_status.id:
        notes = "; ".join(_nic_notes(p))
        message = f"Target VM {p.target_ref} created (id {vm_status.id})"
        p.condition("Created", True, "VMCreated", f"{message}; {notes}" if notes else message)
        p.event("VMCreated", "Target VM created successfully")
        p.enter(MigrationPhase.VALIDATING_TARGET, "Validating the target VM")
        p.condition(
            "Ready", False, "ValidatingTarget", "Checking the target VM's disks, NICs and digests"
        )
        p.requeue(0)
        return
    created = find_condition(p.status.conditions, "Created")
    since = created.last_transition_time if created else p.now
    if (p.now - since).total_seconds() > p.settings.target_vm_timeout:
        p.fail(
            "TargetVMTimeout",
            f"target VirtualMachine {p.target_ref} has no VM on the provider after "
            f"{p.settings.target_vm_timeout:.0f}s",
        )
        return
    p.status.message = f"waiting for VirtualMachine {p.target_ref} to be created on the provider"
    p.poll()


def _digest_summary(p: Pass, disks: list[DiskMigrationStatus]) -> str:
    caps = [p.obs.source_caps, p.obs.target_caps]
    both = all(
        isinstance(c, pb.Capabilities) and pb.FEATURE_CONTENT_DIGEST in c.features for c in caps
    )
    content = [d.name for d in disks if both and d.content_checksum]
    transport = [d.name for d in disks if d.name not in content]
    parts = []
    if content:
        parts.append(f"content sha256 matched the source snapshot: {', '.join(content)}")
    if transport:
        parts.append(
            "transport sha256 verified, content digest not reported by the providers: "
            + ", ".join(transport)
        )
    return "; ".join(parts)


def validating_target(p: Pass) -> None:
    found = p.obs.target_object
    if found is None or not target.is_ours(p.migration, found):
        p.fail("TargetVMGone", f"target VirtualMachine {p.target_ref} disappeared")
        return
    described = p.obs.target_vm
    if isinstance(described, RpcFailure) and described.code == pb.ERROR_CODE_NOT_FOUND:
        p.fail("TargetValidationFailed", f"target VM not found: {described.message}")
        return
    if not isinstance(described, pb.VM):
        p.status.message = f"waiting to describe the target VM: {described or 'no answer'}"
        p.wait()
        return
    problems = target.compare_target(p.migration, described, p.status.disks, found.spec.networks)
    unimported = [d.name for d in p.status.disks if not d.imported_disk_id]
    if unimported:
        problems.append(f"disks without an imported disk id: {', '.join(unimported)}")
    if problems:
        p.fail("TargetValidationFailed", "target VM validation failed: " + "; ".join(problems))
        return
    wants_power = p.spec.target_power_policy is TargetPowerPolicy.POWER_ON_AND_VERIFY
    if wants_power and not _seen_running(p, found, described):
        return
    ready(p, "; target VM powered on and seen running" if wants_power else "")


def _seen_running(p: Pass, found: VirtualMachine, described: pb.VM) -> bool:
    """PowerOnAndVerify: True once the target VM runs; asks for it and waits before."""
    if described.power_state == pb.POWER_STATE_ON:
        return True
    ready_cond = find_condition(found.status.conditions, "Ready") if found.status else None
    if ready_cond is not None and ready_cond.reason == "PowerFailed":
        p.fail("TargetPowerOnFailed", f"the target VM did not power on: {ready_cond.message}")
        return False
    created = find_condition(p.status.conditions, "Created")
    started = created.last_transition_time if created else None
    if started and (p.now - started).total_seconds() > p.settings.target_vm_timeout:
        p.fail("TargetPowerOnFailed", "the target VM was not seen running in time")
        return False
    if found.spec.power_state is not PowerState.ON:
        p.act(PowerOnTargetVM(p.spec.effective_target_namespace, p.spec.target_name))
    p.status.message = f"Powering on the target VM {p.target_ref} to verify it starts"
    p.poll()
    return False


def ready(p: Pass, note: str = "") -> None:
    st = p.status
    st.phase = MigrationPhase.READY
    st.progress = 100
    st.completion_time = p.now
    summary = _digest_summary(p, st.disks)
    verified = progress.disks(len(st.disks))
    message = f"Migration completed successfully: {verified} verified ({summary}){note}"
    st.message = message
    p.condition("Ready", True, "MigrationCompleted", message)
    p.event("MigrationCompleted", "Migration completed successfully")
    begin_cleanup(p)


def begin_cleanup(p: Pass) -> None:
    """CleanedUp: pending when the cleanup policy has work, else done at once."""
    policy = p.spec.cleanup_policy
    if not (policy.delete_intermediate or policy.delete_snapshot or policy.delete_source):
        p.condition("CleanedUp", True, "NothingToClean", "cleanupPolicy keeps everything")
        return
    p.condition("CleanedUp", False, "CleanupPending", "Applying cleanupPolicy")
    p.requeue(0)
