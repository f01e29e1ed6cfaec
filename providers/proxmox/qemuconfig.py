"""The qemu-server VM config (``GET /nodes/{node}/qemu/{vmid}/config``) <-> our model.

PVE keeps a VM as a flat key/value config. What the contract needs from it:

* CPU: ``cores`` x ``sockets`` (defaults 1 x 1; ``vcpus`` only limits hotplugged
  ones and is not the count), ``memory`` in MiB (default 512; newer releases may
  write ``current=N``), firmware from ``bios`` (``ovmf`` = UEFI, else BIOS);
* disks: every ``ideN``/``sataN``/``scsiN``/``virtioN`` drive. A drive value is
  ``<volume>,key=value,...``; ``<volume>`` is a volume id ``storage:name``, an
  absolute path, ``none`` or ``cdrom``. ``media=cdrom`` marks a CD-ROM. ``size=``
  spells the size as PVE does (``32G``, ``512M``, bytes) and ``format=`` the image
  format when it is not implied by the volume name;
* NICs: ``netN`` = ``<model>=<MAC>,bridge=vmbr0,tag=10,...`` (the model key carries
  the MAC; ``macaddr=`` is the older spelling);
* boot: ``boot: order=scsi0;net0`` (or the legacy ``bootdisk``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from virtrigaud import errors

DISK_KEY = re.compile(r"^(ide|sata|scsi|virtio)(\d+)$")
NET_KEY = re.compile(r"^net(\d+)$")
BUS_LIMITS = {"ide": 4, "sata": 6, "scsi": 31, "virtio": 16}
NET_MODELS = frozenset(
    {
        "e1000",
        "e1000-82540em",
        "e1000-82544gc",
        "e1000-82545em",
        "e1000e",
        "i82551",
        "i82557b",
        "i82559er",
        "ne2k_isa",
        "ne2k_pci",
        "pcnet",
        "rtl8139",
        "virtio",
        "vmxnet3",
    }
)
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)([KMGT]?)$")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
IMAGE_EXTENSIONS = ("qcow2", "raw", "vmdk")


def parse_size(text: str) -> int:
    """PVE's size spelling -> bytes (0 when it cannot be read)."""
    found = _SIZE.match(text.strip())
    if found is None:
        return 0
    return int(float(found.group(1)) * _UNITS[found.group(2)])


def split_props(value: str) -> tuple[str, dict[str, str]]:
    """``first,key=value,...`` -> (first, {key: value}); ``first`` may be ``""``."""
    first = ""
    props: dict[str, str] = {}
    for index, part in enumerate(str(value).split(",")):
        key, eq, val = part.partition("=")
        if eq:
            props[key.strip()] = val.strip()
        elif index == 0:
            first = part.strip()
    return first, props


def natural_key(key: str) -> tuple[str, int]:
    found = re.fullmatch(r"(\D+)(\d+)", key)
    return (found.group(1), int(found.group(2))) if found else (key, 0)


@dataclass(frozen=True)
class Drive:
    """One disk or CD-ROM of a config."""

    key: str  # scsi0
    bus: str  # scsi
    volume: str  # storage:name, /path, none, cdrom
    props: Mapping[str, str]
    cdrom: bool

    @property
    def storage(self) -> str:
        if self.volume.startswith("/") or ":" not in self.volume:
            return ""
        return self.volume.split(":", 1)[0]

    @property
    def size(self) -> int:
        return parse_size(self.props.get("size", ""))

    @property
    def format(self) -> str:
        """The format the config says, else the one the volume name implies ("" if
        neither: a block storage volume, raw unless the storage says otherwise)."""
        if self.props.get("format"):
            return self.props["format"]
        ext = self.volume.rsplit(".", 1)[-1] if "." in self.volume else ""
        return ext if ext in IMAGE_EXTENSIONS else ""


@dataclass(frozen=True)
class NetDevice:
    key: str
    model: str
    mac: str
    bridge: str
    tag: int


@dataclass(frozen=True)
class QemuConfig:
    name: str
    cores: int
    sockets: int
    memory_mib: int
    firmware: str  # bios | efi
    ostype: str
    drives: list[Drive] = field(default_factory=list)
    nets: list[NetDevice] = field(default_factory=list)
    boot_order: list[str] = field(default_factory=list)
    description: str = ""

    @property
    def boot_disk(self) -> str:
        disks = [d.key for d in self.drives if not d.cdrom]
        for key in self.boot_order:
            if key in disks:
                return key
        return disks[0] if disks else ""


def _int(value: Any, default: int) -> int:
    try:
        return int(str(value).split("=")[-1])
    except (TypeError, ValueError):
        return default


def parse_memory(value: Any) -> int:
    """``2048`` or ``current=2048`` (PVE 8) -> MiB."""
    if value is None:
        return 512
    text = str(value)
    if "=" in text:
        _, props = split_props(text)
        return _int(props.get("current"), 512)
    return _int(text, 512)


def parse_drive(key: str, value: str) -> Drive:
    volume, props = split_props(value)
    if not volume:
        volume = props.pop("file", "")
    bus = DISK_KEY.match(key)
    cdrom = props.get("media") == "cdrom" or volume == "cdrom"
    return Drive(key, bus.group(1) if bus else "", volume, props, cdrom)


def parse_net(key: str, value: str) -> NetDevice:
    model, mac = "", ""
    _, props = split_props("," + str(value))
    for name, val in props.items():
        if name in NET_MODELS:
            model, mac = name, val
    model = props.get("model", model)
    mac = props.get("macaddr", mac)
    return NetDevice(
        key=key,
        model=model,
        mac=mac.lower(),
        bridge=props.get("bridge", ""),
        tag=_int(props.get("tag"), 0),
    )


def parse_config(config: Mapping[str, Any]) -> QemuConfig:
    drives = [
        parse_drive(k, str(v))
        for k, v in sorted(config.items(), key=lambda kv: natural_key(kv[0]))
        if DISK_KEY.match(k)
    ]
    nets = [
        parse_net(k, str(v))
        for k, v in sorted(config.items(), key=lambda kv: natural_key(kv[0]))
        if NET_KEY.match(k)
    ]
    boot = str(config.get("boot", ""))
    order: list[str] = []
    if boot.startswith("order="):
        order = [d for d in boot[len("order=") :].split(";") if d]
    elif config.get("bootdisk"):
        order = [str(config["bootdisk"])]
    return QemuConfig(
        name=str(config.get("name", "")),
        cores=max(1, _int(config.get("cores"), 1)),
        sockets=max(1, _int(config.get("sockets"), 1)),
        memory_mib=parse_memory(config.get("memory")),
        firmware="efi" if str(config.get("bios", "seabios")) == "ovmf" else "bios",
        ostype=str(config.get("ostype", "")),
        drives=drives,
        nets=nets,
        boot_order=order,
        description=str(config.get("description", "")),
    )


def check_mac(value: str, field_name: str) -> str:
    if not _MAC.match(value):
        raise errors.InvalidArgument(f"{field_name}: {value!r} is not a MAC address")
    if int(value[:2], 16) & 1:
        raise errors.InvalidArgument(f"{field_name}: {value!r} is a multicast MAC address")
    return value.upper()


def net_value(model: str, mac: str, bridge: str, tag: int) -> str:
    """A ``netN`` value: ``model[=MAC],bridge=...[,tag=N]``."""
    head = f"{model}={mac}" if mac else model
    parts = [head, f"bridge={bridge}"]
    if tag:
        parts.append(f"tag={tag}")
    return ",".join(parts)
