"""Validate manifests against the CRD schemas in ``config/crd/bases`` with jsonschema.

This stands in for the API server: null values of non-nullable fields are pruned and the
schema defaults applied (optionally), ``metadata`` is checked against a built-in
ObjectMeta schema (the API server validates it itself, so CRDs leave it open), unknown
fields are rejected (as ``kubectl apply --validate=strict`` does), list-type map/set
uniqueness is enforced, and the ``x-kubernetes-validations`` CEL rules are evaluated
through ``CEL_RULES``: one Python predicate per exact rule string. There is no CEL
interpreter, so a rule string missing from the table is reported as an error.

Errors are ``virtrigaud.errors.ValidationError`` whose ``field`` is the JSON path, the
same path ``from_dict`` reports (``spec.storage.bucket``, ``spec.disks[1].format``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from manager.api._codec import REQUIRED, UNKNOWN, is_base64, join, parse_time
from manager.api.builtin_schemas import OBJECT_META_SCHEMA, SECRET_SCHEMA
from manager.api.loader import kind_of
from manager.api.meta import parse_duration
from virtrigaud.errors import ValidationError

__all__ = [
    "CEL_RULES",
    "DEFAULT_CRD_DIR",
    "SchemaValidator",
    "apply_defaults",
    "cel_rules",
    "describe",
    "load_crds",
    "to_jsonschema",
    "validate_manifest",
    "validator_for",
]

DEFAULT_CRD_DIR = Path(__file__).resolve().parents[2] / "config" / "crd" / "bases"
Predicate = Callable[[Mapping[str, Any]], bool]


def _duration_not_longer(obj: Mapping[str, Any]) -> bool:
    if "backoffDuration" not in obj or "maxBackoffDuration" not in obj:
        return True
    try:
        return parse_duration(obj["backoffDuration"]) <= parse_duration(obj["maxBackoffDuration"])
    except ValidationError:
        return True  # malformed durations are reported by their pattern


def _required_for(storage_type: str, field: str) -> Predicate:
    return lambda obj: obj.get("type") != storage_type or field in obj


# Every CEL rule the CRDs use, as the exact rule string -> the same check in Python.
CEL_RULES: dict[str, Predicate] = {
    "self.type != 's3' || has(self.bucket)": _required_for("s3", "bucket"),
    "self.type != 'http' || has(self.endpoint)": _required_for("http", "endpoint"),
    "self.type != 'nfs' || has(self.path)": _required_for("nfs", "path"),
    "!has(self.backoffDuration) || !has(self.maxBackoffDuration) || "
    "duration(self.backoffDuration) <= duration(self.maxBackoffDuration)": _duration_not_longer,
    "!(has(self.imageRef) && has(self.importedDisk))": (
        lambda obj: not ("imageRef" in obj and "importedDisk" in obj)
    ),
    "has(self.vmId) || has(self.imageRef) || has(self.importedDisk)": (
        lambda obj: any(key in obj for key in ("vmId", "imageRef", "importedDisk"))
    ),
}

# -- CRD files --------------------------------------------------------------------------


def load_crds(directory: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """kind -> CustomResourceDefinition dict, from every ``*.yaml`` in ``directory``."""
    out = {}
    for path in sorted(Path(directory or DEFAULT_CRD_DIR).glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                out[doc["spec"]["names"]["kind"]] = doc
    return out


def _storage_version(crd: Mapping[str, Any]) -> Mapping[str, Any]:
    return next(v for v in crd["spec"]["versions"] if v.get("storage"))


def _with_metadata(schema: Mapping[str, Any], api_version: str, kind: str) -> dict[str, Any]:
    """The CRD schema with the checks the API server adds: ObjectMeta, apiVersion, kind."""
    out = copy.deepcopy(dict(schema))
    props = out["properties"]
    props["apiVersion"] = {**props.get("apiVersion", {}), "enum": [api_version]}
    props["kind"] = {**props.get("kind", {}), "enum": [kind]}
    description = props.get("metadata", {}).get("description", "Standard object metadata.")
    props["metadata"] = {**copy.deepcopy(OBJECT_META_SCHEMA), "description": description}
    out["required"] = [*out.get("required", []), "apiVersion", "kind", "metadata"]
    return out


# -- OpenAPI -> JSON Schema -------------------------------------------------------------

_KEEP_EXTENSIONS = {
    "x-kubernetes-validations",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
}
_SUBSCHEMA = {"items", "additionalProperties", "propertyNames", "not"}


def to_jsonschema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """Translate an OpenAPI v3 (structural) schema to JSON Schema for jsonschema."""
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "properties":
            out[key] = {name: to_jsonschema(sub) for name, sub in value.items()}
        elif key in _SUBSCHEMA and isinstance(value, Mapping):
            out[key] = to_jsonschema(value)
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [to_jsonschema(sub) for sub in value]
        elif key == "nullable" or (key.startswith("x-kubernetes-") and key not in _KEEP_EXTENSIONS):
            continue
        else:
            out[key] = copy.deepcopy(value)
    if schema.get("nullable"):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    strict = "properties" in schema and "additionalProperties" not in schema
    if strict and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


# -- defaulting -------------------------------------------------------------------------


def _default_into(schema: Mapping[str, Any], value: Any) -> None:
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key in list(value):
            sub = props.get(key, extra if isinstance(extra, Mapping) else None)
            if value[key] is None and sub is not None and not sub.get("nullable"):
                del value[key]
        for key, sub in props.items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
        for key, item in value.items():
            sub = props.get(key, extra if isinstance(extra, Mapping) else None)
            if sub is not None:
                _default_into(sub, item)
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for item in value:
            _default_into(schema["items"], item)


def apply_defaults(schema: Mapping[str, Any], obj: Any) -> Any:
    """A copy of ``obj`` with nulls pruned and schema defaults filled in, as the API
    server does before validation."""
    out = copy.deepcopy(obj)
    _default_into(schema, out)
    return out


# -- jsonschema keywords ----------------------------------------------------------------

_Errors = Iterator[jsonschema.ValidationError]


def _kw_required(_v: Any, required: Any, instance: Any, _s: Any) -> _Errors:
    if isinstance(instance, dict):
        for prop in required:
            if prop not in instance:
                yield jsonschema.ValidationError(REQUIRED, path=[prop])


def _kw_additional(v: Any, ap: Any, instance: Any, schema: Any) -> _Errors:
    if not isinstance(instance, dict):
        return
    extras = [key for key in instance if key not in schema.get("properties", {})]
    if ap is False:
        for key in extras:
            yield jsonschema.ValidationError(UNKNOWN, path=[key])
    elif isinstance(ap, Mapping):
        for key in extras:
            yield from v.descend(instance[key], ap, path=key)


def _kw_property_names(v: Any, names: Any, instance: Any, _s: Any) -> _Errors:
    if isinstance(instance, dict):
        for key in instance:
            for error in v.descend(key, names):
                yield jsonschema.ValidationError(f"key does not match: {error.message}", path=[key])


def _kw_list_type(_v: Any, list_type: Any, instance: Any, schema: Any) -> _Errors:
    if not isinstance(instance, list):
        return
    keys = schema.get("x-kubernetes-list-map-keys", [])
    seen: list[Any] = []
    for index, item in enumerate(instance):
        if list_type == "map" and isinstance(item, dict):
            identity: Any = tuple(item.get(key) for key in keys)
            path: list[str | int] = [index, keys[0]]
        else:
            identity, path = item, [index]
        if list_type in ("map", "set") and identity in seen:
            message = f"duplicate {'entry' if list_type == 'map' else 'value'} {identity!r}"
            yield jsonschema.ValidationError(message, path=path)
        seen.append(identity)


def _kw_cel(_v: Any, rules: Any, instance: Any, _s: Any) -> _Errors:
    if not isinstance(instance, dict):
        return
    for rule in rules:
        predicate = CEL_RULES.get(rule["rule"])
        if predicate is None:
            yield jsonschema.ValidationError(f"CEL rule not supported: {rule['rule']}")
        elif not predicate(instance):
            path = [part for part in rule.get("fieldPath", "").split(".") if part]
            yield jsonschema.ValidationError(rule.get("message", rule["rule"]), path=path)


FORMATS = jsonschema.FormatChecker(formats=())


@FORMATS.checks("date-time", raises=ValueError)
def _is_date_time(instance: object) -> bool:
    return not isinstance(instance, str) or bool(parse_time(instance))


@FORMATS.checks("byte")
def _is_byte(instance: object) -> bool:
    return not isinstance(instance, str) or is_base64(instance)


_CRDValidator = jsonschema.validators.extend(  # type: ignore[no-untyped-call]
    jsonschema.Draft202012Validator,
    {
        "required": _kw_required,
        "additionalProperties": _kw_additional,
        "propertyNames": _kw_property_names,
        "x-kubernetes-list-type": _kw_list_type,
        "x-kubernetes-validations": _kw_cel,
    },
)


def _field(error: jsonschema.ValidationError) -> str:
    path = ""
    for part in error.absolute_path:
        path = join(path, part)
    return path


# -- validators -------------------------------------------------------------------------


class SchemaValidator:
    """Validates manifests of one kind against its OpenAPI schema."""

    def __init__(self, api_version: str, kind: str, openapi: Mapping[str, Any]) -> None:
        self.api_version = api_version
        self.kind = kind
        self.openapi: dict[str, Any] = _with_metadata(openapi, api_version, kind)
        self.jsonschema = to_jsonschema(self.openapi)
        self._validator = _CRDValidator(self.jsonschema, format_checker=FORMATS)

    def default(self, obj: Any) -> Any:
        """``obj`` with nulls pruned and defaults applied (a copy)."""
        return apply_defaults(self.openapi, obj)

    def errors(self, obj: Any, *, defaults: bool = True) -> list[ValidationError]:
        """Every violation, in schema order (defaults applied first unless told not to)."""
        instance = self.default(obj) if defaults else obj
        found = []
        for error in self._validator.iter_errors(instance):
            found.append(ValidationError(_field(error), error.message))
        return found

    def validate(self, obj: Any, *, defaults: bool = True) -> Any:
        """The defaulted object; raises the first ValidationError."""
        instance = self.default(obj) if defaults else copy.deepcopy(obj)
        found = self.errors(instance, defaults=False)
        if found:
            raise found[0]
        return instance


@cache
def _validators(directory: Path) -> dict[tuple[str, str], SchemaValidator]:
    out = {("v1", "Secret"): SchemaValidator("v1", "Secret", SECRET_SCHEMA)}
    for kind, crd in load_crds(directory).items():
        version = _storage_version(crd)
        api_version = f"{crd['spec']['group']}/{version['name']}"
        out[api_version, kind] = SchemaValidator(
            api_version, kind, version["schema"]["openAPIV3Schema"]
        )
    return out


def validator_for(kind: str, directory: str | Path | None = None) -> SchemaValidator:
    """The validator of ``kind`` (VMMigration, VirtualMachine, Provider or Secret)."""
    for (_, known), validator in _validators(Path(directory or DEFAULT_CRD_DIR)).items():
        if known == kind:
            return validator
    raise ValidationError("kind", f"no schema for kind {kind!r}")


def validate_manifest(
    obj: Mapping[str, Any], *, directory: str | Path | None = None, defaults: bool = True
) -> Any:
    """Validate a manifest of any known kind; returns it defaulted."""
    if not isinstance(obj, Mapping):
        raise ValidationError("", f"a manifest must be a mapping, not {type(obj).__name__}")
    validators = _validators(Path(directory or DEFAULT_CRD_DIR))
    return validators[kind_of(obj, validators)].validate(obj, defaults=defaults)


def cel_rules(schema: Any) -> list[str]:
    """Every CEL rule string in a schema (for the test that all are in CEL_RULES)."""
    if isinstance(schema, Mapping):
        own = [rule["rule"] for rule in schema.get("x-kubernetes-validations", [])]
        return own + [rule for value in schema.values() for rule in cel_rules(value)]
    if isinstance(schema, list):
        return [rule for value in schema for rule in cel_rules(value)]
    return []


# -- description (for the schema drift test) --------------------------------------------

_CONSTRAINTS = ("minimum", "maximum", "pattern", "minLength", "maxLength")


def _entry(schema: Mapping[str, Any]) -> dict[str, Any]:
    if schema.get("x-kubernetes-int-or-string"):
        entry: dict[str, Any] = {"type": "int-or-string"}
    else:
        entry = {"type": schema.get("type", "any")}
    entry.update({key: schema[key] for key in _CONSTRAINTS if key in schema})
    if schema.get("format") in ("date-time", "byte"):
        entry["format"] = schema["format"]
    if "enum" in schema:
        entry["enum"] = sorted(schema["enum"])
    if "propertyNames" in schema:
        entry["keyPattern"] = schema["propertyNames"]["pattern"]
    if "x-kubernetes-list-type" in schema:
        entry["listType"] = schema["x-kubernetes-list-type"]
    if "x-kubernetes-list-map-keys" in schema:
        entry["listMapKey"] = schema["x-kubernetes-list-map-keys"][0]
    return entry


def _describe_into(out: dict[str, dict[str, Any]], schema: Mapping[str, Any], path: str) -> None:
    required = schema.get("required", [])
    for name, sub in schema.get("properties", {}).items():
        child = join(path, name)
        entry = _entry(sub)
        entry["required"] = name in required
        if "default" in sub:
            entry["default"] = apply_defaults(sub, sub["default"])
        out[child] = entry
        _describe_into(out, sub, child)
    for key, suffix in (("items", "[]"), ("additionalProperties", "{}")):
        sub = schema.get(key)
        if isinstance(sub, Mapping):
            out[path + suffix] = _entry(sub)
            _describe_into(out, sub, path + suffix)


def describe(schema: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Every field path of an OpenAPI schema with type, required, default, constraints."""
    out: dict[str, dict[str, Any]] = {}
    _describe_into(out, schema, "")
    return out
