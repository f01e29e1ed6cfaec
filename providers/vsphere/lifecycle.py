"""CreateVM, DeleteVM and Power.

CreateVM builds the VM in the datastore of the request's ``storage_hint`` (else the
``datastore`` option), in the configured resource pool and VM folder:

* disks from ``ImportedDisk``: the datastore path ImportDisk returned
  (``[ds] folder/name.vmdk``) is attached as it is (no copy) with an explicit capacity
  -- the request's size, else the size the descriptor's extents give;
* a disk from an ``ImageRef``: the named VM or template (``name``, or its inventory
  path in ``path``) is cloned with all its disks; CPU, memory and firmware are set and
  its NICs replaced by the requested ones. At most one image disk, and it must be the
  first (the boot disk); imported disks after it are attached to the clone;
* NICs: one per ``NicSpec`` on the named portgroup (distributed or standard), with the
  requested MAC (manual) or a generated one;
* labels become the VM's notes. ``power_on`` starts it at the end.

If anything fails (or the task is cancelled) after the VM exists, the VM is removed
again -- with imported disks detached first, so they survive for a retry.

DeleteVM powers the VM off and destroys it; without ``delete_disks`` its disks are
detached first and stay on the datastore. Power: ON / OFF directly; SHUTDOWN asks
the guest (VMware Tools) and powers off after the timeout, or at once without Tools;
REBOOT asks the guest, else resets.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from providers.runtime.tasks import TaskContext
from providers.vsphere import dspath, placement, specs, tasks, vmdk
from providers.vsphere.client import VSphereClient, vim
from providers.vsphere.dshttp import DatastoreFiles
from providers.vsphere.settings import Settings
from virtrigaud import errors
from virtrigaud.logging import get_logger

log = get_logger("virtrigaud.vsphere")

POLL_SECONDS = 1.0
DEFAULT_GRACE = 120.0


@dataclass(frozen=True)
class DiskRequest:
    imported: str = ""  # datastore path of an imported disk
    image: str = ""  # VM / template name
    image_path: str = ""  # VM / template inventory path
    size: int = 0  # requested capacity (0 = the disk's own)
    bus: str = ""


@dataclass(frozen=True)
class NicRequest:
    network: str
    mac: str = ""
    model: str = ""
    vlan: int = 0  # refused when set: on vSphere the portgroup carries the VLAN


@dataclass(frozen=True)
class CreateRequest:
    name: str
    cpu: int
    memory_mib: int
    firmware: str  # bios | efi
    disks: tuple[DiskRequest, ...]
    nics: tuple[NicRequest, ...]
    storage_hint: str
    power_on: bool
    labels: dict[str, str]


def vm_ref(client: VSphereClient, vm_id: str) -> Any:
    """The VM's reference, NotFound if there is no such VM."""
    ref = client.ref(vim.VirtualMachine, vm_id)
    try:
        client.properties(ref, ["name"], f"VM {vm_id}")
    except errors.NotFound as exc:
        raise errors.NotFound(f"VM {vm_id!r} not found") from exc
    return ref


def _run(client: VSphereClient, what: str, start: Any, ctx: TaskContext | None = None) -> Any:
    task = client.call(lambda _c: start(), what)
    return tasks.wait(client, task, what, ctx=ctx)


# -- create ------------------------------------------------------------------------


