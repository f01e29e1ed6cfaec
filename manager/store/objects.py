"""Pure helpers the stores share: validation, the spec/status split, labels, secrets.

A stored object is always the *normalised* manifest: ``Kind.from_dict(obj).to_dict()``
of ``manager.api``, so CRD defaults are applied on write (as the API server applies
them) and a malformed object is refused with ``errors.ValidationError`` naming the
field before anything is written.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from manager.api import format_time, parse_manifest
from manager.store.base import KINDS, Obj
from virtrigaud import errors

# Top-level keys that are neither "spec" nor "status": identity and metadata.
_ENVELOPE = ("apiVersion", "kind", "metadata", "status")
# metadata fields only the server sets; a client's values are ignored on update.
SERVER_FIELDS = ("uid", "resourceVersion", "generation", "creationTimestamp", "deletionTimestamp")


def now_text() -> str:
    """The current time as RFC 3339 with whole seconds (as the API server writes it)."""
    return format_time(datetime.now(UTC).replace(microsecond=0))


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise errors.ValidationError("kind", f"unknown kind {kind!r}: expected one of {KINDS}")


def normalize(obj: Mapping[str, Any]) -> Obj:
    """Validate ``obj`` through manager.api and return its normalised dict."""
    if not isinstance(obj, Mapping):
        raise errors.ValidationError("", f"an object must be a mapping, not {type(obj).__name__}")
    kind = obj.get("kind")
    if isinstance(kind, str):
        check_kind(kind)
    return parse_manifest(dict(obj)).to_dict()


def spec_of(obj: Mapping[str, Any]) -> Obj:
    """Everything that is not envelope: ``spec`` for our kinds, data/type for Secrets."""
    return {k: copy.deepcopy(v) for k, v in obj.items() if k not in _ENVELOPE}


def without_status(obj: Mapping[str, Any]) -> Obj:
    return {k: copy.deepcopy(v) for k, v in obj.items() if k != "status"}


def namespace_of(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping) or not meta.get("name"):
        raise errors.ValidationError("metadata.name", "required field is missing")
    return str(meta.get("namespace") or "default")


def labels_match(obj: Mapping[str, Any], selector: Mapping[str, str] | None) -> bool:
    """Equality-based label selector (every pair must be present and equal)."""
    if not selector:
        return True
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(labels.get(key) == value for key, value in selector.items())


def fold_string_data(obj: Obj) -> Obj:
    """A Secret's ``stringData`` written into ``data`` (base64), as the API server does."""
    if obj.get("kind") != "Secret" or not obj.get("stringData"):
        return obj
    data = dict(obj.get("data") or {})
    for key, value in obj["stringData"].items():
        data[key] = base64.b64encode(str(value).encode()).decode()
    out = dict(obj)
    out["data"] = data
    del out["stringData"]
    return out


def decode_secret(obj: Mapping[str, Any]) -> dict[str, str]:
    """Effective Secret contents: base64 ``data`` decoded, ``stringData`` laid over it."""
    out: dict[str, str] = {}
    for key, value in (obj.get("data") or {}).items():
        try:
            out[key] = base64.b64decode(value, validate=True).decode()
        except (ValueError, UnicodeDecodeError) as exc:
            raise errors.InvalidArgument(f"data[{key!r}]: not base64 UTF-8 text: {exc}") from exc
    out.update({key: str(value) for key, value in (obj.get("stringData") or {}).items()})
    return out
