"""A fake Proxmox VE API (PyPI ``fakepve``) whose directory storages are real files.

fakepve models the PVE API (tickets, API tokens, nodes, qemu create/config/power,
snapshots, clone, tasks with UPIDs and logs, storage config and content) but keeps
volumes as bookkeeping only. The Proxmox provider reads and writes disk data on the
node itself (SSH + qemu-img), so the tests need the volumes the API reports to be real
files. ``NodePve`` adds exactly what a PVE node does to its directory storages and
nothing else:

* allocating a volume (create, clone) creates the image file with ``qemu-img create``;
  freeing it (destroy, purge) deletes the file;
* ``import-from=<volume id or absolute path>`` on a drive of a create request (which
  fakepve accepts without looking at the source) is done as qemu-server does it: the
  source must exist (else the create task fails), a volume of the source's virtual
  size is allocated and the data is copied with ``qemu-img convert``; the option is
  not kept in the config; a new disk in a config update is allocated (and imported)
  the same way, as qemu-server does;
* a snapshot of a VM with qcow2 disks on a directory storage is an internal qcow2
  snapshot of that name in each disk file (``qemu-img snapshot -c``); deleting the
  snapshot deletes it from the files.

Everything else is fakepve as published. The server runs in this process (its own
event loop in a daemon thread) on a free loopback port with a self-signed certificate,
so tests can use fakepve's Python API (tokens, failures, VMs) while the provider
talks HTTPS to it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from fakepve import FakePve, TaskError
from fakepve.certs import make_cert
from fakepve.qemu import DRIVE_KEY, NEW_DISK, drives_of, split_drive, volume_ref
from fakepve.routing import die
from fakepve.storage import _is_file

from tests.servers.net import LOOPBACK

T = TypeVar("T")
START_TIMEOUT = 30.0


def _qemu_img(*args: str) -> str:
    done = subprocess.run(
        ["qemu-img", *args], capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise TaskError(f"qemu-img {args[0]} failed: {done.stderr.strip()}")
    return done.stdout


class NodePve(FakePve):  # type: ignore[misc]
    """fakepve whose directory storages hold real image files (module docstring)."""

    # -- volume paths -------------------------------------------------------------

    def volume_path(self, volid: str) -> str | None:
        """The file of a volume id on a directory storage (None for other storages)."""
        sid, name = volume_ref(volid)
        store = self.storages.get(sid) if sid else None
        if store is None or not _is_file(store):
            return None
        vtype = "import" if name.startswith("import/") else "images"
        return str(self._volume_path(sid, name, vtype))

    # -- allocation ---------------------------------------------------------------

    def _qm_alloc(
        self, sid: str, vmid: int, fmt: str | None, size: int, linked_from: Any = None
    ) -> tuple[str, str]:
        volid, real_fmt = super()._qm_alloc(sid, vmid, fmt, size, linked_from)
        path = self.volume_path(volid)
        if path is not None:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            _qemu_img("create", "-q", "-f", real_fmt, path, str(size))
        return volid, real_fmt

    def _qm_free(self, volid: str) -> None:
        path = self.volume_path(volid)
        super()._qm_free(volid)
        if path is not None and os.path.exists(path):
            os.unlink(path)

    def _qm_new_drive(self, vmid, key, value, default):
        volume, props = split_drive(value)
        source = props.get("import-from")
        if source is None:
            return super()._qm_new_drive(vmid, key, value, default)
        path = source if source.startswith("/") else self.volume_path(source)
        if path is None or not os.path.isfile(path):
            raise die(f"{key}: import-from: volume '{source}' does not exist")
        info = json.loads(_qemu_img("info", "--output=json", path))
        sid = volume.split(":", 1)[0] or default
        props = {k: v for k, v in props.items() if k not in ("import-from", "size")}
        fmt = props.pop("format", None)
        volid, real_fmt = self._qm_alloc(sid, vmid, fmt, int(info["virtual-size"]))
        target = self.volume_path(volid)
        if target is not None:
            _qemu_img("convert", "-q", "-f", info["format"], "-O", real_fmt, path, target)
        drive = ",".join([volid, *(f"{k}={props[k]}" for k in sorted(props))])
        drive_value, made = super()._qm_new_drive(vmid, key, drive, default)
        return drive_value, [volid, *made]

    async def _apply_config(self, vm: Any, user: str, p: dict[str, Any]) -> Any:
        # PVE allocates (and imports) new disks of a config update as on create;
        # fakepve would store "storage:0,import-from=..." verbatim.
        p = dict(p)
        for key, value in list(p.items()):
            if DRIVE_KEY.match(key):
                volume, props = split_drive(value)
                if NEW_DISK.match(volume) or "import-from" in props:
                    p[key], _made = self._qm_new_drive(vm.vmid, key, value, None)
        return await super()._apply_config(vm, user, p)

    # -- snapshots ----------------------------------------------------------------

    def _qcow2_files(self, config: dict[str, Any]) -> list[str]:
        files = []
        for _key, volume, _props in drives_of(config, skip_cdrom=True):
            path = self.volume_path(volume)
            if path is not None and path.endswith(".qcow2") and os.path.exists(path):
                files.append(path)
        return files

    async def _qm_snapshot(self, v, user):
        upid = await super()._qm_snapshot(v, user)
        vm = self.find(v["node"], v["vmid"])
        if self.tasks[upid].get("exitstatus") == "OK":
            for path in self._qcow2_files(vm.snapshots[v["snapname"]]):
                _qemu_img("snapshot", "-c", v["snapname"], path)
        return upid

    async def _qm_snapshot_delete(self, v, user):
        vm = self.find(v["node"], v["vmid"])
        snap = vm.snapshots.get(v["snapname"])
        files = self._qcow2_files(snap) if snap else []
        upid = await super()._qm_snapshot_delete(v, user)
        if self.tasks[upid].get("exitstatus") == "OK":
            for path in files:
                _qemu_img("snapshot", "-d", v["snapname"], path)
        return upid


@dataclass
class PveServer:
    """A started ``NodePve`` on loopback; ``call`` runs a coroutine on its loop."""

    pve: NodePve
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    cafile: str

    @property
    def url(self) -> str:
        return str(self.pve.url)

    @property
    def port(self) -> int:
        return int(self.pve.port)

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(START_TIMEOUT)

    def stop(self) -> None:
        try:
            self.call(self.pve.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(START_TIMEOUT)


def start(workdir: Path, *, user: str = "root@pam", password: str = "secret") -> PveServer:
    """Serve a ``NodePve`` with tasks that finish before their request returns."""
    pki = workdir / "pki"
    pki.mkdir(parents=True, exist_ok=True)
    certfile, keyfile, _ = make_cert(str(pki), hosts=(LOOPBACK,))
    pve = NodePve(user=user, password=password, host=LOOPBACK, port=0)
    pve.time_scale = 0
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fakepve", daemon=True)
    thread.start()
    server = PveServer(pve, loop, thread, certfile)
    try:
        server.call(pve.start(certfile, keyfile))
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        raise
    return server
