"""Reading a manifest directory and applying it: validation first, idempotent, status kept."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import yaml

from manager.onemachine import manifests
from manager.store.base import ObjectKey
from manager.store.sqlite import SQLiteStore
from tests.manager.store import factory
from virtrigaud import errors


def write(path: Path, *docs: dict) -> Path:  # type: ignore[type-arg]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump_all(docs))
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "manifests"
    write(root / "b-vms.yaml", factory.vm("web", provider_name="lv", vmId="uuid-1"))
    write(
        root / "nested" / "a-infra.yml",
        factory.provider("lv", credentialsSecretRef={"name": "creds"}),
        factory.secret(string_data={"password": "pw"}),
    )
    (root / "notes.txt").write_text("not a manifest")
    return root


def test_read_validates_and_orders_for_apply(tree: Path) -> None:
    found = manifests.read_manifests(tree)
    assert [(o["kind"], o["metadata"]["name"]) for o in found] == [
        ("Secret", "creds"),
        ("Provider", "lv"),
        ("VirtualMachine", "web"),
    ]


def test_a_bad_document_names_file_and_field(tree: Path) -> None:
    bad = factory.vm("broken", provider_name="lv", vmId="x")
    bad["spec"]["powerState"] = "Sleeping"
    write(tree / "c-bad.yaml", factory.vm("fine", provider_name="lv", vmId="y"), bad)
    with pytest.raises(errors.ValidationError) as caught:
        manifests.read_manifests(tree)
    assert caught.value.field == "spec.powerState"
    assert "c-bad.yaml" in caught.value.message and "document 1 (broken)" in caught.value.message


def test_the_same_object_twice_is_refused(tree: Path) -> None:
    write(tree / "dup.yaml", factory.vm("web", provider_name="lv", vmId="other"))
    with pytest.raises(errors.ValidationError, match="VirtualMachine/default/web is also defined"):
        manifests.read_manifests(tree)


def test_empty_or_missing_paths_are_errors(tmp_path: Path) -> None:
    with pytest.raises(errors.NotFound):
        manifests.read_manifests(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(errors.InvalidArgument, match=r"no \*\.yaml"):
        manifests.read_manifests(tmp_path / "empty")


def test_applying_again_changes_nothing_and_keeps_status(tree: Path, tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "state.db") as store:
        first = manifests.apply(store, manifests.read_manifests(tree))
        assert len(first.created) == 3 and not first.updated
        vm = store.get("VirtualMachine", "default", "web")
        vm = store.update_status({**vm, "status": {"phase": "Ready", "id": "uuid-1"}})
        meta = dict(vm["metadata"])
        meta["finalizers"] = ["example.com/keep"]
        meta["annotations"] = {"controller.example.com/note": "set by a controller"}
        vm = store.update({**vm, "metadata": meta})
        again = manifests.apply(store, manifests.read_manifests(tree))
        assert again.created == [] and again.updated == []
        assert len(again.unchanged) == 3
        after = store.get("VirtualMachine", "default", "web")
        assert after == vm  # same resourceVersion, status, finalizers, annotations
        assert store.read_secret("default", "creds") == {"password": "pw"}


def test_a_changed_spec_is_updated_with_status_kept(tree: Path, tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "state.db") as store:
        manifests.apply(store, manifests.read_manifests(tree))
        vm = store.get("VirtualMachine", "default", "web")
        store.update_status({**vm, "status": {"phase": "Ready"}})
        changed = factory.vm("web", provider_name="lv", vmId="uuid-1", powerState="Off")
        changed["metadata"]["labels"] = {"app": "web"}
        write(tree / "b-vms.yaml", changed)
        secret = factory.secret(data={"password": "new"})
        write(tree / "nested" / "a-infra.yml", factory.provider("lv"), secret)
        applied = manifests.apply(store, manifests.read_manifests(tree))
        assert ObjectKey("VirtualMachine", "default", "web") in applied.updated
        after = store.get("VirtualMachine", "default", "web")
        assert after["spec"]["powerState"] == "Off"
        assert after["metadata"]["labels"] == {"app": "web"}
        assert after["metadata"]["generation"] == 2
        assert after["status"] == {"phase": "Ready"}
        provider = store.get("Provider", "default", "lv")
        assert "credentialsSecretRef" not in provider["spec"]  # the manifest's spec wins
        stored = store.get("Secret", "default", "creds")
        assert stored["data"] == {"password": base64.b64encode(b"new").decode()}
