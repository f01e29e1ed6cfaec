"""CreateVM, DeleteVM and Power through the PVE API.

CreateVM checks everything before it changes anything (name free, storage, bridges,
buses, the imported volumes exist on the node), then:

* **imported disks** (the result of ImportDisk: a volume ``<storage>:import/<name>``
  on a file storage): a fresh vmid from ``GET /cluster/nextid`` and one
  ``POST /nodes/{node}/qemu`` whose drives are ``<storage>:0,import-from=<volume>`` --
  PVE allocates a volume of the image's size on the target storage and copies the
  data into it (qemu-img, on the node). PVE < 8.2 has no ``import`` content type; it
  is given the absolute path instead, which PVE allows to ``root@pam`` only.
  The VM's description lists the import volumes (``virtrigaud-imported: <volume>``):
  they are the imported disks of the contract, which PVE copied rather than
  attached. They stay (DeleteDisk refuses them while the VM exists) unless the
  provider option ``removeImportedAfterCreate`` is true;
* **an image** (``ImageRef``: a template's name or vmid): a full clone of the template
  to the target storage (``POST .../clone``), then the requested CPU, memory,
  firmware and NICs are set on the clone (the template's NICs are replaced). Further
  disks of the request must be imported ones and are added the same way.

The VM's description carries ``virtrigaud-operation: <operation id>`` and the labels,
so a re-submitted CreateVM (after a provider restart lost its task) returns the VM
it already made; any other VM of the same name is a collision (AlreadyExists).
A failure or cancel after the VM exists destroys it again (``purge``), once PVE's own
create/clone task has ended (it holds the VM's lock).

Power: ON starts (or resumes a paused VM); OFF is ``status/stop`` (hard); SHUTDOWN is
``status/shutdown`` with ``forceStop`` after the timeout; REBOOT is a cold reboot
(shutdown as above, then start), like the libvirt provider's.

DeleteVM: a running VM is stopped, then ``DELETE .../qemu/{vmid}?purge=1`` with
``destroy-unreferenced-disks=1``. PVE always destroys a VM's own disks with it; the
import volumes the VM was created from are deleted too with ``delete_disks=true`` and
kept with ``false`` (they are the retained disks). A VM without import volumes to
keep is refused with ``delete_disks=false`` (Unsupported) rather than losing its only
disks silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from providers.proxmox import nodeops, qemuconfig
from providers.proxmox.inventory import vm_config
from providers.proxmox.site import FILE_STORAGE_TYPES, Site, check_vmid, content_dir
from providers.runtime.tasks import TaskContext
from virtrigaud import errors
from virtrigaud.formats import FORMAT_NAMES
from virtrigaud.logging import get_logger
from virtrigaud.provider.v1 import provider_pb2 as pb

log = get_logger("virtrigaud.proxmox")

DEFAULT_SHUTDOWN_TIMEOUT = 120
UNDO_WAIT = 1800.0  # seconds a cancelled CreateVM waits for PVE's task before undoing
MARKER = "virtrigaud-operation: "
IMPORTED = "virtrigaud-imported: "
_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
IMPORT_FROM_VOLUME_MIN = (8, 2)  # the "import" content type and import-from=<volume>


@dataclass(frozen=True)
class ImportedSource:
    volid: str
    path: str  # on the node
    format: str
    size: int


def description(operation_id: str, labels: dict[str, str], imported: list[str]) -> str:
    lines = [f"{MARKER}{operation_id}"]
    lines += [f"{IMPORTED}{volid}" for volid in imported]
    lines += [f"{key}: {value}" for key, value in sorted(labels.items())]
    return "\n".join(lines)


def _vms_named(site: Site, name: str) -> list[str]:
    return [
        str(item.get("vmid"))
        for item in site.api.get(f"nodes/{site.node}/qemu")
        if str(item.get("name") or "") == name
    ]


def bridges(site: Site) -> set[str]:
    items = site.api.get(f"nodes/{site.node}/network")
    return {
        str(i.get("iface"))
        for i in items
        if str(i.get("type", "")) in ("bridge", "OVSBridge", "vnet")
        or i.get("iface", "").startswith("vmbr")
    }


def _check_storage(site: Site, storage: str) -> dict[str, Any]:
    config = site.storage_config(storage)
    content = str(config.get("content", "")).split(",")
    if "images" not in content:
        raise errors.FailedPrecondition(
            f"storage_hint: storage {storage!r} does not hold VM images (content: "
            f"{config.get('content', '')})"
        )
    return config


def imported_source(site: Site, disk: pb.ImportedDisk, field: str) -> ImportedSource:
    """The import volume ``disk.disk_id`` on the node (NotFound when it is gone)."""
    volid = disk.disk_id
    storage, sep, volname = volid.partition(":")
    if not sep or not volname.startswith("import/") or "/" in volname[len("import/") :]:
        raise errors.InvalidArgument(
            f"{field}.disk_id: {volid!r} is not an import volume (<storage>:import/<name>) "
            "made by ImportDisk"
        )
    config = site.storage_config(storage, f"{field}.disk_id")
    path = f"{content_dir(config, 'import')}/{volname[len('import/') :]}"
    if not nodeops.exists(site.access, path):
        raise errors.NotFound(f"{field}.disk_id: {volid} does not exist on node {site.node}")
    # The name says the format (as PVE reads it); never probe a raw image's contents.
    fmt = volname.rsplit(".", 1)[-1] if "." in volname else ""
    if fmt not in qemuconfig.IMAGE_EXTENSIONS:
        raise errors.InvalidArgument(f"{field}.disk_id: {volid!r} has no image extension")
    info = nodeops.image_info(site.access, path, fmt)
    expected = FORMAT_NAMES.get(disk.format, "") if disk.format else ""
    if expected and fmt != expected:
        raise errors.FailedPrecondition(f"{field}.format: {volid} is {fmt}, not {expected}")
    return ImportedSource(volid, path, fmt, int(info.get("virtual-size") or 0))


class _Placer:
    """Device keys (scsi0, virtio1, ...) in request order, per bus."""

    def __init__(self) -> None:
        self._next: dict[str, int] = {}

    def key(self, bus: str, field: str) -> str:
        bus = bus or "scsi"
        limit = qemuconfig.BUS_LIMITS.get(bus)
        if limit is None:
            raise errors.InvalidArgument(
                f"{field}.bus: {bus!r} is not one of {sorted(qemuconfig.BUS_LIMITS)}"
            )
        index = self._next.get(bus, 0)
        if index >= limit:
            raise errors.InvalidArgument(f"{field}.bus: more than {limit} {bus} disks")
        self._next[bus] = index + 1
        return f"{bus}{index}"


def _import_drive(
    site: Site,
    source: ImportedSource,
    storage: str,
    storage_config: dict[str, Any],
) -> str:
    version = site.version()
    if version >= IMPORT_FROM_VOLUME_MIN:
        origin = source.volid
    else:
        if site.api_user != "root@pam" or site.api_is_token:
            raise errors.FailedPrecondition(
                f"PVE {version[0]}.{version[1]} imports disks from an absolute path only, which "
                "PVE allows to root@pam with a password login; upgrade to PVE 8.2+ or use "
                "root@pam credentials"
            )
        origin = source.path
    props = {"import-from": origin}
    if str(storage_config.get("type")) in FILE_STORAGE_TYPES and source.format in ("raw", "qcow2"):
        props["format"] = source.format
    return ",".join([f"{storage}:0", *(f"{k}={v}" for k, v in props.items())])


def _nics(site: Site, nics: Any) -> dict[str, str]:
    known = bridges(site)
    out = {}
    for index, nic in enumerate(nics):
        field = f"nics[{index}]"
        if nic.network not in known:
            raise errors.NotFound(
                f"{field}.network: bridge {nic.network!r} does not exist on node {site.node}"
            )
        model = nic.model or "virtio"
        if model not in qemuconfig.NET_MODELS:
            raise errors.InvalidArgument(f"{field}.model: {model!r} is not a PVE NIC model")
        mac = qemuconfig.check_mac(nic.mac, f"{field}.mac") if nic.mac else ""
        if not 0 <= nic.vlan_id <= 4094:
            raise errors.InvalidArgument(f"{field}.vlan_id: {nic.vlan_id} is not 0..4094")
        out[f"net{index}"] = qemuconfig.net_value(model, mac, nic.network, nic.vlan_id)
    return out


def _existing(site: Site, name: str, operation_id: str) -> str | None:
    for vmid in _vms_named(site, name):
        text = str(vm_config(site, vmid).get("description", ""))
        if f"{MARKER}{operation_id}" in text.splitlines():
            return vmid
        raise errors.AlreadyExists(f"name: a VM called {name!r} already exists (vmid {vmid})")
    return None


@dataclass
class _Plan:
    """What CreateVM will do, fully checked before anything changes."""

    storage: str
    drives: dict[str, str] = field(default_factory=dict)  # key -> drive value
    consumed: list[ImportedSource] = field(default_factory=list)
    grow: dict[str, int] = field(default_factory=dict)  # key -> bytes
    nets: dict[str, str] = field(default_factory=dict)
    image_key: str = ""
    template: str = ""  # vmid of the template to clone


def _plan(site: Site, req: pb.CreateVMRequest) -> _Plan:
    plan = _Plan(storage=req.storage_hint or site.settings.default_storage)
    storage_config = _check_storage(site, plan.storage)
    placer = _Placer()
    for index, disk in enumerate(req.disks):
        field_name = f"disks[{index}]"
        key = placer.key(disk.bus, field_name)
        if disk.WhichOneof("source") == "image":
            if index != 0:
                raise errors.Unsupported(
                    f"{field_name}.image: only the first disk can come from an image "
                    "(a template clone)"
                )
            plan.image_key, plan.template = key, _template(site, disk.image)
            continue
        source = imported_source(site, disk.imported, f"{field_name}.imported")
        if 0 < disk.size_bytes < source.size:
            raise errors.InvalidArgument(
                f"{field_name}.size_bytes: {disk.size_bytes} is smaller than the disk "
                f"({source.size} bytes); disks are never shrunk"
            )
        if disk.size_bytes > source.size:
            plan.grow[key] = disk.size_bytes
        plan.drives[key] = _import_drive(site, source, plan.storage, storage_config)
        plan.consumed.append(source)
    plan.nets = _nics(site, req.nics)
    for label in req.labels:
        if not label:
            raise errors.InvalidArgument("labels: empty key")
    return plan


def create_vm(site: Site, req: pb.CreateVMRequest, ctx: TaskContext) -> str:
    ctx.set_stage("checking")
    if not _NAME.match(req.name) or len(req.name) > 63:
        raise errors.InvalidArgument(
            f"name: {req.name!r} is not a valid PVE VM name (a DNS name: letters, digits, '-', '.')"
        )
    done = _existing(site, req.name, req.operation_id)
    if done is not None:
        log.info("create_vm_already_done", vm_id=done)
        return done
    plan = _plan(site, req)
    ctx.check_cancelled()
    vmid = str(site.api.get("cluster/nextid"))
    params: dict[str, Any] = {
        "name": req.name,
        "cores": req.cpu,
        "sockets": 1,
        "memory": req.memory_mib,
        "description": description(
            req.operation_id, dict(req.labels), [s.volid for s in plan.consumed]
        ),
        "bios": "ovmf" if req.firmware == pb.FIRMWARE_UEFI else "seabios",
    }
    if req.firmware == pb.FIRMWARE_UEFI:
        params["efidisk0"] = f"{plan.storage}:1,efitype=4m,pre-enrolled-keys=0"
    created = False
    pending = ""  # the UPID of a create/clone task that may still run
    try:
        if plan.template:
            ctx.set_stage("cloning")
            clone = {"newid": int(vmid), "name": req.name, "full": 1, "storage": plan.storage}
            pending = str(site.api.post(site.qemu(plan.template, "clone"), **clone))
            created = True
            site.api.wait_task(
                site.node, pending, f"clone template {plan.template}", ctx.cancel_event
            )
            pending = ""
            _configure_clone(site, vmid, plan, params, ctx)
        else:
            params.update(plan.drives)
            params.update(plan.nets)
            if any(k.startswith("scsi") for k in plan.drives):
                params["scsihw"] = "virtio-scsi-single"
            if plan.drives:
                params["boot"] = f"order={next(iter(plan.drives))}"
            ctx.set_stage("creating (copying imported disks)" if plan.consumed else "creating")
            pending = str(site.api.post(f"nodes/{site.node}/qemu", vmid=int(vmid), **params))
            created = True
            site.api.wait_task(site.node, pending, f"create VM {vmid}", ctx.cancel_event)
            pending = ""
        _finish(site, vmid, plan, req.power_on, ctx)
    except BaseException:
        if created:
            _undo_create(site, vmid, pending)
        raise
    if plan.consumed and site.settings.remove_imported:
        ctx.set_stage("removing import volumes")
        paths = [s.path for s in plan.consumed] + [sidecar(s.path) for s in plan.consumed]
        try:
            nodeops.remove(site.access, *paths)
        except errors.VirtrigaudError as exc:
            log.warning("import_volumes_not_removed", vm_id=vmid, error=exc.message)
    log.info("vm_created", vm_id=vmid, disks=len(req.disks), nics=len(plan.nets))
    return vmid


def _finish(site: Site, vmid: str, plan: _Plan, power_on: bool, ctx: TaskContext) -> None:
    """Grow disks and start the VM, as asked."""
    for key, size in plan.grow.items():
        ctx.set_stage(f"resizing {key}")
        upid = site.api.put(site.qemu(vmid, "resize"), disk=key, size=str(size))
        site.api.wait_task(site.node, upid, f"resize {key} of VM {vmid}", ctx.cancel_event)
    if power_on:
        ctx.check_cancelled()
        ctx.set_stage("starting")
        site.api.run_task(
            site.node, "post", site.qemu(vmid, "status/start"), f"start VM {vmid}", ctx.cancel_event
        )


def sidecar(path: str) -> str:
    """The record ImportDisk keeps beside an import volume (its verified digests)."""
    directory, _, name = path.rpartition("/")
    return f"{directory}/.{name}.virtrigaud.json"


def _template(site: Site, ref: pb.ImageRef) -> str:
    wanted = ref.path or ref.name
    for item in site.api.get(f"nodes/{site.node}/qemu"):
        if not item.get("template"):
            continue
        if wanted in (str(item.get("vmid")), str(item.get("name"))):
            return str(item.get("vmid"))
    raise errors.NotFound(f"disks[0].image: no template {wanted!r} on node {site.node}")


def _configure_clone(
    site: Site, vmid: str, plan: _Plan, params: dict[str, Any], ctx: TaskContext
) -> None:
    ctx.set_stage("configuring")
    current = vm_config(site, vmid)
    parsed = qemuconfig.parse_config(current)
    taken = {d.key for d in parsed.drives}
    update = {k: v for k, v in params.items() if k != "name"}
    if "efidisk0" in current:
        update.pop("efidisk0", None)  # the template's EFI vars disk was cloned too
    used = set(taken)
    for key, value in plan.drives.items():
        update[_free_slot(key, used)] = value  # after the template's own disks
    update.update(plan.nets)
    stale = [n.key for n in parsed.nets if n.key not in plan.nets]
    if stale:
        update["delete"] = ",".join(stale)
    boot = plan.image_key if plan.image_key in taken else parsed.boot_disk
    if boot:
        update["boot"] = f"order={boot}"
    upid = site.api.post(site.qemu(vmid, "config"), **update)
    site.api.wait_task(site.node, upid, f"configure VM {vmid}", ctx.cancel_event)


def _free_slot(key: str, used: set[str]) -> str:
    """``key``, or the next free device key on its bus (marked used)."""
    bus = key.rstrip("0123456789")
    index = int(key[len(bus) :])
    while f"{bus}{index}" in used:
        index += 1
    if index >= qemuconfig.BUS_LIMITS[bus]:
        raise errors.InvalidArgument(f"disks: no free {bus} slot left beside the template's disks")
    used.add(f"{bus}{index}")
    return f"{bus}{index}"


def _undo_create(site: Site, vmid: str, pending: str) -> None:
    """Destroy a VM this CreateVM made. A create/clone task still running (the wait
    was cancelled) holds the VM's lock: wait for it first; if it failed, PVE has
    already removed the VM."""
    try:
        if pending:
            try:
                site.api.wait_task(site.node, pending, "undo: wait", None, timeout=UNDO_WAIT)
            except errors.VirtrigaudError as exc:
                log.info("create_task_failed_before_undo", vm_id=vmid, error=exc.message)
        try:
            status = site.api.get(site.qemu(vmid, "status/current"))
        except (errors.NotFound, errors.FailedPrecondition):
            return  # nothing left to undo
        if status.get("status") == "running":
            site.api.run_task(site.node, "post", site.qemu(vmid, "status/stop"), "undo: stop")
        site.api.run_task(
            site.node,
            "delete",
            site.qemu(vmid),
            "undo: destroy",
            None,
            {"purge": 1, "destroy-unreferenced-disks": 1},
        )
    except errors.VirtrigaudError as exc:
        log.warning("create_vm_undo_failed", vm_id=vmid, error=exc.message)


# -- delete -------------------------------------------------------------------------


def imported_volumes(config: dict[str, Any]) -> list[str]:
    """The import volumes a VM was created from (listed in its description)."""
    return [
        line[len(IMPORTED) :].strip()
        for line in str(config.get("description", "")).splitlines()
        if line.startswith(IMPORTED)
    ]


def delete_vm(site: Site, vm_id: str, delete_disks: bool, ctx: TaskContext) -> None:
    """Destroy the VM (purge). Its own volumes always go with it (PVE); the import
    volumes it was created from are removed with ``delete_disks`` and kept without:
    they are the retained disks. A VM with no import volumes to keep cannot be
    deleted with ``delete_disks=false`` (Unsupported: PVE would destroy its only
    disks)."""
    vmid = check_vmid(vm_id)
    config = vm_config(site, vmid)
    sources: list[tuple[str, str]] = []  # (volid, node path) of import volumes
    for volid in imported_volumes(config):
        storage, _, volname = volid.partition(":")
        try:
            directory = content_dir(site.storage_config(storage, "disk"), "import")
        except errors.NotFound:
            continue
        sources.append((volid, f"{directory}/{volname[len('import/') :]}"))
    present = [s for s in sources if nodeops.exists(site.access, s[1])]
    if not delete_disks and (not sources or len(present) != len(sources)):
        raise errors.Unsupported(
            f"delete_disks: PVE destroys VM {vmid}'s disks with the VM and no imported disk "
            "of it is left to keep; delete it with delete_disks=true"
        )
    status = site.api.get(site.qemu(vmid, "status/current"))
    if status.get("status") == "running":
        ctx.set_stage("powering off")
        site.api.run_task(
            site.node, "post", site.qemu(vmid, "status/stop"), f"stop VM {vmid}", ctx.cancel_event
        )
    ctx.set_stage("destroying")
    site.api.run_task(
        site.node,
        "delete",
        site.qemu(vmid),
        f"destroy VM {vmid}",
        ctx.cancel_event,
        {"purge": 1, "destroy-unreferenced-disks": 1},
    )
    if delete_disks and present:
        ctx.set_stage("removing import volumes")
        nodeops.remove(site.access, *(p for _, p in present), *(sidecar(p) for _, p in present))
    log.info("vm_deleted", vm_id=vmid, imported_kept=0 if delete_disks else len(present))


# -- power --------------------------------------------------------------------------


def _status(site: Site, vmid: str) -> dict[str, Any]:
    try:
        return dict(site.api.get(site.qemu(vmid, "status/current")))
    except errors.FailedPrecondition as exc:
        raise errors.NotFound(f"VM {vmid} not found on node {site.node}: {exc.message}") from None


def _shutdown(site: Site, vmid: str, timeout: int, ctx: TaskContext) -> None:
    if _status(site, vmid).get("status") != "running":
        return
    ctx.set_stage("shutting down")
    site.api.run_task(
        site.node,
        "post",
        site.qemu(vmid, "status/shutdown"),
        f"shut down VM {vmid}",
        ctx.cancel_event,
        {"timeout": timeout, "forceStop": 1},
    )


def power(site: Site, vm_id: str, action: str, timeout: int, ctx: TaskContext) -> None:
    """action: on | off | shutdown | reboot."""
    vmid = check_vmid(vm_id)
    timeout = timeout or DEFAULT_SHUTDOWN_TIMEOUT
    status = _status(site, vmid)
    running = status.get("status") == "running"
    if action == "on":
        if running and status.get("qmpstatus") in ("paused", "suspended"):
            ctx.set_stage("resuming")
            site.api.run_task(
                site.node,
                "post",
                site.qemu(vmid, "status/resume"),
                f"resume VM {vmid}",
                ctx.cancel_event,
            )
        elif not running:
            ctx.set_stage("starting")
            site.api.run_task(
                site.node,
                "post",
                site.qemu(vmid, "status/start"),
                f"start VM {vmid}",
                ctx.cancel_event,
            )
    elif action == "off":
        if running:
            ctx.set_stage("powering off")
            site.api.run_task(
                site.node,
                "post",
                site.qemu(vmid, "status/stop"),
                f"stop VM {vmid}",
                ctx.cancel_event,
            )
    elif action == "shutdown":
        _shutdown(site, vmid, timeout, ctx)
    elif action == "reboot":
        if not running:
            raise errors.FailedPrecondition(f"VM {vmid} is off; use ON to start it")
        _shutdown(site, vmid, timeout, ctx)
        ctx.check_cancelled()
        ctx.set_stage("starting")
        site.api.run_task(
            site.node, "post", site.qemu(vmid, "status/start"), f"start VM {vmid}", ctx.cancel_event
        )
    else:
        raise errors.InvalidArgument(f"action: unknown power action {action!r}")
