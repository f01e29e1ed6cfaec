"""Shared API pieces: object metadata, references, conditions, names, durations, enums."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Self

from manager.api._codec import JsonField, decode, describe, encode, format_time, parse_time
from virtrigaud.errors import ValidationError

__all__ = [
    "API_VERSION",
    "DNS_LABEL_PATTERN",
    "DNS_SUBDOMAIN_PATTERN",
    "DURATION_PATTERN",
    "GROUP",
    "Condition",
    "ConditionStatus",
    "DiskFormat",
    "DnsLabel",
    "DnsSubdomain",
    "Duration",
    "ObjectMeta",
    "ObjectReference",
    "OwnerReference",
    "Resource",
    "StorageType",
    "find_condition",
    "format_duration",
    "format_time",
    "parse_duration",
    "parse_time",
    "set_condition",
]

GROUP = "infra.virtrigaud.io"
API_VERSION = f"{GROUP}/v1beta1"

DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$"
CONDITION_TYPE_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)
CONDITION_REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"

# A Kubernetes object name (DNS-1123 subdomain) and a namespace name (DNS-1123 label).
DnsSubdomain = Annotated[str, JsonField(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)]
DnsLabel = Annotated[str, JsonField(pattern=DNS_LABEL_PATTERN, max_length=63)]
# A Go-style duration string: "90s", "5m", "1h30m".
Duration = Annotated[str, JsonField(pattern=DURATION_PATTERN)]
NonNegative = Annotated[int, JsonField(minimum=0)]

_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|ms|s|m|h)")


def parse_duration(text: str, field: str = "") -> float:
    """``"5m"`` -> 300.0, ``"1h30m"`` -> 5400.0; ValidationError(field, ...) if malformed."""
    if not isinstance(text, str) or not re.fullmatch(DURATION_PATTERN, text):
        raise ValidationError(field, f"invalid duration {text!r} (use e.g. 90s, 5m, 1h30m)")
    return sum(float(num) * _UNIT_SECONDS[unit] for num, unit in _DURATION_PART.findall(text))


def format_duration(seconds: float) -> str:
    """300 -> ``"5m"``, 5400 -> ``"1h30m"``, 0 -> ``"0s"`` (whole seconds)."""
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(hours, "h"), (minutes, "m"), (secs, "s")]
    text = "".join(f"{value}{unit}" for value, unit in parts if value)
    return text or "0s"


class DiskFormat(StrEnum):
    """A disk image format."""

    QCOW2 = "qcow2"
    VMDK = "vmdk"
    RAW = "raw"
    VDI = "vdi"
    VHDX = "vhdx"


class StorageType(StrEnum):
    """An intermediate storage backend."""

    S3 = "s3"
    HTTP = "http"
    NFS = "nfs"


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


@dataclasses.dataclass(kw_only=True, slots=True)
class ObjectReference:
    """A reference to another object by name (namespace defaults to the referrer's)."""

    name: DnsSubdomain
    namespace: DnsLabel | None = None

    def namespace_or(self, default: str) -> str:
        return self.namespace or default


@dataclasses.dataclass(kw_only=True, slots=True)
class OwnerReference:
    api_version: str
    kind: str
    name: str
    uid: str
    controller: bool | None = None
    block_owner_deletion: bool | None = None


@dataclasses.dataclass(kw_only=True, slots=True)
class ObjectMeta:
    """The metav1.ObjectMeta fields (server-managed ones are kept for round trips)."""

    name: DnsSubdomain
    generate_name: str | None = None
    namespace: DnsLabel | None = None
    self_link: str | None = None
    uid: str | None = None
    resource_version: str | None = None
    generation: Annotated[int | None, JsonField(minimum=0)] = None
    creation_timestamp: datetime | None = None
    deletion_timestamp: datetime | None = None
    deletion_grace_period_seconds: Annotated[int | None, JsonField(minimum=0)] = None
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    annotations: dict[str, str] = dataclasses.field(default_factory=dict)
    owner_references: list[OwnerReference] = dataclasses.field(default_factory=list)
    finalizers: list[str] = dataclasses.field(default_factory=list)
    managed_fields: list[dict[str, Any]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(kw_only=True, slots=True)
class Condition:
    """A metav1.Condition. ``reason`` and ``message`` are optional here because the
    documented examples omit them; the controllers always set them."""

    type: Annotated[str, JsonField(pattern=CONDITION_TYPE_PATTERN, max_length=316)]
    status: ConditionStatus
    last_transition_time: datetime
    observed_generation: Annotated[int | None, JsonField(minimum=0)] = None
    reason: Annotated[
        str | None, JsonField(pattern=CONDITION_REASON_PATTERN, min_length=1, max_length=1024)
    ] = None
    message: Annotated[str | None, JsonField(max_length=32768)] = None


def find_condition(conditions: list[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def set_condition(conditions: list[Condition], condition: Condition) -> None:
    """Insert or update by type; keep the old lastTransitionTime if status is unchanged."""
    old = find_condition(conditions, condition.type)
    if old is None:
        conditions.append(condition)
        return
    if old.status == condition.status:
        condition.last_transition_time = old.last_transition_time
    conditions[conditions.index(old)] = condition


class Resource:
    """Base of the top-level kinds: ``from_dict``/``to_dict`` with apiVersion and kind."""

    __slots__ = ()
    API_VERSION: ClassVar[str]
    KIND: ClassVar[str]
    metadata: ObjectMeta

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> Self:
        """Parse, default and validate a manifest; ValidationError names the field."""
        if not isinstance(obj, Mapping):
            raise ValidationError("", f"a {cls.KIND} manifest must be a mapping")
        for key, want in (("apiVersion", cls.API_VERSION), ("kind", cls.KIND)):
            if key not in obj:
                raise ValidationError(key, "required field is missing")
            if obj[key] != want:
                raise ValidationError(key, f"must be {want!r}, not {obj[key]!r}")
        body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}
        return decode(cls, body)

    def to_dict(self) -> dict[str, Any]:
        """The manifest dict (camelCase keys, unset optionals omitted)."""
        return {"apiVersion": self.API_VERSION, "kind": self.KIND, **encode(self)}

    def validate(self) -> None:
        """Check an object built in Python (dataclass constructors do not validate):
        raises the ValidationError ``from_dict`` would raise for its manifest."""
        type(self).from_dict(self.to_dict())

    @classmethod
    def describe(cls) -> dict[str, dict[str, Any]]:
        """Every field path with its constraints (compare with ``schema.describe``)."""
        out: dict[str, dict[str, Any]] = {
            key: {"type": "string", "enum": [value], "required": True}
            for key, value in (("apiVersion", cls.API_VERSION), ("kind", cls.KIND))
        }
        out.update(describe(cls))
        return out

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str | None:
        return self.metadata.namespace
