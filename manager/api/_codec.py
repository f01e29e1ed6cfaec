"""Generic codec between API dataclasses and manifest dicts.

Every API type is a ``@dataclass(kw_only=True, slots=True)``. A field's JSON key is its
name in camelCase unless an ``Annotated[..., JsonField(key=...)]`` marker says otherwise;
the same marker carries the constraints the CRD schema also states (minimum, pattern,
list-map key, ...). A field without a default is required; ``X | None = None`` is optional.

``decode`` parses and validates a dict (raising ``ValidationError(field, message)`` with
the JSON path of the field), ``encode`` is its inverse (unset optionals and empty
lists/maps are omitted), and ``describe`` lists every field path with its constraints so
that a test can compare a dataclass tree with a CRD schema.

After a dataclass is built, its ``check_rules(path)`` method, when it has one, enforces
the cross-field rules (the Python side of the CRD's ``x-kubernetes-validations``).
"""

from __future__ import annotations

import base64
import binascii
import copy
import dataclasses
import re
import types
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin, get_type_hints

from virtrigaud.errors import ValidationError

T = TypeVar("T")

REQUIRED = "required field is missing"
UNKNOWN = "unknown field"
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class JsonField:
    """Key and constraints of one field (mirrors the CRD schema keywords)."""

    key: str | None = None
    minimum: int | None = None
    maximum: int | None = None
    pattern: str | None = None
    min_length: int | None = None
    max_length: int | None = None
    fmt: str | None = None  # "byte": base64 text
    key_pattern: str | None = None  # maps: pattern every key must match
    map_key: str | None = None  # lists: x-kubernetes-list-type map keyed by this field
    unique: bool = False  # lists: x-kubernetes-list-type set


@dataclasses.dataclass(frozen=True)
class Shape:
    """What a type hint means on the wire."""

    kind: str  # string|integer|number|boolean|datetime|enum|object|list|map|int-or-string|any
    py: Any
    rules: JsonField
    item: Shape | None = None


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """One dataclass field as the codec sees it."""

    name: str
    key: str
    shape: Shape
    required: bool
    default: Callable[[], Any] | None


def join(path: str, part: str | int) -> str:
    """``spec`` + ``disks`` -> ``spec.disks``; + 1 -> ``spec.disks[1]``."""
    if isinstance(part, int):
        return f"{path}[{part}]"
    if not _IDENT.match(part):
        return f'{path}["{part}"]'
    return f"{path}.{part}" if path else part


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word.capitalize() for word in rest)