def _nic_plans(
    client: VSphereClient,
    tree: placement.Placement,
    dc: placement.Node,
    nics: tuple[NicRequest, ...],
) -> list[specs.NicPlan]:
    plans = []
    for index, nic in enumerate(nics):
        if nic.vlan:
            # A VLAN is a property of the portgroup here; dropping the tag silently
            # would put the VM on whatever segment the portgroup is.
            raise errors.Unsupported(
                f"nics[{index}].vlan_id: VLAN {nic.vlan} is not set per NIC on vSphere; "
                "map the NIC to a portgroup that carries that VLAN"
            )
        specs.nic_class(nic.model, f"nics[{index}].model")
        node = tree.network(dc, nic.network)
        dvs_uuid = key = ""
        if isinstance(node.ref, vim.dvs.DistributedVirtualPortgroup):
            props = client.properties(
                node.ref, ["key", "config.distributedVirtualSwitch"], f"portgroup {node.name}"
            )
            key = str(props.get("key", node.ref._moId))
            switch = props.get("config.distributedVirtualSwitch")
            if switch is None:
                raise errors.FailedPrecondition(f"portgroup {node.name!r} has no switch")
            dvs_uuid = str(client.properties(switch, ["uuid"], "distributed switch")["uuid"])
        elif isinstance(node.ref, vim.OpaqueNetwork):
            raise errors.Unsupported(f"nics[{index}]: opaque (NSX) network {nic.network!r}")
        plans.append(specs.NicPlan(node.ref, node.name, dvs_uuid, key, nic.mac, nic.model))
    return plans


def _disk_capacity(files: DatastoreFiles, path: dspath.DsPath, requested: int) -> int:
    """The requested capacity, else the sum of the descriptor's extents."""
    desc = vmdk.parse(files.read_small(path, vmdk.MAX_DESCRIPTOR), str(path))
    own = desc.capacity
    if requested and requested < own:
        raise errors.InvalidArgument(
            f"disk {path}: size_bytes {requested} is smaller than the disk ({own} bytes)"
        )
    return max(requested, own)


def _find_template(client: VSphereClient, disk: DiskRequest) -> Any:
    if disk.image_path:
        found = client.call(
            lambda c: c.searchIndex.FindByInventoryPath(disk.image_path), "finding the image"
        )
        if found is None or not isinstance(found, vim.VirtualMachine):
            raise errors.NotFound(f"image {disk.image_path!r}: no VM or template at that path")
        return found
    matches = [
        o.ref
        for o in client.retrieve_all({vim.VirtualMachine: ["name"]}, "finding the image")
        if placement.display_name(o.props.get("name")) == disk.image
    ]
    if not matches:
        raise errors.NotFound(f"image {disk.image!r}: no VM or template of that name")
    if len(matches) > 1:
        raise errors.InvalidArgument(
            f"image {disk.image!r}: {len(matches)} VMs have that name; give its path"
        )
    return matches[0]


def _existing_devices(client: VSphereClient, vm: Any) -> list[Any]:
    props = client.properties(vm, ["config.hardware.device"], "reading the new VM")
    return list(props.get("config.hardware.device") or ())


def create_vm(
    client: VSphereClient, settings: Settings, request: CreateRequest, ctx: TaskContext
) -> str:
    ctx.set_stage("checking")
    if not request.disks:
        raise errors.InvalidArgument("disks: at least one disk is required")
    images = [i for i, d in enumerate(request.disks) if not d.imported]
    if len(images) > 1 or (images and images[0] != 0):
        raise errors.InvalidArgument(
            "disks: at most one image disk, and it must be the first (it is cloned whole)"
        )
    tree = placement.read(client)
    target = placement.target(client, settings, request.storage_hint, tree)
    dc = target.datacenter
    pool = tree.resource_pool(dc, settings.resource_pool, settings.cluster)
    folder = tree.vm_folder(dc, settings.folder)
    nics = _nic_plans(client, tree, dc, request.nics)
    imported: list[specs.DiskPlan] = []
    with DatastoreFiles(client, target.datacenter_path) as files:
        for index, disk in enumerate(request.disks):
            if not disk.imported:
                continue
            path = dspath.parse(disk.imported, f"disks[{index}].imported.disk_id")
            bus = specs.bus_of(disk.bus, f"disks[{index}].bus")
            try:
                capacity = _disk_capacity(files, path, disk.size)
            except errors.NotFound as exc:
                raise errors.NotFound(f"disks[{index}]: imported disk {path} not found") from exc
            imported.append(specs.DiskPlan(str(path), capacity, bus))
    ctx.check_cancelled()
    template = _find_template(client, request.disks[0]) if images else None
    firmware = "efi" if request.firmware == "efi" else "bios"
    ctx.set_stage("creating")
    if template is None:
        devices = specs.DeviceBuilder()
        for plan in imported:
            devices.add_existing_disk(plan)
        for index, nic in enumerate(nics):
            devices.add_nic(nic, f"nics[{index}]")
        config = specs.config_spec(
            request.name,
            cpu=request.cpu,
            memory_mib=request.memory_mib,
            firmware=firmware,
            datastore=target.datastore.name,
            devices=devices,
            labels=request.labels,
        )
        vm = _run(
            client,
            f"creating VM {request.name!r}",
            lambda: folder.ref.CreateVM_Task(config=config, pool=pool.ref),
            ctx,
        )
    else:
        vm = _clone(
            client,
            request,
            template=template,
            folder=folder,
            pool=pool,
            target=target,
            firmware=firmware,
        )
    keep = [plan.path for plan in imported]
    try:
        if template is not None:
            _finish_clone(client, vm, request, firmware=firmware, imported=imported, nics=nics)
        ctx.check_cancelled()
        if request.power_on:
            ctx.set_stage("powering on")
            _run(client, "powering on", vm.PowerOnVM_Task)
    except BaseException:
        _destroy_keeping(client, vm, keep)
        raise
    log.info("vm_created", vm_id=vm._moId, name=request.name, disks=len(request.disks))
    return str(vm._moId)


