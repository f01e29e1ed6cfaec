"""Storage pool / volume XML and the capability documents, parsed and generated.

As in ``domxml``, generation uses ``xml.etree`` only; volume names are checked by
``names.check_safe`` before they get here.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from providers.libvirt.domxml import parse_xml, to_bytes

# Pool types whose volumes are plain files named <target path>/<volume name>.
FILE_POOL_TYPES = frozenset({"dir", "fs", "netfs"})


@dataclass(frozen=True)
class PoolXml:
    name: str
    type: str  # dir, fs, netfs, logical, disk, iscsi, rbd, ...
    path: str  # target path ("" for network pools)


@dataclass(frozen=True)
class VolumeXml:
    name: str
    key: str
    path: str
    type: str  # file | block | dir | network | ...
    format: str  # qcow2, raw, iso, ... ("" if unknown)
    capacity: int  # guest-visible size in bytes
    allocation: int  # bytes used on the storage
    physical: int = 0  # length of the file / device (what a volume stream carries); 0 unknown
    backing_path: str = ""  # the backing file libvirt resolved from the image header


def parse_pool(text: str) -> PoolXml:
    root = parse_xml(text, "pool XML")
    return PoolXml(
        name=root.findtext("name", ""),
        type=root.get("type", ""),
        path=root.findtext("target/path", ""),
    )


def parse_volume(text: str) -> VolumeXml:
    root = parse_xml(text, "volume XML")
    capacity, allocation = root.find("capacity"), root.find("allocation")
    physical = root.find("physical")
    fmt = root.find("target/format")
    return VolumeXml(
        name=root.findtext("name", ""),
        key=root.findtext("key", ""),
        path=root.findtext("target/path", ""),
        type=root.get("type", "file"),
        format=fmt.get("type", "") if fmt is not None else "",
        capacity=to_bytes(capacity.text, capacity.get("unit")) if capacity is not None else 0,
        allocation=(
            to_bytes(allocation.text, allocation.get("unit")) if allocation is not None else 0
        ),
        physical=to_bytes(physical.text, physical.get("unit")) if physical is not None else 0,
        backing_path=root.findtext("backingStore/path", "").strip(),
    )


def build_volume(name: str, capacity: int, fmt: str, allocation: int | None = 0) -> str:
    """XML of a new volume; ``allocation=0`` keeps files sparse."""
    root = ET.Element("volume")
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "capacity", unit="bytes").text = str(capacity)
    if allocation is not None:
        ET.SubElement(root, "allocation", unit="bytes").text = str(allocation)
    target = ET.SubElement(root, "target")
    ET.SubElement(target, "format", type=fmt)
    return ET.tostring(root, encoding="unicode")


def build_dir_pool(name: str, path: str) -> str:
    root = ET.Element("pool", type="dir")
    ET.SubElement(root, "name").text = name
    ET.SubElement(ET.SubElement(root, "target"), "path").text = path
    return ET.tostring(root, encoding="unicode")


def host_virt_types(caps_xml: str, arch: str = "x86_64") -> set[str]:
    """Domain types (``qemu``, ``kvm``) the host offers for ``arch`` guests.

    libvirt lists ``kvm`` only when /dev/kvm is usable by the daemon, so this is the
    right test on remote hosts too.
    """
    root = parse_xml(caps_xml, "capabilities XML")
    found: set[str] = set()
    for guest in root.findall("guest"):
        guest_arch = guest.find("arch")
        if guest_arch is None or guest_arch.get("name") != arch:
            continue
        found.update(d.get("type", "") for d in guest_arch.findall("domain"))
    found.discard("")
    return found


def host_arch(caps_xml: str) -> str:
    return parse_xml(caps_xml, "capabilities XML").findtext("host/cpu/arch", "x86_64")


def firmware_values(domcaps_xml: str) -> set[str]:
    """``<os><enum name='firmware'>`` values: contains ``efi`` when OVMF is installed."""
    root = parse_xml(domcaps_xml, "domain capabilities XML")
    return {v.text or "" for v in root.findall("os/enum[@name='firmware']/value")}
