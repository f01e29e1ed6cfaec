"""libvirtd with the QEMU driver, for the libvirt provider's tests.

``start_libvirtd()`` uses a daemon that already answers on ``qemu:///system``;
otherwise it applies the /dev/kvm permission fix (a root-only /dev/kvm makes every
``defineXML`` re-probe QEMU for 30-50 s), starts ``/usr/sbin/virtlogd`` and
``/usr/sbin/libvirtd`` in the background and waits (up to 60 s; the first start
probes QEMU) until ``libvirt.open`` answers. ``stop()`` stops only the daemons it
started itself.

``create_env()`` adds what a test session needs, all with unique names
(``vr-test-<random>``) so sessions and leftovers never collide: two started ``dir``
storage pools under a temporary directory (the second one as an import/clone
target) and an isolated libvirt network (no forward, no IP: no dnsmasq needed),
whose host bridge (``virbrN``) also serves as the bridge for bridge-attached NICs.
``LibvirtEnv.destroy()`` removes every domain whose name starts with the session
prefix, both pools with their files, and the network.

``session_env(config)`` gives the one environment of a pytest session (created on
first use, destroyed when the session ends), so the provider tests and the
conformance target share a daemon and pools.
"""

from __future__ import annotations

import contextlib
import grp
import os
import secrets
import shutil
import stat
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libvirt
import pytest

from providers.libvirt.volxml import build_dir_pool
from tests.servers.net import terminate

URI = "qemu:///system"
LIBVIRTD = "/usr/sbin/libvirtd"
VIRTLOGD = "/usr/sbin/virtlogd"


def _silence(_ctx: object, _err: object) -> None:
    """libvirt prints each error on stderr; tests look at exceptions instead."""


libvirt.registerErrorHandler(_silence, None)


def answers(uri: str = URI) -> bool:
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError:
        return False
    conn.close()
    return True


def fix_dev_kvm(path: str = "/dev/kvm") -> None:
    """Make /dev/kvm usable by the kvm group when it is root-only."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return
    if info.st_mode & (stat.S_IRGRP | stat.S_IWGRP):
        return
    with contextlib.suppress(KeyError, PermissionError):
        os.chown(path, -1, grp.getgrnam("kvm").gr_gid)
        os.chmod(path, 0o660)


@dataclass
class Libvirtd:
    uri: str
    log_dir: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def started_here(self) -> bool:
        return bool(self.processes)

    def log_tail(self, lines: int = 30) -> str:
        path = self.log_dir / "libvirtd.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """Stop the daemons this handle started (libvirtd first), nothing else."""
        for proc in reversed(self.processes):
            terminate(proc)
        self.processes.clear()


def _spawn(binary: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([binary], stdout=out, stderr=subprocess.STDOUT)


def start_libvirtd(uri: str = URI, timeout: float = 60.0) -> Libvirtd:
    log_dir = Path(tempfile.mkdtemp(prefix="vr-libvirtd-logs-"))
    daemon = Libvirtd(uri, log_dir)
    if answers(uri):
        return daemon
    fix_dev_kvm()
    virtlogd = _spawn(VIRTLOGD, log_dir / "virtlogd.log")
    time.sleep(0.2)
    if virtlogd.poll() is None:  # exits at once when one is running already
        daemon.processes.append(virtlogd)
    libvirtd = _spawn(LIBVIRTD, log_dir / "libvirtd.log")
    daemon.processes.append(libvirtd)
    deadline = time.monotonic() + timeout
    while not answers(uri):
        if libvirtd.poll() is not None:
            daemon.stop()
            raise RuntimeError(f"libvirtd exited ({libvirtd.returncode}):\n{daemon.log_tail()}")
        if time.monotonic() > deadline:
            daemon.stop()
            raise RuntimeError(f"libvirtd did not answer within {timeout}s:\n{daemon.log_tail()}")
        time.sleep(0.3)
    return daemon


@dataclass
class LibvirtEnv:
    """Pools and a network of one test session (see the module docstring)."""

    uri: str
    prefix: str  # every test domain / volume name starts with it
    root: Path
    pool: str
    pool_path: Path
    pool2: str
    pool2_path: Path
    network: str
    bridge: str = ""  # the host bridge of ``network`` (a real bridge to attach NICs to)
    daemon: Libvirtd | None = None

    def name(self, suffix: str) -> str:
        return f"{self.prefix}-{suffix}"

    def connect(self) -> Any:
        return libvirt.open(self.uri)

    def destroy(self) -> None:
        conn = libvirt.open(self.uri)
        try:
            for dom in conn.listAllDomains(0):
                if dom.name().startswith(self.prefix):
                    remove_domain(dom)
            for pool_name in (self.pool, self.pool2):
                with contextlib.suppress(libvirt.libvirtError):
                    pool = conn.storagePoolLookupByName(pool_name)
                    if pool.isActive():
                        pool.destroy()
                    pool.undefine()
            with contextlib.suppress(libvirt.libvirtError):
                net = conn.networkLookupByName(self.network)
                if net.isActive():
                    net.destroy()
                net.undefine()
        finally:
            conn.close()
        shutil.rmtree(self.root, ignore_errors=True)


def remove_domain(dom: Any) -> None:
    """Power off and undefine a domain with all its metadata (volumes stay)."""
    with contextlib.suppress(libvirt.libvirtError):
        if dom.isActive():
            dom.destroy()
    with contextlib.suppress(libvirt.libvirtError):
        dom.undefineFlags(
            libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
            | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
        )


def create_env(uri: str = URI, daemon: Libvirtd | None = None) -> LibvirtEnv:
    tag = secrets.token_hex(3)
    root = Path(tempfile.mkdtemp(prefix=f"vr-test-{tag}-"))
    root.chmod(0o755)  # QEMU runs as libvirt-qemu and must traverse into the pools
    env = LibvirtEnv(
        uri=uri,
        prefix=f"vr-test-{tag}",
        root=root,
        pool=f"vr-test-{tag}",
        pool_path=root / "pool",
        pool2=f"vr-test-{tag}-2",
        pool2_path=root / "pool2",
        network=f"vr-test-net-{tag}",
        daemon=daemon,
    )
    conn = libvirt.open(uri)
    try:
        for name, path in ((env.pool, env.pool_path), (env.pool2, env.pool2_path)):
            path.mkdir(mode=0o755)
            pool = conn.storagePoolDefineXML(build_dir_pool(name, str(path)), 0)
            pool.create(0)
        net = conn.networkDefineXML(isolated_network_xml(env.network))
        net.create()
        env.bridge = str(net.bridgeName())
    except BaseException:
        conn.close()
        env.destroy()
        raise
    conn.close()
    return env


def isolated_network_xml(name: str) -> str:
    """A network with no forward and no IP: a bare bridge, no dnsmasq."""
    root = ET.Element("network")
    ET.SubElement(root, "name").text = name
    return ET.tostring(root, encoding="unicode")


_ENV_KEY = pytest.StashKey[LibvirtEnv]()


def session_env(config: pytest.Config) -> LibvirtEnv:
    """The session's environment: started on first use, removed at session end."""
    existing = config.stash.get(_ENV_KEY, None)
    if existing is not None:
        return existing
    daemon = start_libvirtd()
    try:
        env = create_env(daemon.uri, daemon)
    except BaseException:
        daemon.stop()
        raise
    config.stash[_ENV_KEY] = env

    def cleanup() -> None:
        try:
            env.destroy()
        finally:
            daemon.stop()
            shutil.rmtree(daemon.log_dir, ignore_errors=True)

    config.add_cleanup(cleanup)
    return env
