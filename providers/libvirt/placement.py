"""Where things go: storage pools, existing volumes and NIC attachments.

Disk references (decided here, documented for the manager and ImportDisk):

* ``ImportedDisk.disk_id`` is ``pool/volume`` (what ImportDisk returns); an absolute
  path (the volume key/path of a file or block volume) is accepted too. The volume
  must exist; it is attached in place, never copied.
* ``ImageRef.name`` is ``pool/volume``, or just ``volume`` in the image pool (the
  ``imagePool`` option, else the target pool); ``ImageRef.path`` is a volume key or
  path. The base volume is cloned (a full copy, ``virStorageVolCreateXMLFrom``).

NIC attachments (``NicSpec.network``): ``bridge:<name>`` is a host bridge,
``network:<name>`` a libvirt network, and a bare name is looked up among libvirt
networks first, then host bridges. Inventory reports networks by bare name and
bridges as ``bridge:<name>``, so what ListVMs shows can be passed back unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from providers.libvirt import domxml, names
from providers.libvirt.client import LibvirtClient, PoolRecord
from providers.libvirt.volxml import VolumeXml
from virtrigaud import errors
from virtrigaud.logging import get_logger

log = get_logger("virtrigaud.libvirt")

DISK_FORMATS = ("qcow2", "raw")


@dataclass(frozen=True)
class Attachment:
    kind: str  # network | bridge
    name: str


def active_pool(client: LibvirtClient, name: str, field: str) -> PoolRecord:
    """The pool called ``name``: NotFound if missing, FailedPrecondition if inactive."""
    names.check_safe(name, field)
    try:
        pool = client.pool(name)
    except errors.NotFound as exc:
        raise errors.NotFound(f"{field}: storage pool {name!r} does not exist") from exc
    if not pool.active:
        raise errors.FailedPrecondition(f"{field}: storage pool {name!r} is not active")
    return pool


def existing_volume(
    client: LibvirtClient, ref: str, field: str, default_pool: str = ""
) -> tuple[str, VolumeXml]:
    """(pool, volume) for ``pool/volume``, a bare name in ``default_pool``, or a path."""
    if ref.startswith("/"):
        try:
            return client.volume_by_key(ref)
        except errors.NotFound as exc:
            raise errors.NotFound(f"{field}: no storage volume has the path {ref!r}") from exc
    parsed = names.parse_volume_ref(ref, field, default_pool)
    try:
        return parsed.pool, client.volume(parsed.pool, parsed.name)
    except errors.NotFound as exc:
        raise errors.NotFound(f"{field}: {exc}") from exc


def disk_format(vol: VolumeXml, requested: str, field: str) -> str:
    """The format to attach ``vol`` with: its own, which must match any stated one."""
    actual = vol.format or "raw"
    if requested and requested != actual:
        raise errors.InvalidArgument(
            f"{field}: volume {vol.name!r} is {actual}, not {requested} as requested"
        )
    if actual not in DISK_FORMATS:
        raise errors.Unsupported(
            f"{field}: volume {vol.name!r} is {actual}; attach qcow2 or raw volumes "
            "(ImportDisk converts)"
        )
    if vol.type not in ("file", "block"):
        raise errors.Unsupported(f"{field}: volume {vol.name!r} is a {vol.type} volume")
    return actual


def check_bus(bus: str, field: str) -> str:
    bus = bus or "virtio"
    if bus not in domxml.BUS_PREFIX:
        known = ", ".join(sorted(domxml.BUS_PREFIX))
        raise errors.InvalidArgument(f"{field}: unknown bus {bus!r} (one of {known})")
    return bus


def split_network(value: str) -> tuple[str, str]:
    """("bridge"|"network"|"", name) of a NicSpec.network value."""
    kind, sep, name = value.partition(":")
    if sep and kind in ("bridge", "network"):
        return kind, name
    return "", value


def resolve_network(client: LibvirtClient, value: str, field: str) -> Attachment:
    """The attachment ``value`` names; NotFound / FailedPrecondition say what is wrong."""
    kind, name = split_network(value)
    if not name:
        raise errors.InvalidArgument(f"{field}: empty network name")
    if kind in ("", "network"):
        active = client.network_active(name)
        if active:
            return Attachment("network", name)
        if active is False:
            raise errors.FailedPrecondition(
                f"{field}: libvirt network {name!r} exists but is not active"
            )
        if kind == "network":
            raise errors.NotFound(f"{field}: libvirt network {name!r} does not exist")
    try:
        iface = client.host_interface_xml(name)
    except errors.Unsupported:
        if kind == "bridge":  # the host cannot list interfaces: trust the explicit form
            log.warning("bridge_not_verifiable", bridge=name)
            return Attachment("bridge", name)
        raise
    if iface is None:
        what = "host bridge" if kind == "bridge" else "libvirt network or host bridge"
        raise errors.NotFound(f"{field}: no {what} called {name!r}")
    if domxml.parse_xml(iface, "interface XML").get("type") != "bridge":
        raise errors.FailedPrecondition(f"{field}: host interface {name!r} is not a bridge")
    return Attachment("bridge", name)
