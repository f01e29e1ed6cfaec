"""The Proxmox test environment: fakepve (API) + a real sshd (the node) + real files.

``session_env(pytestconfig)`` starts, once per session:

* ``tests.servers.fakepve.NodePve`` on a free loopback port (HTTPS, self-signed CA
  given to the provider as ``caFile``), with an API token for ``root@pam`` and a
  directory storage ``vmstore`` (content ``images,import``) whose ``path`` is a
  directory under the session's tmp dir -- the volume paths the API reports are
  real files there;
* ``tests.servers.sshd`` on another free loopback port: the provider reaches "the
  node" over real SSH (key auth, host key pinned in ``knownHosts``); on this machine
  the node's files are the same files, so tests can assert what landed where.

``add_vm`` makes a VM whose disks are real qcow2/raw images with known data, known to
fakepve as volumes of ``vmstore`` and referenced by its config. ``driver`` builds a
``ProxmoxDriver`` through the registered factory with the Secret and options a real
Provider would carry.
"""

from __future__ import annotations

import hashlib
import itertools
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from providers.common import digest
from providers.proxmox.driver import ProxmoxDriver, create
from providers.runtime.driver import ProviderConfig
from tests.servers import fakepve, sshd

MiB = 1 << 20
NODE = "pve1"
STORAGE = "vmstore"
TOKEN_ID = "root@pam!virtrigaud"
BRIDGE = "vmbr0"

_ENV_KEY = pytest.StashKey["PveEnv"]()
_vmids = itertools.count(4000)


@dataclass
class VmFiles:
    vmid: str
    name: str
    disks: dict[str, Path]  # disk key -> file
    formats: dict[str, str]


@dataclass
class PveEnv:
    root: Path
    pve_server: fakepve.PveServer
    ssh: sshd.SshServer
    token_secret: str
    storage_path: Path
    node_tmp: Path
    scratch: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pve(self) -> fakepve.NodePve:
        return self.pve_server.pve

    # -- provider configuration ----------------------------------------------------

    def credentials(self, **overrides: str) -> dict[str, str]:
        creds = {
            "tokenId": TOKEN_ID,
            "tokenSecret": self.token_secret,
            "sshUser": self.ssh.user,
            "sshPrivateKey": self.ssh.user_key,
            "knownHosts": self.ssh.known_hosts,
        }
        creds.update(overrides)
        return {k: v for k, v in creds.items() if v != ""}

    def options(self, **overrides: str) -> dict[str, str]:
        opts = {
            "node": NODE,
            "sshHost": "127.0.0.1",
            "sshPort": str(self.ssh.port),
            "caFile": self.pve_server.cafile,
            "storage": STORAGE,
            "nodeScratchDir": str(self.node_tmp),
            "scratchDir": str(self.scratch),
        }
        opts.update(overrides)
        return {k: v for k, v in opts.items() if v != ""}

    def config(
        self,
        credentials: Mapping[str, str] | None = None,
        options: Mapping[str, str] | None = None,
    ) -> ProviderConfig:
        return ProviderConfig(
            endpoint=self.pve_server.url,
            credentials=dict(credentials if credentials is not None else self.credentials()),
            options=dict(options if options is not None else self.options()),
            allowed_storage_hosts=("127.0.0.1",),
        )

    def driver(self, **option_overrides: str) -> ProxmoxDriver:
        return create(self.config(options=self.options(**option_overrides)))

    # -- VMs ---------------------------------------------------------------------------

    def add_vm(
        self,
        name: str,
        disks: Mapping[str, tuple[str, int, bytes]],  # key -> (format, size, first bytes)
        *,
        status: str = "stopped",
        extra_config: Mapping[str, str] | None = None,
    ) -> VmFiles:
        """A VM with real disk files on ``vmstore`` (data written with qemu-io)."""
        vmid = str(next(_vmids))
        config: dict[str, Any] = {
            "name": name,
            "cores": 2,
            "sockets": 1,
            "memory": "256",
            "ostype": "l26",
            "scsihw": "virtio-scsi-single",
            "net0": f"virtio=52:54:00:AA:{int(vmid) // 256 % 256:02X}:{int(vmid) % 256:02X},"
            f"bridge={BRIDGE},tag=12",
        }
        files: dict[str, Path] = {}
        formats: dict[str, str] = {}
        volumes = self.pve.storages[STORAGE].setdefault("volumes", {})
        for index, (key, (fmt, size, data)) in enumerate(disks.items()):
            volname = f"{vmid}/vm-{vmid}-disk-{index}.{fmt}"
            path = self.storage_path / "images" / volname
            path.parent.mkdir(parents=True, exist_ok=True)
            write_image(path, fmt, size, data)
            volumes[volname] = {
                "content": "images",
                "format": fmt,
                "size": size,
                "vmid": int(vmid),
                "ctime": 0,
            }
            config[key] = f"{STORAGE}:{volname},size={size // MiB}M"
            files[key], formats[key] = path, fmt
        if disks:
            config["boot"] = f"order={next(iter(disks))}"
        config.update(extra_config or {})
        self.pve.add_vm(int(vmid), name, node=NODE, status=status, config=config)
        return VmFiles(vmid, name, files, formats)

    def remove_vm(self, vmid: str) -> None:
        vm = self.pve.vm(int(vmid))
        if vm is not None:
            self.pve.vms.remove(vm)
        shutil.rmtree(self.storage_path / "images" / vmid, ignore_errors=True)

    def import_dir(self) -> Path:
        return self.storage_path / "import"