def _clone(
    client: VSphereClient,
    request: CreateRequest,
    *,
    template: Any,
    folder: placement.Node,
    pool: placement.Node,
    target: placement.Target,
    firmware: str,
) -> Any:
    spec = vim.vm.CloneSpec(
        location=vim.vm.RelocateSpec(pool=pool.ref, datastore=target.datastore.ref),
        powerOn=False,
        template=False,
    )
    return _run(
        client,
        f"cloning {request.disks[0].image or request.disks[0].image_path!r}",
        lambda: template.CloneVM_Task(folder=folder.ref, name=request.name, spec=spec),
    )


def _finish_clone(
    client: VSphereClient,
    vm: Any,
    request: CreateRequest,
    *,
    firmware: str,
    imported: list[specs.DiskPlan],
    nics: list[specs.NicPlan],
) -> None:
    """Set CPU/memory/firmware, replace the clone's NICs, grow its boot disk, attach
    the imported disks."""
    existing = _existing_devices(client, vm)
    devices = specs.DeviceBuilder(
        taken_buses={
            bus: {int(d.busNumber) for d in existing if isinstance(d, cls)}
            for bus, cls in specs.CONTROLLER_CLASSES.items()
        }
    )
    for dev in existing:
        if isinstance(dev, vim.vm.device.VirtualEthernetCard):
            devices.changes.append(
                vim.vm.device.VirtualDeviceSpec(operation=specs.Remove, device=dev)
            )
    wanted = request.disks[0].size
    disks = [d for d in existing if isinstance(d, vim.vm.device.VirtualDisk)]
    if wanted and disks:
        first = min(disks, key=lambda d: (d.controllerKey, d.unitNumber or 0))
        current = int(first.capacityInKB) * specs.KIB
        if wanted > current:
            first.capacityInKB = -(-wanted // specs.KIB)
            first.capacityInBytes = wanted
            devices.changes.append(
                vim.vm.device.VirtualDeviceSpec(operation=specs.Edit, device=first)
            )
    for plan in imported:
        devices.add_existing_disk(plan)
    for index, nic in enumerate(nics):
        devices.add_nic(nic, f"nics[{index}]")
    # CPU, memory, firmware and notes are set here rather than in the CloneSpec: vcsim
    # ignores CloneSpec.config, and one reconfiguration works the same everywhere.
    spec = vim.vm.ConfigSpec(
        numCPUs=request.cpu,
        memoryMB=request.memory_mib,
        firmware=firmware,
        annotation=specs.annotation(request.labels) or None,
        deviceChange=devices.changes,
    )
    _run(client, "configuring the clone", lambda: vm.ReconfigVM_Task(spec=spec))


def _destroy_keeping(client: VSphereClient, vm: Any, keep: list[str]) -> None:
    """Remove a VM this provider just made, detaching ``keep`` disks first (best effort)."""
    try:
        _power_off_if_on(client, vm)
        _detach_disks(client, vm, set(keep))
        _run(client, "removing the unfinished VM", vm.Destroy_Task)
    except errors.VirtrigaudError as exc:
        log.warning("create_cleanup_failed", vm_id=vm._moId, error=exc.message)


def _detach_disks(client: VSphereClient, vm: Any, paths: set[str] | None) -> None:
    """Detach disks (all, or those at ``paths``) without touching their files."""
    changes = [
        vim.vm.device.VirtualDeviceSpec(operation=specs.Remove, device=dev)
        for dev in _existing_devices(client, vm)
        if isinstance(dev, vim.vm.device.VirtualDisk)
        and (paths is None or getattr(dev.backing, "fileName", None) in paths)
    ]
    if changes:
        spec = vim.vm.ConfigSpec(deviceChange=changes)
        _run(client, "detaching disks", lambda: vm.ReconfigVM_Task(spec=spec))


# -- delete ------------------------------------------------------------------------


def _power_state(client: VSphereClient, vm: Any) -> str:
    return str(
        client.properties(vm, ["runtime.powerState"], "reading power state").get(
            "runtime.powerState", ""
        )
    )


def _power_off_if_on(client: VSphereClient, vm: Any) -> None:
    if _power_state(client, vm) != "poweredOff":
        try:
            _run(client, "powering off", vm.PowerOffVM_Task)
        except errors.FailedPrecondition:
            if _power_state(client, vm) != "poweredOff":
                raise


def delete_vm(client: VSphereClient, vm_id: str, delete_disks: bool, ctx: TaskContext) -> None:
    vm = vm_ref(client, vm_id)
    ctx.set_stage("powering off")
    _power_off_if_on(client, vm)
    if not delete_disks:
        ctx.set_stage("detaching disks")
        _detach_disks(client, vm, None)
    ctx.set_stage("destroying")
    _run(client, f"destroying VM {vm_id}", vm.Destroy_Task)
    log.info("vm_deleted", vm_id=vm_id, disks_deleted=delete_disks)


# -- power -------------------------------------------------------------------------


def _tools_running(client: VSphereClient, vm: Any) -> bool:
    props = client.properties(vm, ["guest.toolsRunningStatus"], "reading VMware Tools state")
    return props.get("guest.toolsRunningStatus") == "guestToolsRunning"


def _wait_off(client: VSphereClient, vm: Any, timeout: float, ctx: TaskContext) -> bool:
    deadline = time.monotonic() + timeout
    while _power_state(client, vm) != "poweredOff":
        if time.monotonic() >= deadline:
            return False
        if ctx.cancel_event.wait(POLL_SECONDS):
            raise errors.Cancelled("shutdown wait cancelled")
    return True


def power(client: VSphereClient, vm_id: str, action: str, grace: float, ctx: TaskContext) -> None:
    vm = vm_ref(client, vm_id)
    state = _power_state(client, vm)
    ctx.set_stage(action)
    if action == "on":
        if state != "poweredOn":
            _run(client, "powering on", vm.PowerOnVM_Task, ctx)
    elif action == "off":
        _power_off_if_on(client, vm)
    elif action == "shutdown":
        if state == "poweredOff":
            return
        if state == "poweredOn" and _tools_running(client, vm):
            client.call(lambda _c: vm.ShutdownGuest(), "asking the guest to shut down")
            if _wait_off(client, vm, grace or DEFAULT_GRACE, ctx):
                return
            log.info("shutdown_timeout_forcing_off", vm_id=vm_id)
        _power_off_if_on(client, vm)
    elif action == "reboot":
        if state != "poweredOn":
            raise errors.FailedPrecondition(f"VM {vm_id} is {state}; only a running VM reboots")
        if _tools_running(client, vm):
            client.call(lambda _c: vm.RebootGuest(), "asking the guest to reboot")
        else:
            _run(client, "resetting", vm.ResetVM_Task, ctx)
    else:
        raise errors.InvalidArgument(f"action: {action!r}")
    log.info("vm_power", vm_id=vm_id, action=action)
