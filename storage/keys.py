"""Object keys: derived from the migration, validated by every backend before any I/O.

A key is a relative, slash-separated path (``virtrigaud/<ns>/<name>-<uid8>/<disk>.<fmt>``).
The same key must mean the same thing in a bucket, below an HTTP base URL and below an
NFS directory, so the rules are the intersection of what is safe everywhere:

- no empty key, no absolute path, no empty segment (``a//b``, trailing ``/``),
  no ``.`` or ``..`` segment, no backslash (a Windows separator on some servers);
- no NUL, control (C0, DEL, C1), line/paragraph-separator or surrogate characters;
- at most 1024 UTF-8 bytes (S3's limit) and 200 bytes per segment (leaves room below
  NAME_MAX=255 for the ``.sha256`` sidecar and the NFS temporary name);
- the ``.sha256`` suffix and the ``.vtpart`` temporary marker are reserved for the
  backends' own sidecar and temporary files, so no key can overwrite them.

Percent signs, ``?`` and ``#`` are allowed: the HTTP backend quotes every segment, so
``%2e%2e`` names a file literally called ``%2e%2e``. NFS adds a final check that the
resolved path is inside the root (:func:`resolve_inside`), symlinks included.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from pathlib import Path

from virtrigaud.errors import InvalidArgument

MAX_KEY_BYTES = 1024
MAX_SEGMENT_BYTES = 200
SIDECAR_SUFFIX = ".sha256"
TEMP_MARKER = ".vtpart"
KEY_ROOT = "virtrigaud"

_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_UID = re.compile(r"^[A-Za-z0-9-]+$")
_FORMAT = re.compile(r"^[a-z0-9]{1,16}$")
_UNSAFE_DISK_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def _reject(field: str, value: str, reason: str) -> InvalidArgument:
    shown = value if len(value) <= 80 else value[:77] + "..."
    return InvalidArgument(f"{field} {shown!r} is not a valid storage key: {reason}")


def _check_segment(field: str, key: str, segment: str) -> None:
    if segment == "":
        raise _reject(field, key, "empty path segment (leading, trailing or double '/')")
    if segment in (".", ".."):
        raise _reject(field, key, f"'{segment}' path segment")
    if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
        raise _reject(field, key, f"a path segment is longer than {MAX_SEGMENT_BYTES} bytes")
    if segment.endswith(SIDECAR_SUFFIX) or TEMP_MARKER in segment:
        raise _reject(field, key, f"'{SIDECAR_SUFFIX}' and '{TEMP_MARKER}' names are reserved")


def validate_key(key: str, *, field: str = "key") -> str:
    """Return ``key`` unchanged if it is safe for every backend, else raise InvalidArgument."""
    if not isinstance(key, str):
        raise InvalidArgument(f"{field} must be a string, not {type(key).__name__}")
    if key == "":
        raise _reject(field, key, "empty")
    if "\\" in key:
        raise _reject(field, key, "backslash")
    for char in key:
        if unicodedata.category(char) in _FORBIDDEN_CATEGORIES:
            raise _reject(field, key, f"control character U+{ord(char):04X}")
    try:
        encoded = key.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates are caught above; belt and braces
        raise _reject(field, key, "not encodable as UTF-8") from exc
    if len(encoded) > MAX_KEY_BYTES:
        raise _reject(field, key, f"longer than {MAX_KEY_BYTES} bytes")
    if key.startswith("/"):
        raise _reject(field, key, "absolute path")
    for segment in key.split("/"):
        _check_segment(field, key, segment)
    return key


def validate_prefix(prefix: str, *, field: str = "prefix") -> str:
    """A listing/cleanup prefix: empty, or a key, optionally ending with one ``/``."""
    if prefix == "":
        return prefix
    validate_key(prefix.removesuffix("/") if prefix.endswith("/") else prefix, field=field)
    return prefix


def join_key(prefix: str, key: str) -> str:
    """``prefix`` (a backend's base prefix, may be empty) joined with ``key``."""
    prefix = prefix.strip("/")
    return f"{prefix}/{key}" if prefix else key


def disk_slug(disk: str) -> str:
    """A key-safe name for a hypervisor disk name (``Hard disk 1``, ``scsi0:0``, ``vda``).

    Names already safe are kept; others are slugged and suffixed with a short hash of the
    original so two disks never map to the same key.
    """
    if not disk:
        raise InvalidArgument("disk name must not be empty")
    slug = _UNSAFE_DISK_CHARS.sub("-", disk).strip("-.")[:64]
    if slug == disk:
        return slug
    digest = hashlib.sha256(disk.encode("utf-8")).hexdigest()[:8]
    return f"{slug or 'disk'}-{digest}"


def derive_key(namespace: str, name: str, uid: str, disk: str, fmt: str) -> str:
    """``virtrigaud/<ns>/<name>-<uid8>/<disk>.<fmt>`` for one disk of one migration.

    ``uid8`` (the first 8 characters of the object uid) keeps a re-created migration
    with the same name from reusing, or deleting, the objects of the old one.
    """
    for field, value in (("namespace", namespace), ("name", name)):
        if not _DNS1123.match(value) or len(value) > 253:
            raise InvalidArgument(f"{field} {value!r} is not a Kubernetes object name")
    if not _UID.match(uid):
        raise InvalidArgument(f"uid {uid!r} must be letters, digits and dashes")
    uid8 = uid.replace("-", "").lower()[:8]
    if len(uid8) < 8:
        raise InvalidArgument(f"uid {uid!r} is too short (8 characters needed)")
    if not _FORMAT.match(fmt):
        raise InvalidArgument(f"disk format {fmt!r} must be lowercase letters and digits")
    key = f"{KEY_ROOT}/{namespace}/{name}-{uid8}/{disk_slug(disk)}.{fmt}"
    return validate_key(key)


def resolve_inside(root: Path, key: str) -> Path:
    """The path of ``key`` below ``root``, refusing anything that resolves outside it.

    Symlinks are followed for the check, so a directory symlink pointing out of the root
    is refused even though the key itself is clean. (The NFS backend additionally opens
    every component with ``O_NOFOLLOW``, which closes the race between check and use.)
    """
    validate_key(key)
    real_root = Path(os.path.realpath(root))
    candidate = Path(os.path.realpath(real_root / key))
    if candidate != real_root and real_root not in candidate.parents:
        raise InvalidArgument(f"key {key!r} resolves outside the storage root {str(root)!r}")
    return real_root / key