_RFC3339 = re.compile(r"^(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def parse_time(text: str) -> datetime:
    """RFC 3339 timestamp (``2025-10-16T10:00:00Z``) -> aware datetime; ValueError if not."""
    match = _RFC3339.match(text)
    if match is None:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    date, time, fraction, zone = match.groups()
    fraction = (fraction or "")[:7]  # datetime keeps microseconds
    zone = "+00:00" if zone in ("Z", "z") else zone
    return datetime.fromisoformat(f"{date}T{time}{fraction}{zone}")


def format_time(value: datetime) -> str:
    """Aware datetime -> RFC 3339 in UTC (``Z``), seconds unless there is a fraction."""
    utc = value.astimezone(UTC)
    pattern = "%Y-%m-%dT%H:%M:%S.%fZ" if utc.microsecond else "%Y-%m-%dT%H:%M:%SZ"
    return utc.strftime(pattern)


def is_base64(text: str) -> bool:
    try:
        base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


# -- type hints -> shapes ---------------------------------------------------------------


def _merge(rules: JsonField, extra: tuple[Any, ...]) -> JsonField:
    for marker in extra:
        if isinstance(marker, JsonField):
            values = {f.name: getattr(marker, f.name) for f in dataclasses.fields(marker)}
            changes = {k: v for k, v in values.items() if v is not None and v is not False}
            rules = dataclasses.replace(rules, **changes)
    return rules


def _strip(hint: Any) -> tuple[Any, JsonField]:
    """Remove ``Annotated`` and ``| None`` layers, collecting JsonField markers."""
    rules = JsonField()
    while True:
        origin = get_origin(hint)
        if origin is Annotated:
            rules = _merge(rules, hint.__metadata__)
            hint = hint.__origin__
        elif origin in (Union, types.UnionType) and type(None) in get_args(hint):
            rest = [arg for arg in get_args(hint) if arg is not type(None)]
            hint = rest[0] if len(rest) == 1 else Union[tuple(rest)]  # noqa: UP007
        else:
            return hint, rules


_SCALARS: dict[Any, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    datetime: "datetime",
    Any: "any",
}


def shape_of(hint: Any) -> Shape:
    hint, rules = _strip(hint)
    origin = get_origin(hint)
    if origin is list:
        return Shape("list", list, rules, shape_of(get_args(hint)[0]))
    if origin is dict:
        return Shape("map", dict, rules, shape_of(get_args(hint)[1]))
    if origin in (Union, types.UnionType) and set(get_args(hint)) == {str, int}:
        return Shape("int-or-string", hint, rules)
    if hint in _SCALARS:
        return Shape(_SCALARS[hint], hint, rules)
    if isinstance(hint, type) and issubclass(hint, StrEnum):
        return Shape("enum", hint, rules)
    if dataclasses.is_dataclass(hint):
        return Shape("object", hint, rules)
    raise TypeError(f"unsupported API field type {hint!r}")


def _constant(value: Any) -> Callable[[], Any]:
    return lambda: value


_FIELDS: dict[type, tuple[FieldSpec, ...]] = {}


def fields_of(cls: type) -> tuple[FieldSpec, ...]:
    """The codec's view of a dataclass's fields (cached)."""
    if cls not in _FIELDS:
        _FIELDS[cls] = _fields_of(cls)
    return _FIELDS[cls]


def _fields_of(cls: type) -> tuple[FieldSpec, ...]:
    hints = get_type_hints(cls, include_extras=True)
    specs = []
    for f in dataclasses.fields(cls):
        shape = shape_of(hints[f.name])
        default: Callable[[], Any] | None = None
        if f.default is not dataclasses.MISSING:
            default = _constant(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory
        key = shape.rules.key or camel(f.name)
        specs.append(FieldSpec(f.name, key, shape, default is None, default))
    return tuple(specs)


# -- decoding ---------------------------------------------------------------------------


def _type_error(path: str, value: Any, expected: str) -> ValidationError:
    return ValidationError(path, f"must be {expected}, not {type(value).__name__}")


def _check_string(rules: JsonField, value: str, path: str) -> None:
    if rules.min_length is not None and len(value) < rules.min_length:
        raise ValidationError(path, f"must be at least {rules.min_length} characters")
    if rules.max_length is not None and len(value) > rules.max_length:
        raise ValidationError(path, f"must be at most {rules.max_length} characters")
    if rules.pattern is not None and not re.search(rules.pattern, value):
        raise ValidationError(path, f"{value!r} does not match {rules.pattern}")
    if rules.fmt == "byte" and not is_base64(value):
        raise ValidationError(path, "must be base64 encoded")


def _check_number(rules: JsonField, value: float, path: str) -> None:
    if rules.minimum is not None and value < rules.minimum:
        raise ValidationError(path, f"must be >= {rules.minimum}")
    if rules.maximum is not None and value > rules.maximum:
        raise ValidationError(path, f"must be <= {rules.maximum}")


def _decode_scalar(shape: Shape, value: Any, path: str) -> Any:
    kind = shape.kind
    if kind == "enum" and isinstance(value, bool):
        raise ValidationError(path, f"must be a string, not {value} (quote On/Off in YAML)")
    if kind in ("string", "datetime", "enum") and not isinstance(value, str):
        raise _type_error(path, value, "a string")
    if kind == "integer" and (isinstance(value, bool) or not isinstance(value, int)):
        raise _type_error(path, value, "an integer")
    if kind == "number" and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise _type_error(path, value, "a number")
    if kind == "boolean" and not isinstance(value, bool):
        raise _type_error(path, value, "a boolean")
    if kind == "string":
        _check_string(shape.rules, value, path)
    elif kind in ("integer", "number"):
        _check_number(shape.rules, value, path)
    elif kind == "datetime":
        try:
            return parse_time(value)
        except ValueError as exc:
            raise ValidationError(path, str(exc)) from None
    elif kind == "enum":
        allowed = [member.value for member in shape.py]
        if value not in allowed:
            raise ValidationError(
                path, f"unsupported value {value!r}: must be one of {', '.join(allowed)}"
            )
        return shape.py(value)
    return value


def _decode_int_or_string(shape: Shape, value: Any, path: str) -> Any:
    if isinstance(value, str):
        _check_string(shape.rules, value, path)
    elif isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(path, value, "an integer or a string")
    return value


def _decode_list(shape: Shape, value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise _type_error(path, value, "a list")
    assert shape.item is not None
    items = [decode_value(shape.item, item, join(path, i)) for i, item in enumerate(value)]
    rules = shape.rules
    if rules.unique:
        for i, item in enumerate(value):
            if item in value[:i]:
                raise ValidationError(join(path, i), f"duplicate value {item!r}")
    if rules.map_key is not None:
        seen = [item.get(rules.map_key) for item in value]
        for i, key in enumerate(seen):
            if key in seen[:i]:
                raise ValidationError(
                    join(join(path, i), rules.map_key), f"duplicate entry {key!r}"
                )
    return items


def _decode_map(shape: Shape, value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise _type_error(path, value, "a map")
    assert shape.item is not None
    out = {}
    for key, item in value.items():
        if item is None:
            continue  # pruned, as the API server prunes nulls
        if not isinstance(key, str):
            raise ValidationError(path, f"key {key!r} must be a string")
        if shape.rules.key_pattern and not re.search(shape.rules.key_pattern, key):
            raise ValidationError(join(path, key), f"key does not match {shape.rules.key_pattern}")
        out[key] = decode_value(shape.item, item, join(path, key))
    return out


def decode_value(shape: Shape, value: Any, path: str) -> Any:
    if shape.kind == "object":
        return decode(shape.py, value, path)
    if shape.kind == "list":
        return _decode_list(shape, value, path)
    if shape.kind == "map":
        return _decode_map(shape, value, path)
    if shape.kind == "int-or-string":
        return _decode_int_or_string(shape, value, path)
    if shape.kind == "any":
        return copy.deepcopy(value)
    return _decode_scalar(shape, value, path)


def decode(cls: type[T], obj: Any, path: str = "") -> T:
    """Build ``cls`` from a manifest mapping; null values count as absent (as in k8s)."""
    if not isinstance(obj, Mapping):
        raise _type_error(path, obj, "an object")
    specs = fields_of(cls)
    known = {spec.key for spec in specs}
    for key in sorted(str(k) for k in obj if k not in known):
        raise ValidationError(join(path, key), UNKNOWN)
    kwargs: dict[str, Any] = {}
    for spec in specs:
        raw = obj.get(spec.key)
        if raw is not None:
            kwargs[spec.name] = decode_value(spec.shape, raw, join(path, spec.key))
        elif spec.default is None:
            raise ValidationError(join(path, spec.key), REQUIRED)
    instance = cls(**kwargs)
    check = getattr(instance, "check_rules", None)
    if check is not None:
        check(path)
    return instance


# -- encoding ---------------------------------------------------------------------------


def encode_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, StrEnum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return encode(value)
    if isinstance(value, list):
        return [encode_value(item) for item in value]
    if isinstance(value, dict):
        return {key: encode_value(item) for key, item in value.items()}
    return value


def encode(obj: Any) -> dict[str, Any]:
    """Dataclass -> manifest dict (camelCase keys; None and empty lists/maps omitted)."""
    out: dict[str, Any] = {}
    for spec in fields_of(type(obj)):
        value = getattr(obj, spec.name)
        if value is None or (isinstance(value, list | dict) and not value and not spec.required):
            continue
        out[spec.key] = encode_value(value)
    return out


# -- description (for the schema drift test) --------------------------------------------


def _describe_shape(shape: Shape) -> dict[str, Any]:
    kinds = {"datetime": "string", "enum": "string", "list": "array", "map": "object"}
    entry: dict[str, Any] = {"type": kinds.get(shape.kind, shape.kind)}
    if shape.kind == "datetime":
        entry["format"] = "date-time"
    if shape.kind == "enum":
        entry["enum"] = sorted(member.value for member in shape.py)
    rules = shape.rules
    named = {
        "minimum": rules.minimum,
        "maximum": rules.maximum,
        "pattern": rules.pattern,
        "minLength": rules.min_length,
        "maxLength": rules.max_length,
        "format": rules.fmt,
        "keyPattern": rules.key_pattern,
        "listMapKey": rules.map_key,
        "listType": "set" if rules.unique else None,
    }
    entry.update({k: v for k, v in named.items() if v is not None})
    if rules.map_key is not None:
        entry["listType"] = "map"
    return entry


def _describe_into(out: dict[str, dict[str, Any]], shape: Shape, path: str) -> None:
    if shape.kind == "object":
        for spec in fields_of(shape.py):
            child = join(path, spec.key)
            entry = _describe_shape(spec.shape)
            entry["required"] = spec.required
            if spec.default is not None:
                default = encode_value(spec.default())
                if default not in (None, [], {}):
                    entry["default"] = default
            out[child] = entry
            _describe_into(out, spec.shape, child)
    elif shape.kind in ("list", "map"):
        assert shape.item is not None
        child = path + ("[]" if shape.kind == "list" else "{}")
        out[child] = _describe_shape(shape.item)
        _describe_into(out, shape.item, child)


def describe(cls: type) -> dict[str, dict[str, Any]]:
    """Every field path under ``cls`` (``spec.disks[].importedDisk.format``) with its
    type, required flag, default and constraints, in the vocabulary of ``schema.describe``.
    """
    out: dict[str, dict[str, Any]] = {}
    _describe_into(out, Shape("object", cls, JsonField()), "")
    return out
