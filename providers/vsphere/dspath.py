"""Datastore paths: ``[datastore] folder/file.vmdk``.

vSphere names every file by its datastore in brackets and a path relative to the
datastore root, separated by ``/``. Paths built here from names a request gave are
checked to stay inside the datastore (no ``..``, no absolute path, no control
characters): the datastore file endpoint would otherwise be told to write anywhere.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from virtrigaud import errors

_PATH = re.compile(r"^\[(?P<ds>[^\]]+)\]\s*(?P<path>.*)$")


@dataclass(frozen=True)
class DsPath:
    datastore: str
    path: str  # relative to the datastore root; "" = the root

    def __str__(self) -> str:
        return f"[{self.datastore}] {self.path}" if self.path else f"[{self.datastore}]"

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    @property
    def folder(self) -> str:
        return posixpath.dirname(self.path)

    def sibling(self, name: str) -> DsPath:
        """The file ``name`` in the same folder."""
        return DsPath(self.datastore, posixpath.join(self.folder, name))


def parse(text: str, field: str = "path") -> DsPath:
    """``[ds] a/b.vmdk`` -> DsPath (InvalidArgument when it is not one)."""
    match = _PATH.match(text.strip())
    if match is None:
        raise errors.InvalidArgument(f"{field}: {text!r} is not a datastore path ([ds] dir/file)")
    path = match.group("path").strip()
    check_relative(path, field)
    return DsPath(match.group("ds"), path)


def check_relative(path: str, field: str) -> str:
    """A path inside a datastore: relative, no ``..`` segment, no control characters."""
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in path) or "\\" in path:
        raise errors.InvalidArgument(f"{field}: {path!r} has characters a datastore path cannot")
    if path.startswith("/") or any(part in ("..", ".") for part in path.split("/")):
        raise errors.InvalidArgument(f"{field}: {path!r} must stay inside the datastore")
    return path


def check_name(name: str, field: str) -> str:
    """One file or folder name (no ``/``), e.g. a VM or disk name."""
    check_relative(name, field)
    if "/" in name or not name:
        raise errors.InvalidArgument(f"{field}: {name!r} must be a plain name")
    return name
