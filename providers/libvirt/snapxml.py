"""Domain snapshot XML, parsed and generated (see ``snapshots`` for the strategy)."""

from __future__ import annotations

import posixpath
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from providers.libvirt.domxml import DomainXml, domain_from_element, parse_xml


@dataclass(frozen=True)
class SnapshotDisk:
    target: str
    mode: str  # external | internal | no | manual
    overlay: str  # external: the overlay file created by the snapshot


@dataclass(frozen=True)
class SnapshotXml:
    name: str
    description: str
    creation_time: int  # seconds since the epoch
    state: str  # disk-snapshot, running, shutoff, ...
    disks: tuple[SnapshotDisk, ...]
    domain: DomainXml | None  # the domain definition when the snapshot was taken

    @property
    def external(self) -> bool:
        return any(d.mode == "external" for d in self.disks)


def parse_snapshot(text: str) -> SnapshotXml:
    root = parse_xml(text, "snapshot XML")
    disks = []
    for el in root.findall("disks/disk"):
        src = el.find("source")
        disks.append(
            SnapshotDisk(
                target=el.get("name", ""),
                mode=el.get("snapshot", ""),
                overlay=(src.get("file") or src.get("dev") or "") if src is not None else "",
            )
        )
    dom = root.find("domain")
    try:
        created = int(root.findtext("creationTime", "0").strip())
    except ValueError:
        created = 0
    return SnapshotXml(
        name=root.findtext("name", ""),
        description=root.findtext("description", ""),
        creation_time=created,
        state=root.findtext("state", ""),
        disks=tuple(disks),
        domain=domain_from_element(dom) if dom is not None else None,
    )


def overlay_path(base: str, snapshot_name: str) -> str:
    """Where the overlay of ``base`` goes: beside it, named after the snapshot.

    ``base`` comes from libvirt and ``snapshot_name`` is a safe name (``names``).
    """
    directory, filename = posixpath.split(base)
    stem = filename.rsplit(".", 1)[0] if "." in filename else filename
    return posixpath.join(directory, f"{stem}.{snapshot_name}.qcow2")


def build_disk_only(
    name: str,
    description: str,
    overlays: Mapping[str, str],
    excluded: Sequence[str],
) -> str:
    """An external disk-only snapshot: ``overlays`` maps target dev -> overlay file."""
    root = ET.Element("domainsnapshot")
    ET.SubElement(root, "name").text = name
    if description:
        ET.SubElement(root, "description").text = description
    disks = ET.SubElement(root, "disks")
    for target, overlay in overlays.items():
        disk = ET.SubElement(disks, "disk", name=target, snapshot="external", type="file")
        ET.SubElement(disk, "driver", type="qcow2")
        ET.SubElement(disk, "source", file=overlay)
    for target in excluded:
        ET.SubElement(disks, "disk", name=target, snapshot="no")
    return ET.tostring(root, encoding="unicode")
