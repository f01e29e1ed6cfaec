"""The NFC export lease: reading a disk through ``ExportVm`` (option exportMethod=nfc).

vCenter and ESXi hand out a disk of a powered-off VM as a streamOptimized VMDK over
an HTTP NFC lease (what ovftool and the vSphere client's "Export OVF" use). It
reads through the host's own disk stack, so it works where the datastore file
endpoint cannot serve a file (vSAN and vVols objects, disks behind a file lock).

* A powered-off VM without ``snapshot_id`` is exported directly.
* With ``snapshot_id`` a temporary *linked clone* is made from that snapshot
  (``CloneVM_Task`` with ``snapshot`` and ``diskMoveType=createNewChildDiskBacking``:
  no data is copied, the clone's disks are new deltas on the snapshot's chain), the
  clone is exported, then destroyed -- on success, failure and cancellation alike.
  This is how a *running* VM is read consistently without touching it.

The lease's disk URL (``*`` replaced by the endpoint host, as the API requires) is
downloaded with the session cookie into scratch; the lease is kept alive with
``HttpNfcLeaseProgress`` while bytes move, completed on success and aborted on any
failure. The disk is matched by its controller bus and unit number in the device
key (``/vm-N/VirtualLsiLogicController0:1``).

Not proven by the tests: vcsim (govmomi 0.24) does not implement ExportVm, so the
tests only show that the method is refused with a clear Unsupported error and that
the temporary clone is removed again. See docs/providers/vsphere.md.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from providers.common.progress import StagedContext
from providers.common.scratch import Scratch
from providers.vsphere import tasks
from providers.vsphere.client import VSphereClient, vim
from providers.vsphere.dshttp import DatastoreFiles
from virtrigaud import errors
from virtrigaud.logging import get_logger

log = get_logger("virtrigaud.vsphere")

STAGE_CLONING = "cloning from snapshot"
STAGE_LEASE = "waiting for export lease"
STAGE_READING = "reading NFC export"
LEASE_WAIT_SECONDS = 300.0
KEEPALIVE_SECONDS = 30.0
_KEY = re.compile(r"(\d+):(\d+)$")


def _lease_state(client: VSphereClient, lease: Any) -> tuple[str, Any, Any]:
    props = client.properties(lease, ["state", "error", "info"], "reading the export lease")
    return str(props.get("state", "")), props.get("error"), props.get("info")


def _wait_ready(client: VSphereClient, lease: Any, ctx: StagedContext) -> Any:
    deadline = time.monotonic() + LEASE_WAIT_SECONDS
    while True:
        state, error, info = _lease_state(client, lease)
        if state == "ready":
            return info
        if state == "error":
            raise errors.FailedPrecondition(f"export lease failed: {getattr(error, 'msg', error)}")
        if state == "done":
            raise errors.FailedPrecondition("export lease ended before it was used")
        if time.monotonic() > deadline:
            raise errors.Timeout("the export lease did not become ready")
        ctx.check_cancelled()
        time.sleep(0.5)


def device_url(info: Any, bus: int, unit: int, endpoint_host: str) -> str:
    """The download URL of the disk at ``bus:unit`` ('*' replaced by the endpoint host)."""
    disks = [d for d in (getattr(info, "deviceUrl", None) or ()) if d.disk]
    chosen = [
        d for d in disks if (m := _KEY.search(str(d.key))) and m.groups() == (str(bus), str(unit))
    ]
    if len(disks) == 1 and not chosen:
        chosen = disks
    if len(chosen) != 1:
        keys = ", ".join(str(d.key) for d in disks) or "none"
        raise errors.FailedPrecondition(
            f"the export lease has no single disk at {bus}:{unit} (disk keys: {keys})"
        )
    parts = urlsplit(str(chosen[0].url))
    if parts.hostname == "*":
        port = f":{parts.port}" if parts.port else ""
        host = f"[{endpoint_host}]" if ":" in endpoint_host else endpoint_host
        parts = parts._replace(netloc=f"{host}{port}")
    return urlunsplit(parts)


def _keepalive(client: VSphereClient, lease: Any, total: int) -> Callable[[int], None]:
    last = [time.monotonic()]

    def tick(done: int) -> None:
        if time.monotonic() - last[0] < KEEPALIVE_SECONDS:
            return
        last[0] = time.monotonic()
        percent = int(100 * done / total) if total else 0
        try:
            client.call(lambda _c: lease.HttpNfcLeaseProgress(min(percent, 99)), "lease keepalive")
        except errors.VirtrigaudError as exc:
            log.info("nfc_keepalive_failed", error=exc.message)

    return tick


def _export_vm(
    client: VSphereClient,
    vm: Any,
    *,
    disk: tuple[int, int, int],  # bus number, unit number, capacity
    files: DatastoreFiles,
    room: Scratch,
    ctx: StagedContext,
) -> str:
    bus, unit, capacity = disk
    ctx.set_stage(STAGE_LEASE)
    lease = client.call(lambda _c: vm.ExportVm(), "starting the NFC export")
    try:
        info = _wait_ready(client, lease, ctx)
        url = device_url(info, bus, unit, client.settings.endpoint.host)
        ctx.set_stage(STAGE_READING)
        keep = _keepalive(client, lease, capacity)
        local = room.file("nfc-disk.vmdk")

        def progress(done: int) -> None:
            ctx.progress(done, capacity)
            keep(done)

        files.download_url(
            url,
            local,
            ctx,
            what="reading the NFC export",
            on_bytes=progress,
            on_allocate=room.allocate,
        )
        client.call(lambda _c: lease.HttpNfcLeaseComplete(), "completing the export lease")
        return local
    except BaseException:
        try:
            client.call(lambda _c: lease.HttpNfcLeaseAbort(), "aborting the export lease")
        except errors.VirtrigaudError as exc:
            log.info("nfc_abort_failed", error=exc.message)
        raise


def fetch(
    client: VSphereClient,
    vm_id: str,
    snapshot_id: str,
    *,
    disk: tuple[int, int, int],
    files: DatastoreFiles,
    room: Scratch,
    ctx: StagedContext,
) -> str:
    """The disk as a local streamOptimized VMDK (see the module docstring)."""
    vm = client.ref(vim.VirtualMachine, vm_id)
    if not snapshot_id:
        return _export_vm(client, vm, disk=disk, files=files, room=room, ctx=ctx)
    props = client.properties(vm, ["name", "parent", "resourcePool"], f"VM {vm_id}")
    ctx.set_stage(STAGE_CLONING)
    spec = vim.vm.CloneSpec(
        location=vim.vm.RelocateSpec(diskMoveType="createNewChildDiskBacking"),
        snapshot=client.ref(vim.vm.Snapshot, snapshot_id),
        powerOn=False,
        template=False,
    )
    name = f"{props['name']}-vr-export-{secrets.token_hex(3)}"
    what = f"linked clone of {vm_id} at {snapshot_id}"
    task = client.call(
        lambda _c: vm.CloneVM_Task(folder=props["parent"], name=name, spec=spec), what
    )
    clone = tasks.wait(client, task, what)
    log.info("nfc_export_clone", vm_id=vm_id, snapshot=snapshot_id, clone=clone._moId)
    try:
        return _export_vm(client, clone, disk=disk, files=files, room=room, ctx=ctx)
    finally:
        try:
            destroy = client.call(lambda _c: clone.Destroy_Task(), "removing the export clone")
            tasks.wait(client, destroy, "removing the export clone")
        except errors.VirtrigaudError as exc:
            log.warning("nfc_clone_cleanup_failed", clone=clone._moId, error=exc.message)
