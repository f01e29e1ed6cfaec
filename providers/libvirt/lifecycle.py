"""CreateVM, DeleteVM and Power on libvirt.

CreateVM checks everything first (name free, pools, volumes, networks, bus, firmware)
and only then changes anything: clone image volumes, grow volumes, define the
domain, start it. Each change pushes its undo; a failure or cancel anywhere runs
the undos in reverse, so a failed CreateVM leaves no defined domain and no cloned
volume (imported volumes belong to the caller and are never deleted).

Power: ON starts (or resumes / wakes) the domain; OFF is a hard power off
(``destroy``); SHUTDOWN asks the guest (ACPI) and forces the power off when the
guest has not stopped within the timeout; REBOOT is a cold reboot -- SHUTDOWN as
above, then start -- which gives the VM a fresh QEMU process and is observable (the
domain id changes), unlike an ACPI reboot request a guest may silently ignore.
Waiting polls the domain state and wakes up at once when the task is cancelled.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from providers.libvirt import domxml, names, placement, snapxml, volxml
from providers.libvirt.client import LibvirtClient
from providers.runtime.tasks import TaskContext
from virtrigaud import errors
from virtrigaud.logging import get_logger

log = get_logger("virtrigaud.libvirt")

DEFAULT_SHUTDOWN_TIMEOUT = 120.0
POLL_SECONDS = 0.2
_EXTENSIONS = {"qcow2": ".qcow2", "raw": ".img"}


@dataclass(frozen=True)
class DiskRequest:
    image: str = ""  # ImageRef.name
    image_path: str = ""  # ImageRef.path
    imported: str = ""  # ImportedDisk.disk_id
    format: str = ""  # ImportedDisk.format ("" = the volume's own)
    bus: str = ""
    size: int = 0  # grow to this virtual size (0 = keep)


@dataclass(frozen=True)
class NicRequest:
    network: str
    mac: str = ""
    model: str = ""
    vlan: int = 0


@dataclass(frozen=True)
class CreateRequest:
    name: str
    cpu: int
    memory_mib: int
    firmware: str = "bios"  # bios | efi
    disks: Sequence[DiskRequest] = ()
    nics: Sequence[NicRequest] = ()
    storage_hint: str = ""
    power_on: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class HostFacts:
    virt_type: str  # qemu | kvm
    uefi: bool  # UEFI firmware (OVMF) installed
    default_pool: str
    image_pool: str = ""


@dataclass(frozen=True)
class _DiskStep:
    """A resolved disk: an existing volume, or a clone to make."""

    index: int
    pool: str
    source_key: str  # existing volume key (attach it) or base volume key (clone it)
    format: str
    bus: str
    grow_to: int
    capacity: int
    block: bool
    clone_name: str = ""  # set when the disk is a clone


class _Undo:
    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], None]]] = []

    def push(self, what: str, step: Callable[[], None]) -> None:
        self._steps.append((what, step))

    def run(self) -> None:
        for what, step in reversed(self._steps):
            try:
                step()
            except errors.VirtrigaudError as exc:
                log.warning("create_vm_undo_failed", step=what, error=exc.message)
        self._steps.clear()


def _resolve_disk(
    client: LibvirtClient, req: CreateRequest, facts: HostFacts, index: int, disk: DiskRequest
) -> _DiskStep:
    field_name = f"disks[{index}]"
    bus = placement.check_bus(disk.bus, f"{field_name}.bus")
    if disk.imported:
        pool, vol = placement.existing_volume(
            client, disk.imported, f"{field_name}.imported.disk_id"
        )
        fmt = placement.disk_format(vol, disk.format, f"{field_name}.imported")
        return _DiskStep(
            index, pool, vol.key or vol.path, fmt, bus, disk.size, vol.capacity, vol.type == "block"
        )
    target = placement.active_pool(client, req.storage_hint or facts.default_pool, "storage_hint")
    ref = disk.image_path or disk.image
    image_pool = facts.image_pool or target.name
    _, base = placement.existing_volume(client, ref, f"{field_name}.image", image_pool)
    fmt = placement.disk_format(base, "", f"{field_name}.image")
    clone = names.check_safe(
        f"{names.slug(req.name)}-disk{index}{_EXTENSIONS[fmt]}", f"{field_name} (volume name)"
    )
    if client.find_volume(target.name, clone) is not None:
        raise errors.AlreadyExists(
            f"{field_name}: volume {clone!r} already exists in pool {target.name!r}"
        )
    if target.type not in ("dir", "fs", "netfs"):
        raise errors.Unsupported(f"storage_hint: cloning into {target.type} pools")
    return _DiskStep(
        index, target.name, base.key or base.path, fmt, bus, disk.size, base.capacity, False, clone
    )


def _resolve_nic(client: LibvirtClient, index: int, nic: NicRequest) -> domxml.NicPlan:
    field_name = f"nics[{index}]"
    if nic.vlan:
        raise errors.Unsupported(
            f"{field_name}.vlan_id: VLAN tagging is not set per NIC on libvirt; map the NIC "
            "to a network or bridge that carries the VLAN"
        )
    attachment = placement.resolve_network(client, nic.network, f"{field_name}.network")
    return domxml.NicPlan(
        kind=attachment.kind,
        source=attachment.name,
        mac=names.check_mac(nic.mac, f"{field_name}.mac") if nic.mac else "",
        model=names.check_model(nic.model or "virtio", f"{field_name}.model"),
    )


def create_vm(client: LibvirtClient, req: CreateRequest, facts: HostFacts, ctx: TaskContext) -> str:
    """Create the domain (and its cloned disks); returns its UUID."""
    ctx.set_stage("checking")
    if client.uuid_of(req.name) is not None:
        raise errors.AlreadyExists(f"name: a VM called {req.name!r} already exists")
    if req.firmware == "efi" and not facts.uefi:
        raise errors.Unsupported(
            "firmware: UEFI requested but the host has no UEFI firmware (install OVMF)"
        )
    for key in req.labels:
        if not key:
            raise errors.InvalidArgument("labels: empty key")
    steps = [_resolve_disk(client, req, facts, i, d) for i, d in enumerate(req.disks)]
    for step in steps:
        if 0 < step.grow_to < step.capacity:
            raise errors.InvalidArgument(
                f"disks[{step.index}].size_bytes: {step.grow_to} is smaller than the "
                f"volume ({step.capacity} bytes); disks are never shrunk"
            )
    nics = [_resolve_nic(client, i, n) for i, n in enumerate(req.nics)]
    undo = _Undo()
    try:
        paths = [_materialize(client, step, undo, ctx) for step in steps]
        targets = domxml.target_names([s.bus for s in steps])
        plan = domxml.DomainPlan(
            name=req.name,
            vcpus=req.cpu,
            memory_mib=req.memory_mib,
            virt_type=facts.virt_type,
            firmware=req.firmware,
            disks=[
                domxml.DiskPlan(path, s.format, s.bus, t, s.block, boot_order=1 if i == 0 else 0)
                for i, (s, path, t) in enumerate(zip(steps, paths, targets, strict=True))
            ],
            nics=nics,
            labels=req.labels,
        )
        ctx.check_cancelled()
        ctx.set_stage("defining")
        vm_id = client.define(domxml.build_domain(plan))
        undo.push("undefine", lambda: client.undefine(vm_id))
        if req.power_on:
            ctx.check_cancelled()
            ctx.set_stage("starting")
            client.power_call(vm_id, "start")
            undo.push("destroy", lambda: _force_off(client, vm_id))
    except BaseException:
        undo.run()
        raise
    log.info("vm_created", vm_id=vm_id, disks=len(steps), nics=len(nics))
    return vm_id


def _materialize(client: LibvirtClient, step: _DiskStep, undo: _Undo, ctx: TaskContext) -> str:
    """Clone / grow the volume of one disk; returns the path to attach."""
    ctx.check_cancelled()
    key = step.source_key
    if step.clone_name:
        ctx.set_stage(f"cloning disk {step.index}")
        xml = _volume_xml(step)
        cloned = client.create_volume(step.pool, xml, clone_of=step.source_key)
        key = cloned.key or cloned.path
        undo.push(f"delete {step.clone_name}", lambda: client.delete_volume(key))
    if step.grow_to > step.capacity:
        ctx.set_stage(f"resizing disk {step.index}")
        client.resize_volume(key, step.grow_to)
    _, vol = client.volume_by_key(key)
    return vol.path


def _volume_xml(step: _DiskStep) -> str:
    return volxml.build_volume(step.clone_name, step.capacity, step.format, allocation=None)


def _force_off(client: LibvirtClient, vm_id: str) -> None:
    state, _ = client.state(vm_id)
    if state != "shutoff":
        client.power_call(vm_id, "destroy")


# -- delete -------------------------------------------------------------------------


def _disk_volumes(client: LibvirtClient, vm_id: str, parsed: domxml.DomainXml) -> list[str]:
    """Paths of the VM's disks: current sources, plus bases under virtrigaud overlays."""
    paths: list[str] = []
    for disk in parsed.disks:
        if disk.device == "disk" and disk.path:
            paths.append(disk.path)
        elif disk.device == "disk" and disk.source_type == "volume":
            try:
                paths.append(client.volume(disk.pool, disk.volume).path)
            except errors.NotFound:
                log.warning("disk_volume_already_gone", vm_id=vm_id, volume=disk.volume)
    for xml in client.snapshot_xmls(vm_id):
        snap = snapxml.parse_snapshot(xml)
        if snap.external and snap.domain is not None:
            paths.extend(d.path for d in snap.domain.disks if d.device == "disk" and d.path)
            paths.extend(d.overlay for d in snap.disks if d.mode == "external" and d.overlay)
    return list(dict.fromkeys(paths))