SLOW_SIZE = 1024 * MiB


def slow_disk(pve_env: PveEnv) -> tuple[str, str]:
    """A stopped VM with a 1 GiB raw disk holding 384 MiB of data (made once)."""
    cached = pve_env.extra.get("slow")
    if isinstance(cached, tuple):
        return cached
    vm = pve_env.add_vm("slow-vm", {"scsi0": ("raw", SLOW_SIZE, b"\x01")})
    with open(vm.disks["scsi0"], "r+b") as handle:
        block = bytes(range(1, 256)) * (MiB // 255) + b"\x5a" * (MiB % 255)
        for run in range(24):
            handle.seek(run * 40 * MiB)
            for _ in range(16):
                handle.write(block)
    pve_env.extra["slow"] = (vm.vmid, "scsi0")
    return vm.vmid, "scsi0"


def write_image(path: Path, fmt: str, size: int, data: bytes) -> None:
    """An image of ``size`` bytes holding ``data`` at 0 and at the middle."""
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(path), str(size)], check=True)
    payload = path.parent / f".{path.name}.payload"
    payload.write_bytes(data)
    try:
        for offset in (0, size // 2):
            subprocess.run(
                [
                    "qemu-io",
                    "-f",
                    fmt,
                    "-c",
                    f"write -s {payload} {offset} {len(data)}",
                    str(path),
                ],
                check=True,
                capture_output=True,
                timeout=60,
            )
    finally:
        payload.unlink()


def content_sha256(path: Path, fmt: str) -> str:
    """The content digest (``providers.common.digest``) of an image file."""
    return digest.content_digest(str(path), fmt)


def raw_bytes(path: Path, fmt: str, tmp: Path) -> bytes:
    """The guest-visible bytes of an image (converted to raw)."""
    out = tmp / f"raw-{uuid.uuid4().hex[:8]}.img"
    subprocess.run(
        ["qemu-img", "convert", "-U", "-f", fmt, "-O", "raw", str(path), str(out)], check=True
    )
    try:
        return out.read_bytes()
    finally:
        out.unlink()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def start_env(root: Path) -> PveEnv:
    root.mkdir(parents=True, exist_ok=True)
    server = fakepve.start(root / "pve")
    try:
        ssh = sshd.start(root / "ssh")
    except BaseException:
        server.stop()
        raise
    storage_path = root / "node" / STORAGE
    storage_path.mkdir(parents=True)
    node_tmp = root / "node" / "tmp"
    node_tmp.mkdir()
    scratch = root / "scratch"
    scratch.mkdir()
    secret = str(uuid.uuid4())
    server.pve.apitokens[TOKEN_ID] = secret
    server.pve.storages[STORAGE] = {
        "type": "dir",
        "path": str(storage_path),
        "content": "images,import",
        "active": 1,
        "files": set(),
        "volumes": {},
    }
    return PveEnv(root, server, ssh, secret, storage_path, node_tmp, scratch)


def session_env(config: pytest.Config) -> PveEnv:
    """The session's environment: started on first use, stopped at session end."""
    existing = config.stash.get(_ENV_KEY, None)
    if existing is not None:
        return existing
    root = Path(tempfile.mkdtemp(prefix="virtrigaud-proxmox-"))
    env = start_env(root)
    config.stash[_ENV_KEY] = env

    def cleanup() -> None:
        try:
            env.ssh.stop()
        finally:
            env.pve_server.stop()
            shutil.rmtree(root, ignore_errors=True)

    config.add_cleanup(cleanup)
    return env
