"""What every operation of the provider works with: the API, the node, the settings.

One provider serves one PVE node (``node`` option): its VMs, its storages, and the
node itself for disk data. In a cluster, run one provider per node whose disks move.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from providers.proxmox.api import PveApi
from providers.proxmox.node import NodeAccess
from virtrigaud import errors

FILE_STORAGE_TYPES = frozenset({"dir", "nfs", "cifs", "btrfs", "cephfs", "glusterfs"})
_VMID = re.compile(r"^[1-9]\d{2,8}$")


@dataclass(frozen=True)
class ScratchSettings:
    """Where transfers put local copies on the provider (None: the system temp dir)."""

    directory: str | None = None
    limit: int | None = None


@dataclass(frozen=True)
class Settings:
    default_storage: str = "local-lvm"  # for new disks without a storage hint
    import_storage: str = ""  # file storage with content "import" ("" = the target's)
    node_scratch: str = "/var/tmp"  # noqa: S108 - a directory on the node, made private per export
    scratch: ScratchSettings = field(default_factory=ScratchSettings)
    remove_imported: bool = False  # delete import volumes once CreateVM copied them


@dataclass
class Site:
    api: PveApi
    node: str
    access: NodeAccess
    settings: Settings = field(default_factory=Settings)
    _version: tuple[int, int] | None = None

    @property
    def api_user(self) -> str:
        return self.api.user

    @property
    def api_is_token(self) -> bool:
        return self.api.is_token

    def version(self) -> tuple[int, int]:
        """(major, minor) of the PVE release, read once."""
        if self._version is None:
            major, minor, _text = self.api.version()
            self._version = (major, minor)
        return self._version

    def qemu(self, vmid: str, tail: str = "") -> str:
        """``nodes/{node}/qemu/{vmid}[/tail]`` for a checked vmid."""
        path = f"nodes/{self.node}/qemu/{check_vmid(vmid)}"
        return f"{path}/{tail}" if tail else path

    def storage_config(self, storage: str, field_name: str = "storage_hint") -> dict[str, Any]:
        """``GET /storage/{storage}`` (NotFound naming the field when it does not exist)."""
        if not storage or not re.fullmatch(r"[A-Za-z][A-Za-z0-9\-_.]*", storage):
            raise errors.InvalidArgument(f"{field_name}: {storage!r} is not a PVE storage id")
        try:
            data = self.api.get(f"storage/{storage}")
        except errors.NotFound:
            raise errors.NotFound(f"{field_name}: storage {storage!r} does not exist") from None
        except errors.FailedPrecondition as exc:  # PVE answers 500 "does not exist"
            raise errors.NotFound(f"{field_name}: storage {storage!r}: {exc.message}") from None
        if not isinstance(data, dict):
            raise errors.InternalError(f"storage {storage}: unexpected answer")
        return data

    def storage_status(self, storage: str) -> dict[str, Any] | None:
        """The storage as this node sees it (None when not enabled on the node)."""
        for item in self.api.get(f"nodes/{self.node}/storage"):
            if item.get("storage") == storage:
                return dict(item)
        return None


def check_vmid(vmid: str) -> str:
    """A PVE vmid (100..999999999); anything else names no VM here."""
    text = str(vmid).strip()
    if not _VMID.match(text) or int(text) < 100:
        raise errors.NotFound(f"VM {vmid!r} not found (PVE VM ids are numbers from 100)")
    return text


def content_dir(config: dict[str, Any], content: str) -> str:
    """Directory of a content type on a file storage (``content-dirs`` respected)."""
    base = str(config.get("path") or "")
    if not base:
        raise errors.FailedPrecondition(
            f"storage {config.get('storage')}: no path (not a file storage)"
        )
    default = {"images": "images", "import": "import", "iso": "template/iso"}.get(content, content)
    for item in str(config.get("content-dirs", "")).split(","):
        kind, _, sub = item.partition("=")
        if kind.strip() == content and sub.strip():
            default = sub.strip().strip("/")
    return f"{base.rstrip('/')}/{default}"
