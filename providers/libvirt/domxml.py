"""Domain XML: parsed into small dataclasses, and generated for new VMs.

Parsing reads what the inventory needs and nothing else: vCPUs and sockets, memory,
firmware (``<os firmware='efi'>`` or a pflash/OVMF loader means UEFI), every
``<disk>`` (device, bus, format from ``<driver type>``, source file / block device /
pool volume / network image, target dev = the disk id, boot order, backing chain) and
every ``<interface>`` (network or bridge, MAC, model, VLAN tag).

Generation uses ``xml.etree`` only: user-chosen values (the VM name, labels) are set as
element text or attribute values and escaped by the serializer, never formatted into
a string. Paths come from libvirt (volume paths), never from user input.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from virtrigaud import errors

LIBOSINFO_NS = "http://libosinfo.org/xmlns/libvirt/domain/1.0"
VIRTRIGAUD_NS = "https://virtrigaud.io/xmlns/libvirt/1"

_UNIT_BYTES = {
    "b": 1,
    "bytes": 1,
    "k": 1024,
    "kib": 1024,
    "kb": 1000,
    "m": 1024**2,
    "mib": 1024**2,
    "mb": 1000**2,
    "g": 1024**3,
    "gib": 1024**3,
    "gb": 1000**3,
    "t": 1024**4,
    "tib": 1024**4,
    "tb": 1000**4,
}

# Target device prefix per bus (libvirt's own naming convention).
ET.register_namespace("vr", VIRTRIGAUD_NS)

BUS_PREFIX = {"virtio": "vd", "scsi": "sd", "sata": "sd", "usb": "sd", "ide": "hd"}


@dataclass(frozen=True)
class DiskXml:
    """One ``<disk>`` element."""

    target: str  # target dev: the disk id ("vda")
    device: str  # disk | cdrom | floppy | lun
    bus: str
    format: str  # driver type: qcow2, raw, ... ("" if not stated)
    source_type: str  # file | block | volume | network | ...
    path: str  # file / block device path; network: "protocol:name"; "" if none
    pool: str = ""  # source_type == "volume"
    volume: str = ""
    boot_order: int = 0
    readonly: bool = False
    backing: tuple[str, ...] = ()  # backing chain paths, top first (live XML only)


@dataclass(frozen=True)
class NicXml:
    """One ``<interface>`` element."""

    kind: str  # network | bridge | direct | user | ...
    source: str  # network name, bridge name or host device
    mac: str
    model: str
    vlan: int = 0


@dataclass(frozen=True)
class DomainXml:
    uuid: str
    name: str
    vcpus: int
    sockets: int
    memory_kib: int
    firmware: str  # "bios" | "efi"
    disks: tuple[DiskXml, ...]
    nics: tuple[NicXml, ...]
    guest_os: str = ""
    running_id: int = -1  # <domain id=...>: only present while the domain runs


def _int(text: str | None, default: int = 0) -> int:
    try:
        return int((text or "").strip())
    except ValueError:
        return default


def to_bytes(value: str | None, unit: str | None) -> int:
    """A libvirt scaled integer (``<memory unit='KiB'>65536</memory>``) in bytes."""
    scale = _UNIT_BYTES.get((unit or "b").lower())
    if scale is None:
        raise errors.InternalError(f"unknown libvirt size unit {unit!r}")
    return _int(value) * scale


def parse_xml(text: str, what: str) -> ET.Element:
    try:
        return ET.fromstring(text)  # noqa: S314 - XML from libvirt, not from users
    except ET.ParseError as exc:
        raise errors.InternalError(f"{what}: libvirt returned malformed XML ({exc})") from exc


def _firmware(os_el: ET.Element | None) -> str:
    if os_el is None:
        return "bios"
    if os_el.get("firmware") == "efi":
        return "efi"
    loader = os_el.find("loader")
    if loader is not None:
        path = (loader.text or "").lower()
        if loader.get("type") == "pflash" or "ovmf" in path or "efi" in path:
            return "efi"
    return "bios"


def _source_of(disk: ET.Element) -> tuple[str, str, str]:
    """(path, pool, volume) of a disk or backingStore element."""
    src = disk.find("source")
    if src is None:
        return "", "", ""
    kind = disk.get("type", "file")
    if kind == "volume":
        return "", src.get("pool", ""), src.get("volume", "")
    if kind == "network":
        return f"{src.get('protocol', 'network')}:{src.get('name', '')}", "", ""
    return src.get("file") or src.get("dev") or src.get("dir") or "", "", ""


def _backing_chain(disk: ET.Element) -> tuple[str, ...]:
    chain: list[str] = []
    node = disk.find("backingStore")
    while node is not None and node.find("source") is not None:
        path, _, _ = _source_of(node)
        chain.append(path)
        node = node.find("backingStore")
    return tuple(chain)


def parse_disk(el: ET.Element) -> DiskXml:
    driver, target, boot = el.find("driver"), el.find("target"), el.find("boot")
    path, pool, volume = _source_of(el)
    return DiskXml(
        target=target.get("dev", "") if target is not None else "",
        device=el.get("device", "disk"),
        bus=target.get("bus", "") if target is not None else "",
        format=driver.get("type", "") if driver is not None else "",
        source_type=el.get("type", "file"),
        path=path,
        pool=pool,
        volume=volume,
        boot_order=_int(boot.get("order")) if boot is not None else 0,
        readonly=el.find("readonly") is not None,
        backing=_backing_chain(el),
    )


def parse_nic(el: ET.Element) -> NicXml:
    kind = el.get("type", "")
    src, mac, model = el.find("source"), el.find("mac"), el.find("model")
    source = ""
    if src is not None:
        source = src.get(kind) or src.get("network") or src.get("bridge") or src.get("dev") or ""
    tag = el.find("vlan/tag")
    return NicXml(
        kind=kind,
        source=source,
        mac=(mac.get("address", "") if mac is not None else "").lower(),
        model=model.get("type", "") if model is not None else "",
        vlan=_int(tag.get("id")) if tag is not None else 0,
    )


def parse_domain(text: str) -> DomainXml:
    root = parse_xml(text, "domain XML")
    if root.tag != "domain":
        raise errors.InternalError(f"expected <domain>, libvirt returned <{root.tag}>")
    return domain_from_element(root)


def domain_from_element(root: ET.Element) -> DomainXml:
    vcpus = _int(root.findtext("vcpu"), 1)
    topology = root.find("cpu/topology")
    sockets = _int(topology.get("sockets"), vcpus) if topology is not None else vcpus
    memory = root.find("memory")
    memory_kib = (
        to_bytes(memory.text, memory.get("unit", "KiB")) // 1024 if memory is not None else 0
    )
    devices = root.find("devices")
    disks = tuple(parse_disk(d) for d in devices.findall("disk")) if devices is not None else ()
    nics = tuple(parse_nic(n) for n in devices.findall("interface")) if devices is not None else ()
    osinfo = root.find(f"metadata/{{{LIBOSINFO_NS}}}libosinfo/{{{LIBOSINFO_NS}}}os")
    return DomainXml(
        uuid=root.findtext("uuid", "").strip(),
        name=root.findtext("name", ""),
        vcpus=vcpus,
        sockets=sockets,
        memory_kib=memory_kib,
        firmware=_firmware(root.find("os")),
        disks=disks,
        nics=nics,
        guest_os=osinfo.get("id", "") if osinfo is not None else "",
        running_id=_int(root.get("id"), -1),
    )


# -- generation ---------------------------------------------------------------------


@dataclass(frozen=True)
class DiskPlan:
    """A disk of a new domain: an existing volume (path from libvirt) and its bus."""

    path: str
    format: str  # qcow2 | raw
    bus: str
    target: str
    block: bool = False  # block device volume (logical/disk pools) instead of a file
    boot_order: int = 0


@dataclass(frozen=True)
class NicPlan:
    kind: str  # network | bridge
    source: str
    mac: str = ""
    model: str = "virtio"


@dataclass(frozen=True)
class DomainPlan:
    name: str
    vcpus: int
    memory_mib: int
    virt_type: str  # qemu | kvm
    firmware: str = "bios"  # bios | efi
    disks: Sequence[DiskPlan] = ()
    nics: Sequence[NicPlan] = ()
    labels: Mapping[str, str] = field(default_factory=dict)


def target_names(buses: Sequence[str]) -> list[str]:
    """Target dev per disk: vda, vdb, sda, hda, ... numbered per prefix."""
    used: dict[str, int] = {}
    names = []
    for bus in buses:
        prefix = BUS_PREFIX[bus]
        index = used.get(prefix, 0)
        used[prefix] = index + 1
        names.append(prefix + _letters(index))
    return names


def _letters(index: int) -> str:
    """0 -> a, 25 -> z, 26 -> aa (libvirt's disk naming)."""
    out = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        out = chr(ord("a") + rem) + out
    return out


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def _disk_element(devices: ET.Element, disk: DiskPlan) -> None:
    el = _sub(devices, "disk", type="block" if disk.block else "file", device="disk")
    _sub(el, "driver", name="qemu", type=disk.format)
    if disk.block:
        _sub(el, "source", dev=disk.path)
    else:
        _sub(el, "source", file=disk.path)
    _sub(el, "target", dev=disk.target, bus=disk.bus)
    if disk.boot_order:
        _sub(el, "boot", order=str(disk.boot_order))


def _nic_element(devices: ET.Element, nic: NicPlan) -> None:
    el = _sub(devices, "interface", type=nic.kind)
    if nic.mac:
        _sub(el, "mac", address=nic.mac)
    _sub(el, "source", **{nic.kind: nic.source})
    _sub(el, "model", type=nic.model)


def build_domain(plan: DomainPlan) -> str:
    """The XML of a new persistent domain."""
    root = ET.Element("domain", type=plan.virt_type)
    _sub(root, "name", plan.name)
    if plan.labels:
        meta = _sub(_sub(root, "metadata"), f"{{{VIRTRIGAUD_NS}}}labels")
        for key, value in sorted(plan.labels.items()):
            _sub(meta, f"{{{VIRTRIGAUD_NS}}}label", key=key, value=value)
    _sub(root, "memory", str(plan.memory_mib), unit="MiB")
    _sub(root, "vcpu", str(plan.vcpus))
    os_el = _sub(root, "os", firmware="efi") if plan.firmware == "efi" else _sub(root, "os")
    _sub(os_el, "type", "hvm")
    features = _sub(root, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    _sub(root, "on_poweroff", "destroy")
    _sub(root, "on_reboot", "restart")
    _sub(root, "on_crash", "destroy")
    devices = _sub(root, "devices")
    if any(d.bus == "scsi" for d in plan.disks):
        _sub(devices, "controller", type="scsi", model="virtio-scsi")
    for disk in plan.disks:
        _disk_element(devices, disk)
    for nic in plan.nics:
        _nic_element(devices, nic)
    _sub(devices, "serial", type="pty")
    return ET.tostring(root, encoding="unicode")


def labels_of(text: str) -> dict[str, str]:
    """The virtrigaud labels stored in a domain's metadata."""
    root = parse_xml(text, "domain XML")
    found = root.findall(f"metadata/{{{VIRTRIGAUD_NS}}}labels/{{{VIRTRIGAUD_NS}}}label")
    return {el.get("key", ""): el.get("value", "") for el in found}
