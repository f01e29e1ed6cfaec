"""The OpenAPI -> jsonschema bridge itself."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from manager.api.schema import (
    DEFAULT_CRD_DIR,
    SchemaValidator,
    apply_defaults,
    to_jsonschema,
    validate_manifest,
    validator_for,
)
from tests.manager.api.manifests import MIGRATION
from tests.manager.api.spec_examples import MINIMAL_MIGRATION
from virtrigaud.errors import ValidationError


def _toy(properties: dict[str, Any], **extra: Any) -> SchemaValidator:
    spec: dict[str, Any] = {"type": "object", **properties, **extra}
    schema = {"type": "object", "properties": {"spec": spec}}
    return SchemaValidator("example.io/v1", "Toy", schema)


def _toy_obj(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "example.io/v1", "kind": "Toy", "metadata": {"name": "t"}, "spec": spec}


def test_nullable_is_translated() -> None:
    schema = to_jsonschema({"type": "string", "nullable": True, "enum": ["a"]})
    assert schema == {"type": ["string", "null"], "enum": ["a", None]}
    toy = _toy({"properties": {"x": {"type": "string", "nullable": True}}})
    assert toy.errors(_toy_obj({"x": None})) == []
    strict = _toy({"properties": {"x": {"type": "string"}}})
    assert strict.errors(_toy_obj({"x": None})) == []  # pruned, as the API server does
    (error,) = strict.errors(_toy_obj({"x": None}), defaults=False)
    assert error.field == "spec.x"


def test_kubernetes_extensions_are_dropped_or_honoured() -> None:
    schema = to_jsonschema(
        {
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": True,
            "properties": {"a": {"x-kubernetes-int-or-string": True, "anyOf": []}},
        }
    )
    assert schema == {"type": "object", "properties": {"a": {"anyOf": []}}}
    closed = to_jsonschema({"type": "object", "properties": {"a": {"type": "string"}}})
    assert closed["additionalProperties"] is False
    for validator in (validator_for(k) for k in ("VMMigration", "VirtualMachine", "Provider")):
        jsonschema.Draft202012Validator.check_schema(validator.jsonschema)


def test_unknown_cel_rule_is_an_error() -> None:
    toy = _toy(
        {"properties": {"a": {"type": "string"}}},
        **{"x-kubernetes-validations": [{"rule": "self.a.startsWith('x')"}]},
    )
    (error,) = toy.errors(_toy_obj({"a": "y"}))
    assert error.field == "spec"
    assert "CEL rule not supported" in error.reason


def test_defaults_can_be_left_out() -> None:
    validator = validator_for("VMMigration")
    raw = validator.validate(MINIMAL_MIGRATION, defaults=False)
    assert "cleanupPolicy" not in raw["spec"]
    defaulted = validator.validate(MINIMAL_MIGRATION)
    assert defaulted["spec"]["cleanupPolicy"]["deleteSource"] is False
    assert "cleanupPolicy" not in MINIMAL_MIGRATION["spec"]  # input untouched


def test_apply_defaults_recurses_into_lists_and_new_objects() -> None:
    schema = {
        "type": "object",
        "properties": {
            "policy": {"type": "object", "default": {}, "properties": {"n": {"default": 3}}},
            "items": {
                "type": "array",
                "items": {"type": "object", "properties": {"f": {"default": "qcow2"}}},
            },
        },
    }
    assert apply_defaults(schema, {"items": [{}, {"f": "raw"}]}) == {
        "policy": {"n": 3},
        "items": [{"f": "qcow2"}, {"f": "raw"}],
    }


def test_every_error_is_reported() -> None:
    obj = copy.deepcopy(MIGRATION)
    del obj["spec"]["storage"]["bucket"]
    obj["spec"]["targetDiskFormat"] = "iso"
    obj["spec"]["bogus"] = 1
    fields = {e.field for e in validator_for("VMMigration").errors(obj)}
    assert fields == {"spec.storage.bucket", "spec.targetDiskFormat", "spec.bogus"}


def test_explicit_crd_directory(tmp_path: Path) -> None:
    for path in DEFAULT_CRD_DIR.glob("*.yaml"):
        shutil.copy(path, tmp_path)
    assert validate_manifest(MIGRATION, directory=tmp_path)["spec"]["sourceName"] == "vm1"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValidationError) as exc:
        validator_for("VMMigration", empty)
    assert exc.value.field == "kind"
    with pytest.raises(ValidationError) as exc:
        validate_manifest(MIGRATION, directory=empty)
    assert exc.value.field == "apiVersion"
    # the Secret schema is built in, so it needs no CRD
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}
    assert validate_manifest(secret, directory=empty)["type"] == "Opaque"


def test_validate_returns_a_copy() -> None:
    obj = copy.deepcopy(MIGRATION)
    result = validator_for("VMMigration").validate(obj, defaults=False)
    result["spec"]["sourceName"] = "changed"
    assert obj["spec"]["sourceName"] == "vm1"
