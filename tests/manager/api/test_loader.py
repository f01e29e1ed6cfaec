"""load_manifests: multi-document YAML dispatching on apiVersion/kind."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from manager.api import (
    Provider,
    Secret,
    VirtualMachine,
    VMMigration,
    kind_of,
    load_manifests,
    parse_manifest,
)
from tests.manager.api.manifests import MIGRATION, PROVIDER, SECRET, VM
from virtrigaud.errors import ValidationError

STREAM = "\n---\n".join(yaml.safe_dump(doc) for doc in (MIGRATION, VM, PROVIDER, SECRET))


def test_multi_document_stream_dispatches_on_kind() -> None:
    objects = load_manifests("---\n" + STREAM + "\n---\n")  # empty documents are skipped
    assert [type(obj) for obj in objects] == [VMMigration, VirtualMachine, Provider, Secret]
    assert [obj.name for obj in objects] == ["m1", "vm1", "vsphere-prod", "s3-credentials"]
    migration = objects[0]
    assert isinstance(migration, VMMigration)
    assert migration.spec.storage.bucket == "vm-migrations"


def test_path_and_file_name_inputs(tmp_path: Path) -> None:
    path = tmp_path / "objects.yaml"
    path.write_text(STREAM, encoding="utf-8")
    assert [obj.KIND for obj in load_manifests(path)] == [
        "VMMigration",
        "VirtualMachine",
        "Provider",
        "Secret",
    ]
    assert len(load_manifests(str(path))) == 4


def test_kind_list_is_expanded() -> None:
    text = yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [VM, SECRET]})
    assert [obj.KIND for obj in load_manifests(text)] == ["VirtualMachine", "Secret"]


def test_unknown_api_version_names_api_version() -> None:
    text = STREAM + "\n---\napiVersion: infra.virtrigaud.io/v1alpha9\nkind: VMMigration\n"
    with pytest.raises(ValidationError) as exc:
        load_manifests(text)
    assert exc.value.field == "apiVersion"
    assert "document 4" in str(exc.value)
    assert "v1alpha9" in str(exc.value)


def test_unknown_kind_names_kind() -> None:
    with pytest.raises(ValidationError) as exc:
        load_manifests("apiVersion: infra.virtrigaud.io/v1beta1\nkind: VMSet\n")
    assert exc.value.field == "kind"
    assert "VMSet" in str(exc.value)
    with pytest.raises(ValidationError) as exc:
        load_manifests("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    assert exc.value.field == "kind"


def test_missing_api_version_or_kind() -> None:
    with pytest.raises(ValidationError) as exc:
        kind_of({"kind": "VMMigration"})
    assert exc.value.field == "apiVersion"
    with pytest.raises(ValidationError) as exc:
        kind_of({"apiVersion": "v1"})
    assert exc.value.field == "kind"


def test_errors_inside_a_document_keep_the_field_and_say_which_document() -> None:
    broken = dict(VM, spec={**VM["spec"], "imageRef": {"name": "ubuntu"}})
    text = STREAM + "\n---\n" + yaml.safe_dump(broken)
    with pytest.raises(ValidationError) as exc:
        load_manifests(text)
    assert exc.value.field == "spec.importedDisk"
    assert str(exc.value).startswith("spec.importedDisk: document 4 (vm1): ")


def test_non_mapping_and_invalid_yaml() -> None:
    with pytest.raises(ValidationError, match="must be a mapping"):
        load_manifests("- just\n- a list\n")
    with pytest.raises(ValidationError, match="invalid YAML"):
        load_manifests("kind: [unclosed\n")
    with pytest.raises(ValidationError, match="must be a mapping"):
        parse_manifest(["not", "a", "dict"])
