"""Names from users, checked before they reach libvirt, XML or a file path.

Domain names may contain any printable character (libvirt allows it, and they only
ever reach XML through ``xml.etree``, which escapes them). Everything that becomes a
file name -- volume names, overlay file names -- must match ``SAFE_NAME``: it starts
with a letter or digit and continues with letters, digits, ``.``, ``_``, ``+`` and
``-``, so it can be neither a path (no separators), nor ``.``/``..``, nor an option
(no leading ``-``), nor a protocol prefix (no ``:``). Names derived from a user's VM
name go through ``slug``, which maps every other character to ``-``.

References to existing volumes (``ImportedDisk.disk_id``, ``ImageRef.name``) use the
form ``pool/volume``; both halves are checked here.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from virtrigaud import errors

MAX_NAME = 200
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._+-]+")
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_MODEL = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


def is_safe(name: str) -> bool:
    return len(name) <= MAX_NAME and SAFE_NAME.fullmatch(name) is not None


def check_safe(name: str, field: str) -> str:
    """``name`` if it is a safe file/pool name, else ``InvalidArgument`` naming ``field``."""
    if not is_safe(name):
        raise errors.InvalidArgument(
            f"{field}: {name!r} is not a valid name (letters, digits, '.', '_', '+', '-'; "
            f"starting with a letter or digit; at most {MAX_NAME} characters)"
        )
    return name


def slug(name: str, fallback: str = "vm") -> str:
    """A safe file-name fragment derived from any user-chosen name."""
    cleaned = _UNSAFE_CHARS.sub("-", name).strip("-._+")
    return cleaned[:64] or fallback


@dataclass(frozen=True)
class VolumeRef:
    """A volume named by its pool and its name."""

    pool: str
    name: str

    def __str__(self) -> str:
        return f"{self.pool}/{self.name}"


def parse_volume_ref(value: str, field: str, default_pool: str = "") -> VolumeRef:
    """``pool/volume`` (or ``volume`` when ``default_pool`` is given) -> ``VolumeRef``."""
    pool, sep, name = value.partition("/")
    if not sep:
        if not default_pool:
            raise errors.InvalidArgument(f"{field}: {value!r} must have the form pool/volume")
        pool, name = default_pool, value
    return VolumeRef(check_safe(pool, f"{field} (pool)"), check_safe(name, f"{field} (volume)"))


def check_uuid(value: str) -> str | None:
    """The canonical UUID string, or None when ``value`` is not a UUID."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def check_mac(value: str, field: str) -> str:
    mac = value.strip().lower().replace("-", ":")
    if not _MAC.fullmatch(mac):
        raise errors.InvalidArgument(f"{field}: {value!r} is not a MAC address (aa:bb:cc:dd:ee:ff)")
    if int(mac[:2], 16) & 1:
        raise errors.InvalidArgument(f"{field}: {value!r} is a multicast MAC address")
    return mac


def check_model(value: str, field: str) -> str:
    if not _MODEL.fullmatch(value):
        raise errors.InvalidArgument(f"{field}: {value!r} is not a NIC model name")
    return value
