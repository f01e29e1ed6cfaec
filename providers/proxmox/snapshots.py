"""CreateSnapshot / DeleteSnapshot through the PVE API.

PVE snapshot names are ``[A-Za-z][A-Za-z0-9_-]{1,39}``, so the requested name is made
safe and suffixed with a digest of the operation id: the same operation always maps
to the same snapshot, which makes a re-submitted CreateSnapshot (after a provider
restart lost its task) find its snapshot instead of failing on the taken name.

``quiesce``: PVE freezes the guest file systems itself when the QEMU guest agent is
enabled in the VM config; there is nothing to ask for per snapshot. ``include_memory``
maps to ``vmstate=1`` (a running VM only).
"""

from __future__ import annotations

import hashlib
import re

from providers.proxmox.site import Site, check_vmid
from providers.runtime.tasks import TaskContext
from virtrigaud import errors
from virtrigaud.logging import get_logger

log = get_logger("virtrigaud.proxmox")

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def snapshot_name(name: str, operation_id: str) -> str:
    slug = _UNSAFE.sub("-", name).strip("-_") or "snap"
    if not slug[0].isalpha():
        slug = f"s-{slug}"
    tag = hashlib.sha256(operation_id.encode()).hexdigest()[:8]
    return f"{slug[:30]}-{tag}"


def names(site: Site, vmid: str) -> set[str]:
    try:
        items = site.api.get(site.qemu(vmid, "snapshot"))
    except (errors.NotFound, errors.FailedPrecondition) as exc:
        raise errors.NotFound(f"VM {vmid} not found on node {site.node}: {exc.message}") from None
    return {str(s.get("name")) for s in items if s.get("name") != "current"}


def create_snapshot(
    site: Site,
    vm_id: str,
    name: str,
    description: str,
    operation_id: str,
    *,
    include_memory: bool,
    ctx: TaskContext,
) -> str:
    vmid = check_vmid(vm_id)
    if not name:
        raise errors.InvalidArgument("name: required")
    snap = snapshot_name(name, operation_id)
    if snap in names(site, vmid):
        log.info("snapshot_already_taken", vm_id=vmid, snapshot=snap)
        return snap
    ctx.set_stage("snapshotting")
    params: dict[str, object] = {"snapname": snap}
    if description:
        params["description"] = description
    if include_memory:
        params["vmstate"] = 1
    site.api.run_task(
        site.node,
        "post",
        site.qemu(vmid, "snapshot"),
        f"snapshot VM {vmid}",
        ctx.cancel_event,
        params,
    )
    log.info("snapshot_created", vm_id=vmid, snapshot=snap)
    return snap


def delete_snapshot(site: Site, vm_id: str, snap: str, ctx: TaskContext) -> None:
    vmid = check_vmid(vm_id)
    if snap not in names(site, vmid):
        raise errors.NotFound(f"snapshot {snap!r} not found on VM {vmid}")
    ctx.set_stage("deleting")
    site.api.run_task(
        site.node,
        "delete",
        site.qemu(vmid, f"snapshot/{snap}"),
        f"delete snapshot {snap} of VM {vmid}",
        ctx.cancel_event,
    )
    log.info("snapshot_deleted", vm_id=vmid, snapshot=snap)


def snapshot_config(site: Site, vmid: str, snap: str) -> dict[str, object]:
    """The VM config as the snapshot froze it."""
    if snap not in names(site, vmid):
        raise errors.NotFound(f"snapshot {snap!r} not found on VM {vmid}")
    return dict(site.api.get(site.qemu(vmid, f"snapshot/{snap}/config")))
