"""VMDK descriptors: reading the ones vSphere writes, writing the one imports use.

A vSphere virtual disk is a small text descriptor (``disk.vmdk``) naming one or more
extent files that hold the data (``disk-flat.vmdk`` for a flat disk, ``-delta.vmdk``
/ ``-sesparse.vmdk`` for snapshot deltas) and, for a delta, its parent descriptor
(``parentFileNameHint``). Exports copy each file of a disk chain into scratch and
rewrite these names to the local copies so qemu-img reads the chain there.

Imports store a *vmfs* flat disk: a descriptor with ``createType="vmfs"`` and one
``RW <sectors> VMFS "<name>-flat.vmdk"`` extent holding the raw data. ESXi and
vCenter accept this pair on every datastore kind (it is what they create for a
thick disk), the simulator the tests use attaches it, and qemu-img reads it.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from virtrigaud import errors

SECTOR = 512
MAX_DESCRIPTOR = 64 * 1024  # descriptors are a few hundred bytes; refuse anything huge
_EXTENT = re.compile(
    r"^(?P<access>RW|RDONLY|NOACCESS)\s+(?P<sectors>\d+)\s+(?P<type>[A-Z]+)"
    r'(?:\s+"(?P<file>[^"]*)"(?:\s+(?P<offset>\d+))?)?\s*$'
)
_KEY = re.compile(r'^(?P<key>[A-Za-z0-9_.]+)\s*=\s*"?(?P<value>[^"]*)"?\s*$')


@dataclass(frozen=True)
class Extent:
    access: str
    sectors: int
    type: str  # FLAT, VMFS, VMFSSPARSE, SESPARSE, SPARSE, ZERO, ...
    file: str  # relative to the descriptor's folder ("" for ZERO extents)
    offset: int = 0

    @property
    def size(self) -> int:
        return self.sectors * SECTOR


@dataclass(frozen=True)
class Descriptor:
    create_type: str
    extents: tuple[Extent, ...]
    parent_hint: str  # "" for a base disk
    text: str

    @property
    def capacity(self) -> int:
        return sum(e.size for e in self.extents)


def parse(data: bytes, what: str) -> Descriptor:
    """A text descriptor (InvalidArgument if ``data`` is not one)."""
    if len(data) > MAX_DESCRIPTOR or b"\0" in data:
        raise errors.InvalidArgument(f"{what}: not a VMDK text descriptor")
    text = data.decode("utf-8", errors="replace")
    create_type = ""
    parent = ""
    extents: list[Extent] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _EXTENT.match(line)
        if match is not None:
            extents.append(
                Extent(
                    match.group("access"),
                    int(match.group("sectors")),
                    match.group("type"),
                    match.group("file") or "",
                    int(match.group("offset") or 0),
                )
            )
            continue
        key = _KEY.match(line)
        if key is None:
            continue
        if key.group("key") == "createType":
            create_type = key.group("value")
        elif key.group("key") == "parentFileNameHint":
            parent = key.group("value")
    if not create_type or not extents:
        raise errors.InvalidArgument(f"{what}: not a VMDK text descriptor")
    return Descriptor(create_type, tuple(extents), parent, text)


def rewrite(desc: Descriptor, names: dict[str, str], parent: str | None) -> str:
    """The descriptor text with extent file names (and the parent hint) replaced.

    Blank lines are dropped: qemu-img 7.2 reads an extent line that follows a blank
    line twice (a 32 MiB disk then shows as 64 MiB), and descriptors written by hand
    or by other tools often have one there.
    """
    out: list[str] = []
    for raw in desc.text.splitlines():
        line = raw.strip()
        if not line:
            continue
        match = _EXTENT.match(line)
        if match is not None and match.group("file") in names:
            old = match.group("file")
            out.append(raw.replace(f'"{old}"', f'"{names[old]}"', 1))
            continue
        key = _KEY.match(line)
        if key is not None and key.group("key") == "parentFileNameHint" and parent is not None:
            out.append(f'parentFileNameHint="{parent}"')
            continue
        out.append(raw)
    return "\n".join(out) + "\n"


def flat_descriptor(extent_name: str, size: int, adapter: str = "lsilogic") -> bytes:
    """A vmfs (flat) descriptor for ``extent_name`` holding ``size`` bytes (see module)."""
    if size <= 0 or size % SECTOR:
        raise errors.InvalidArgument(f"a flat VMDK needs a whole number of sectors, not {size}")
    if '"' in extent_name or "/" in extent_name:
        raise errors.InvalidArgument(f"extent name {extent_name!r} is not a plain file name")
    sectors = size // SECTOR
    heads, per_track = 255, 63
    cylinders = max(1, min(sectors // (heads * per_track), 65535))
    cid = secrets.token_hex(4)
    return (
        "# Disk DescriptorFile\n"
        "version=1\n"
        'encoding="UTF-8"\n'
        f"CID={cid}\n"
        "parentCID=ffffffff\n"
        'createType="vmfs"\n'
        "\n"
        "# Extent description\n"
        f'RW {sectors} VMFS "{extent_name}"\n'
        "\n"
        "# The Disk Data Base\n"
        "#DDB\n"
        "\n"
        f'ddb.adapterType = "{adapter}"\n'
        f'ddb.geometry.cylinders = "{cylinders}"\n'
        f'ddb.geometry.heads = "{heads}"\n'
        f'ddb.geometry.sectors = "{per_track}"\n'
        'ddb.virtualHWVersion = "13"\n'
    ).encode()
