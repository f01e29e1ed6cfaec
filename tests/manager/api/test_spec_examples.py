"""Every YAML example of the four spec documents validates against the CRD schema and
parses into the API types (fragments are embedded into a minimal valid object first; see
``spec_examples``). Examples of other APIs must be rejected, naming ``apiVersion``."""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

import pytest
import yaml

from manager.api import VMMigration, load_manifests, parse_manifest
from manager.api.schema import validate_manifest, validator_for
from tests.manager.api.spec_examples import (
    SPEC_DOCUMENTS,
    Classified,
    all_classified,
    fences,
    spec_dir,
)
from virtrigaud.errors import ValidationError

CLASSIFIED = all_classified()
CHECKED = [item for item in CLASSIFIED if item.manifest is not None]


def _ids(items: list[Classified]) -> list[str]:
    return [f"{item.example.label}-{item.category}" for item in items]


def is_subset(part: Any, whole: Any) -> bool:
    """Every key and value of ``part`` appears in ``whole`` (lists element by element)."""
    if isinstance(part, dict):
        return isinstance(whole, dict) and all(
            key in whole and is_subset(value, whole[key]) for key, value in part.items()
        )
    if isinstance(part, list):
        return (
            isinstance(whole, list)
            and len(part) == len(whole)
            and all(is_subset(p, w) for p, w in zip(part, whole, strict=True))
        )
    return bool(part == whole)


def test_every_yaml_block_is_classified() -> None:
    unknown = [item.example.label for item in CLASSIFIED if item.category == "unknown"]
    assert unknown == []
    counts = Counter((item.example.document, item.category) for item in CLASSIFIED)
    # Pinned so that an extraction bug (a missed fence) cannot go unnoticed.
    assert counts == {
        ("vmmigration-api-reference.md", "skeleton"): 1,
        ("vmmigration-api-reference.md", "manifest"): 4,  # Complete Example + 3 Secrets
        ("vmmigration-api-reference.md", "fragment"): 30,
        ("vmmigration-api-reference.md", "foreign"): 1,  # RBAC Role
        ("migration-user-guide.md", "manifest"): 4,  # Quick Start + 3 scenarios
        ("migration-user-guide.md", "fragment"): 10,
        ("imported-disk-design.md", "fragment"): 1,  # spec.importedDisk of a migrated VM
        ("vm-import-controller-design.md", "foreign"): 2,  # Harvester import-job API
    }


def test_fence_parser_finds_indented_and_annotated_fences() -> None:
    imported = fences("imported-disk-design.md")
    assert any(e.language == "yaml" and "importedDisk:" in e.text for e in imported)
    harvester = fences("vm-import-controller-design.md")
    assert [e.language for e in harvester].count("yaml:") == 2
    assert all((spec_dir() / name).is_file() for name in SPEC_DOCUMENTS)


@pytest.mark.parametrize("item", CHECKED, ids=_ids(CHECKED))
def test_example_validates_against_crd_schema(item: Classified) -> None:
    assert item.manifest is not None
    defaulted = validate_manifest(item.manifest)
    assert is_subset(item.manifest, defaulted)


@pytest.mark.parametrize("item", CHECKED, ids=_ids(CHECKED))
def test_example_parses_into_types(item: Classified) -> None:
    assert item.manifest is not None
    obj = parse_manifest(item.manifest)
    assert item.manifest["kind"] == obj.KIND
    # nothing of the example is lost or changed by parsing
    assert is_subset(item.manifest, obj.to_dict())
    # and the types produce exactly what the API server would store
    validator = validator_for(obj.KIND)
    assert obj.to_dict() == validator.default(item.manifest)


MANIFESTS = [item for item in CLASSIFIED if item.category == "manifest"]


@pytest.mark.parametrize("item", MANIFESTS, ids=_ids(MANIFESTS))
def test_full_manifest_loads_from_its_yaml_text(item: Classified) -> None:
    (obj,) = load_manifests(item.example.text)
    assert obj.to_dict() == parse_manifest(item.doc).to_dict()


def test_complete_example_status_is_checked() -> None:
    (item,) = [i for i in MANIFESTS if i.doc["metadata"]["name"] == "production-db-migration"]
    migration = parse_manifest(item.doc)
    assert isinstance(migration, VMMigration)
    assert migration.status is not None
    assert migration.status.phase == "Transferring"
    assert migration.status.bytes_transferred == 335544320000
    assert [c.type for c in migration.status.conditions] == [
        "Validated",
        "Snapshotted",
        "Exported",
        "Transferring",
    ]
    # a status error in that example is caught by both paths
    broken = json.loads(json.dumps(item.doc))
    broken["status"]["progress"] = 167
    with pytest.raises(ValidationError) as exc:
        parse_manifest(broken)
    assert exc.value.field == "status.progress"
    assert [e.field for e in validator_for("VMMigration").errors(broken)] == ["status.progress"]


FOREIGN = [item for item in CLASSIFIED if item.category == "foreign"]


@pytest.mark.parametrize("item", FOREIGN, ids=_ids(FOREIGN))
def test_foreign_examples_are_rejected_naming_api_version(item: Classified) -> None:
    with pytest.raises(ValidationError) as exc:
        load_manifests(item.example.text)
    assert exc.value.field == "apiVersion"
    with pytest.raises(ValidationError) as exc:
        validate_manifest(item.doc)
    assert exc.value.field == "apiVersion"


def test_provider_runtime_patch_from_the_docs_applies() -> None:
    """The docs show no Provider manifest, only ``kubectl patch provider`` JSON patches;
    applying them to a minimal Provider must still give a valid Provider."""
    text = (spec_dir() / "imported-disk-design.md").read_text(encoding="utf-8")
    patches = re.findall(r"kubectl patch provider .*?-p='(\[.*?\])'", text, re.S)
    assert len(patches) == 2
    for patch in patches:
        provider: dict[str, Any] = yaml.safe_load(
            "apiVersion: infra.virtrigaud.io/v1beta1\nkind: Provider\n"
            "metadata: {name: libvirt-migration-test, namespace: default}\n"
            "spec: {type: libvirt, endpoint: 'qemu+ssh://root@kvm1/system',"
            " runtime: {image: old}}\n"
        )
        for op in json.loads(patch):
            assert op["op"] == "replace"
            *parents, leaf = op["path"].strip("/").split("/")
            target = provider
            for part in parents:
                target = target[part]
            assert leaf in target
            target[leaf] = op["value"]
        validate_manifest(provider)
        assert (
            parse_manifest(provider)
            .to_dict()["spec"]["runtime"]["image"]
            .startswith("ghcr.io/projectbeskar/virtrigaud/provider-")
        )
