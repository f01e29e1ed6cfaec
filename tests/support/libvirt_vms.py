"""Source VMs on the session's real libvirtd for end-to-end tests.

``define_source`` creates volumes in the session's first pool with known data at
several offsets (holes elsewhere), defines a TCG domain using them and one NIC on the
session's network, and starts it unless asked not to (a 64 MiB guest without an OS
sits in its BIOS: good enough to be running). ``remove_all`` deletes every domain of
the session's prefix and every volume of both pools (a test's leftovers).
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from providers.libvirt import domxml, volxml
from tests.servers.libvirtd import LibvirtEnv, remove_domain

MiB = 1 << 20
EXTENSIONS = {"qcow2": "qcow2", "raw": "img", "vmdk": "vmdk"}


@dataclass
class Source:
    name: str
    uuid: str
    disks: list[tuple[str, str]]  # (path, format)
    mac: str


def volume_with_data(
    conn: Any, env: LibvirtEnv, name: str, fmt: str, *, size: int, fill: int
) -> str:
    pool = conn.storagePoolLookupByName(env.pool)
    path = str(pool.createXML(volxml.build_volume(name, size, fmt), 0).path())
    for index, offset in enumerate((0, size // 3, size - 4 * MiB)):
        subprocess.run(
            ["qemu-io", "-f", fmt, "-c", f"write -P {fill + index} {offset} {2 * MiB}", path],
            check=True,
            capture_output=True,
            timeout=120,
        )
    return path


def define_source(
    env: LibvirtEnv,
    disks: Sequence[tuple[str, int, int]],  # (format, size, fill byte)
    *,
    running: bool = True,
    vcpus: int = 1,
    memory_mib: int = 64,
    label: str = "src",
) -> Source:
    tag = secrets.token_hex(3)
    mac = f"52:54:00:e2:{tag[:2]}:{tag[2:4]}"
    conn = env.connect()
    try:
        made = [
            (
                volume_with_data(
                    conn,
                    env,
                    env.name(f"{label}-{tag}-{index}.{EXTENSIONS[fmt]}"),
                    fmt,
                    size=size,
                    fill=fill,
                ),
                fmt,
            )
            for index, (fmt, size, fill) in enumerate(disks)
        ]
        plan = domxml.DomainPlan(
            name=env.name(f"{label}-{tag}"),
            vcpus=vcpus,
            memory_mib=memory_mib,
            virt_type="qemu",
            disks=[
                domxml.DiskPlan(
                    path, fmt, "virtio", f"vd{chr(ord('a') + index)}", boot_order=int(index == 0)
                )
                for index, (path, fmt) in enumerate(made)
            ],
            nics=[domxml.NicPlan("network", env.network, mac)],
        )
        dom = conn.defineXML(domxml.build_domain(plan))
        if running:
            dom.create()
        return Source(plan.name, dom.UUIDString(), made, mac)
    finally:
        conn.close()


def remove_all(env: LibvirtEnv) -> None:
    conn = env.connect()
    try:
        for candidate in conn.listAllDomains(0):
            if candidate.name().startswith(env.prefix):
                remove_domain(candidate)
        for pool_name in (env.pool, env.pool2):
            pool = conn.storagePoolLookupByName(pool_name)
            pool.refresh(0)
            for vol in pool.listAllVolumes(0):
                vol.delete(0)
    finally:
        conn.close()
