"""The CRD files: structure, documentation, CEL rules, and agreement with the dataclasses."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from manager.api import Provider, Secret, VirtualMachine, VMMigration
from manager.api.meta import Resource
from manager.api.schema import (
    CEL_RULES,
    DEFAULT_CRD_DIR,
    cel_rules,
    describe,
    load_crds,
    validator_for,
)

KINDS: list[type[Resource]] = [VMMigration, VirtualMachine, Provider, Secret]
CRD_KINDS: list[type[Resource]] = [VMMigration, VirtualMachine, Provider]
CRDS = load_crds()

EXPECTED_NAMES = {
    "VMMigration": ("vmmigrations", ["vmm"], "infra.virtrigaud.io_vmmigrations.yaml"),
    "VirtualMachine": ("virtualmachines", ["vm"], "infra.virtrigaud.io_virtualmachines.yaml"),
    "Provider": ("providers", None, "infra.virtrigaud.io_providers.yaml"),
}
PRINTER_COLUMNS = {
    "VMMigration": ["Phase", "Progress", "Source", "Target", "Age"],
    "VirtualMachine": ["Provider", "Power", "Phase", "IP", "Age"],
    "Provider": ["Type", "Endpoint", "Ready", "Age"],
}


def test_crd_files_and_kinds() -> None:
    assert sorted(p.name for p in DEFAULT_CRD_DIR.glob("*.yaml")) == sorted(
        file for _, _, file in EXPECTED_NAMES.values()
    )
    assert set(CRDS) == set(EXPECTED_NAMES)


@pytest.mark.parametrize("kind", sorted(EXPECTED_NAMES))
def test_crd_structure(kind: str) -> None:
    crd = CRDS[kind]
    plural, short_names, _ = EXPECTED_NAMES[kind]
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == f"{plural}.infra.virtrigaud.io"
    spec = crd["spec"]
    assert spec["group"] == "infra.virtrigaud.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == kind
    assert spec["names"]["plural"] == plural
    assert spec["names"].get("shortNames") == short_names
    (version,) = spec["versions"]
    assert version["name"] == "v1beta1"
    assert version["served"] is True
    assert version["storage"] is True
    assert version["subresources"] == {"status": {}}
    root = version["schema"]["openAPIV3Schema"]
    assert root["type"] == "object"
    assert {"apiVersion", "kind", "metadata", "spec", "status"} == set(root["properties"])


@pytest.mark.parametrize("kind", sorted(PRINTER_COLUMNS))
def test_printer_columns_point_at_real_fields(kind: str) -> None:
    (version,) = CRDS[kind]["spec"]["versions"]
    columns = version["additionalPrinterColumns"]
    assert [c["name"] for c in columns] == PRINTER_COLUMNS[kind]
    fields = describe(validator_for(kind).openapi)
    for column in columns:
        path = column["jsonPath"].lstrip(".").replace("[0]", "[]")
        assert path in fields, column
        field_type = fields[path]["type"]
        if column["type"] == "date":
            assert fields[path].get("format") == "date-time"
        else:
            assert column["type"] == field_type, column


def _undocumented(schema: dict[str, Any], path: str) -> list[str]:
    missing = [] if schema.get("description", "").strip() else [path or "<root>"]
    for name, sub in schema.get("properties", {}).items():
        missing += _undocumented(sub, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            missing += _undocumented(schema[key], f"{path}.{key}")
    return missing


@pytest.mark.parametrize("kind", sorted(EXPECTED_NAMES))
def test_every_field_has_a_description(kind: str) -> None:
    (version,) = CRDS[kind]["spec"]["versions"]
    assert _undocumented(version["schema"]["openAPIV3Schema"], "") == []


def test_every_cel_rule_is_in_the_table() -> None:
    used = [rule for crd in CRDS.values() for rule in cel_rules(crd)]
    assert used, "the CRDs are expected to carry CEL rules"
    assert [rule for rule in used if rule not in CEL_RULES] == []
    assert set(CEL_RULES) - set(used) == set(), "table entries no CRD uses"


def test_cel_rules_carry_messages_and_field_paths() -> None:
    (version,) = CRDS["VMMigration"]["spec"]["versions"]
    storage = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["storage"]
    rules = storage["x-kubernetes-validations"]
    assert {r["fieldPath"] for r in rules} == {".bucket", ".endpoint", ".path"}
    assert all(r["message"] for r in rules)


@pytest.mark.parametrize("cls", KINDS, ids=[c.KIND for c in KINDS])
def test_schema_fields_equal_dataclass_fields(cls: type[Resource]) -> None:
    """Field paths, types, required flags, defaults, enums and constraints must agree, so
    the CRDs and the Python types cannot drift apart."""
    from_schema = describe(validator_for(cls.KIND).openapi)
    from_types = cls.describe()
    assert set(from_schema) == set(from_types)
    for path in sorted(from_schema):
        assert from_schema[path] == from_types[path], path


def test_drift_check_sees_a_difference() -> None:
    """The comparison above is not vacuous: a dropped field, a changed default or a
    changed enum in the CRD each make it fail."""
    types = VMMigration.describe()
    assert describe(validator_for("VMMigration").openapi) == types
    spec_path = ("properties", "spec", "properties")

    def mutated(change: Any) -> dict[str, dict[str, Any]]:
        openapi = copy.deepcopy(validator_for("VMMigration").openapi)
        spec = openapi
        for key in spec_path:
            spec = spec[key]
        change(spec)
        return describe(openapi)

    dropped = mutated(lambda spec: spec["storage"]["properties"].pop("bucket"))
    assert set(types) - set(dropped) == {"spec.storage.bucket"}
    redefaulted = mutated(
        lambda spec: spec["retryPolicy"]["properties"]["maxAttempts"].update(default=4)
    )
    assert redefaulted["spec.retryPolicy.maxAttempts"] != types["spec.retryPolicy.maxAttempts"]
    assert redefaulted["spec.retryPolicy"] != types["spec.retryPolicy"]
    narrowed = mutated(lambda spec: spec["targetDiskFormat"]["enum"].remove("vhdx"))
    assert narrowed["spec.targetDiskFormat"] != types["spec.targetDiskFormat"]
    assert types["spec.cleanupPolicy"]["default"] == {
        "deleteIntermediate": True,
        "deleteSnapshot": True,
        "deleteSource": False,
    }


def _untyped(schema: dict[str, Any], path: str) -> list[str]:
    """Nodes breaking structural-schema rules: every node has a type (int-or-string
    nodes use anyOf integer/string instead) and list-map keys are required fields."""
    if schema.get("x-kubernetes-int-or-string"):
        ok = "type" not in schema and schema.get("anyOf") == [
            {"type": "integer"},
            {"type": "string"},
        ]
        bad = [] if ok else [path]
    else:
        bad = [] if "type" in schema else [path]
    if schema.get("x-kubernetes-list-type") == "map":  # map keys must be required
        keys = schema["x-kubernetes-list-map-keys"]
        bad += [f"{path}[].{k}" for k in keys if k not in schema["items"].get("required", [])]
    for name, sub in schema.get("properties", {}).items():
        bad += _untyped(sub, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            bad += _untyped(schema[key], f"{path}.{key}")
    return bad


@pytest.mark.parametrize("kind", sorted(EXPECTED_NAMES))
def test_schemas_are_structural(kind: str) -> None:
    (version,) = CRDS[kind]["spec"]["versions"]
    root = version["schema"]["openAPIV3Schema"]
    assert _untyped(root, "") == []
    assert set(root["properties"]["metadata"]) <= {"type", "description"}
