"""Test-side setup and inspection for the libvirt provider tests.

Setup talks to libvirt directly (not through the code under test) and puts known
bytes into disk images with ``qemu-io``, so assertions compare the provider's view
with state the test created and read back independently.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libvirt
import libvirt_qemu  # type: ignore[import-untyped]

from manager.providerclient import ProviderClient, raise_for_task
from providers.libvirt import domxml
from providers.libvirt.volxml import build_volume
from tests.servers.libvirtd import LibvirtEnv, remove_domain
from virtrigaud import errors
from virtrigaud.provider.v1 import provider_pb2 as pb

MiB = 1 << 20


def op(label: str) -> str:
    return f"libvirt-test/{label}/{uuid.uuid4().hex[:8]}"


def finish(provider: ProviderClient, task: pb.Task) -> pb.Task:
    """Wait for a task; its typed error is raised if it failed."""
    return raise_for_task(provider.wait_task(task.id, timeout=120, poll=0.05))


def failure(provider: ProviderClient, call: Callable[[], pb.Task]) -> errors.VirtrigaudError:
    """The typed error of a mutating call, raised by the RPC or recorded on its task."""
    try:
        finish(provider, call())
    except errors.VirtrigaudError as exc:
        return exc
    raise AssertionError("the call succeeded")


def qemu_io(path: str, fmt: str, command: str, *, read_only: bool = False) -> str:
    args = ["qemu-io", "-f", fmt]
    if read_only:
        args += ["-r", "-U"]
    done = subprocess.run(
        [*args, "-c", command, path], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def write_pattern(path: str, fmt: str, byte: int, offset: int, length: int) -> None:
    out = qemu_io(path, fmt, f"write -P {byte:#x} {offset} {length}")
    assert f"wrote {length}/{length}" in out, out


def has_pattern(path: str, fmt: str, byte: int, offset: int, length: int) -> bool:
    out = qemu_io(path, fmt, f"read -P {byte:#x} {offset} {length}", read_only=True)
    return f"read {length}/{length}" in out and "verification failed" not in out


def content_sha256(path: str, fmt: str, scratch: Path) -> str:
    """SHA256 of the guest-visible bytes of an image (converted to raw first)."""
    raw = scratch / f"content-{hashlib.sha256(path.encode()).hexdigest()[:8]}.raw"
    subprocess.run(
        ["qemu-img", "convert", "-U", "-f", fmt, "-O", "raw", path, str(raw)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    digest = hashlib.sha256()
    with raw.open("rb") as handle:
        for block in iter(lambda: handle.read(4 * MiB), b""):
            digest.update(block)
    raw.unlink()
    return digest.hexdigest()


def image_info(path: str) -> str:
    done = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", path],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return done.stdout


def guest_write(dom: Any, target: str, byte: int, offset: int, length: int) -> None:
    """Write through the running guest's own disk device (HMP qemu-io on the qdev)."""
    live = domxml.parse_xml(dom.XMLDesc(0), "live XML")
    alias = next(
        d.find("alias").get("name")  # type: ignore[union-attr]
        for d in live.findall("devices/disk")
        if d.find("target").get("dev") == target  # type: ignore[union-attr]
    )
    out = libvirt_qemu.qemuMonitorCommand(
        dom,
        f"qemu-io -d /machine/peripheral/{alias}/virtio-backend "
        f'"write -P {byte:#x} {offset} {length}"',
        libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP,
    )
    assert out == "", out


class SparseSink:
    """Reassembles a download into a file, leaving holes unwritten."""

    def __init__(self, path: Path) -> None:
        self.handle = path.open("wb")
        self.holes: list[int] = []

    def write(self, data: bytes) -> None:
        self.handle.write(data)

    def hole(self, length: int) -> None:
        self.holes.append(length)
        self.handle.seek(length, os.SEEK_CUR)

    def close(self) -> None:
        self.handle.truncate()
        self.handle.close()


@dataclass(frozen=True)
class SetupDisk:
    path: str
    fmt: str
    target: str
    bus: str = "virtio"
    device: str = "disk"


@dataclass(frozen=True)
class SetupNic:
    kind: str  # network | bridge
    source: str
    mac: str
    model: str = "virtio"


def domain_xml(
    name: str, disks: Sequence[SetupDisk], nics: Sequence[SetupNic] = (), memory_mib: int = 64
) -> str:
    root = ET.Element("domain", type="qemu")
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "memory", unit="MiB").text = str(memory_mib)
    ET.SubElement(root, "vcpu").text = "2"
    cpu = ET.SubElement(root, "cpu")
    ET.SubElement(cpu, "topology", sockets="1", dies="1", cores="2", threads="1")
    os_el = ET.SubElement(root, "os")
    ET.SubElement(os_el, "type").text = "hvm"
    devices = ET.SubElement(root, "devices")
    for disk in disks:
        el = ET.SubElement(devices, "disk", type="file", device=disk.device)
        ET.SubElement(el, "driver", name="qemu", type=disk.fmt)
        if disk.path:
            ET.SubElement(el, "source", file=disk.path)
        ET.SubElement(el, "target", dev=disk.target, bus=disk.bus)
        if disk.device == "cdrom":
            ET.SubElement(el, "readonly")
    for nic in nics:
        el = ET.SubElement(devices, "interface", type=nic.kind)
        ET.SubElement(el, "mac", address=nic.mac)
        ET.SubElement(el, "source", {nic.kind: nic.source})
        ET.SubElement(el, "model", type=nic.model)
    return ET.tostring(root, encoding="unicode")


@dataclass
class Lab:
    """Creates volumes and domains for one test and removes them afterwards."""

    env: LibvirtEnv
    conn: Any
    scratch: Path
    domains: list[str] = field(default_factory=list)  # names
    volumes: list[str] = field(default_factory=list)  # paths

    def pool(self, name: str = "") -> Any:
        return self.conn.storagePoolLookupByName(name or self.env.pool)

    def volume(self, name: str, size: int = 64 * MiB, fmt: str = "qcow2", pool: str = "") -> str:
        vol = self.pool(pool).createXML(build_volume(name, size, fmt), 0)
        path = str(vol.path())
        self.volumes.append(path)
        return path

    def track_volume(self, path: str) -> None:
        self.volumes.append(path)

    def define(self, xml: str) -> Any:
        dom = self.conn.defineXML(xml)
        self.domains.append(dom.name())
        return dom

    def track_domain(self, name: str) -> None:
        self.domains.append(name)

    def domain(self, name: str) -> Any:
        return self.conn.lookupByName(name)

    def pool_volume_names(self, pool: str = "") -> set[str]:
        target = self.pool(pool)
        target.refresh(0)
        return {v.name() for v in target.listAllVolumes(0)}

    def cleanup(self) -> None:
        for name in self.domains:
            with contextlib.suppress(libvirt.libvirtError):
                remove_domain(self.conn.lookupByName(name))
        for path in self.volumes:
            with contextlib.suppress(libvirt.libvirtError):
                self.conn.storageVolLookupByPath(path).delete(0)
            with contextlib.suppress(FileNotFoundError):
                Path(path).unlink()


@contextlib.contextmanager
def lab(env: LibvirtEnv, scratch: Path) -> Iterator[Lab]:
    conn = env.connect()
    created = Lab(env, conn, scratch)
    try:
        yield created
    finally:
        try:
            created.cleanup()
        finally:
            conn.close()