def delete_vm(client: LibvirtClient, vm_id: str, delete_disks: bool, ctx: TaskContext) -> None:
    record = client.domain(vm_id)
    parsed = domxml.parse_domain(record.xml)
    paths = _disk_volumes(client, vm_id, parsed) if delete_disks else []
    if record.state != "shutoff":
        ctx.set_stage("powering off")
        client.power_call(vm_id, "destroy")
    ctx.set_stage("undefining")
    client.undefine(vm_id)
    for path in paths:
        ctx.set_stage(f"deleting {path}")
        try:
            client.delete_volume(path)
        except errors.NotFound:
            log.warning("disk_not_in_a_pool_left_in_place", vm_id=vm_id, path=path)
    log.info("vm_deleted", vm_id=vm_id, volumes_deleted=len(paths))


# -- power --------------------------------------------------------------------------


def _wait_off(client: LibvirtClient, vm_id: str, timeout: float, ctx: TaskContext) -> bool:
    """Wait until the domain is off; False on timeout. Cancel interrupts the wait."""
    deadline = time.monotonic() + timeout
    while True:
        state, _ = client.state(vm_id)
        if state == "shutoff":
            return True
        if time.monotonic() >= deadline:
            return False
        if ctx.cancel_event.wait(POLL_SECONDS):
            raise errors.Cancelled(f"waiting for VM {vm_id} to shut down: cancelled")


def shutdown(client: LibvirtClient, vm_id: str, timeout: float, ctx: TaskContext) -> None:
    state, _ = client.state(vm_id)
    if state == "shutoff":
        return
    ctx.set_stage("shutting down")
    if state == "running":
        with contextlib.suppress(errors.FailedPrecondition):  # stopped meanwhile
            client.power_call(vm_id, "shutdown")
    if not _wait_off(client, vm_id, timeout, ctx):
        log.info("graceful_shutdown_timed_out_forcing", vm_id=vm_id, timeout=timeout)
        ctx.set_stage("forcing power off")
        _force_off(client, vm_id)


def power(client: LibvirtClient, vm_id: str, action: str, timeout: float, ctx: TaskContext) -> None:
    """action: on | off | shutdown | reboot."""
    timeout = timeout or DEFAULT_SHUTDOWN_TIMEOUT
    state, _ = client.state(vm_id)
    if action == "on":
        call = {"running": None, "paused": "resume", "pmsuspended": "wakeup"}.get(state, "start")
        if call:
            ctx.set_stage("starting")
            client.power_call(vm_id, call)
    elif action == "off":
        if state != "shutoff":
            ctx.set_stage("powering off")
            client.power_call(vm_id, "destroy")
    elif action == "shutdown":
        shutdown(client, vm_id, timeout, ctx)
    elif action == "reboot":
        if state == "shutoff":
            raise errors.FailedPrecondition(f"VM {vm_id} is off; use ON to start it")
        shutdown(client, vm_id, timeout, ctx)
        ctx.check_cancelled()
        ctx.set_stage("starting")
        client.power_call(vm_id, "start")
    else:
        raise errors.InvalidArgument(f"action: unknown power action {action!r}")
