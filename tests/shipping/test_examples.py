"""examples/migration: the files the user guide lists, valid under the rules of
``virtrigaud run`` (manager.onemachine.manifests.read_manifests: the CRD schema and
the API's validation rules, every document, names unique), complete (every reference
resolves inside the file), with the Secret keys each provider and storage reads, and
runnable in a cluster (their Providers build valid Deployments)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from manager.api.provider import ProviderType
from manager.kube.provider_resources import provider_resources
from manager.onemachine.manifests import read_manifests
from storage import parse_location
from tests.manager.api.spec_examples import spec_dir
from tests.shipping.k8s_models import as_model
from tests.shipping.k8s_names import check_object
from virtrigaud.errors import ValidationError

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "migration"
Obj = dict[str, Any]


def listed_in_guide() -> dict[str, str]:
    """file name -> description, from the user guide's "Examples" section."""
    text = (spec_dir() / "migration-user-guide.md").read_text()
    section = text.split("## Examples", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^- `([\w.-]+\.yaml)` - (.+)$", section, flags=re.MULTILINE))


LISTED = listed_in_guide()


def secret_keys(secret: Obj) -> set[str]:
    return set(secret.get("stringData") or {}) | set(secret.get("data") or {})


def by_key(objs: list[Obj]) -> dict[tuple[str, str, str], Obj]:
    return {(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]): o for o in objs}


def test_the_guide_lists_six_examples_and_they_all_exist() -> None:
    assert len(LISTED) == 6
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == sorted(LISTED)


def test_the_whole_directory_loads_as_virtrigaud_run_reads_it() -> None:
    objs = read_manifests(EXAMPLES)  # raises ValidationError naming the file and field
    assert sum(o["kind"] == "VMMigration" for o in objs) == 6


@pytest.mark.parametrize("name", sorted(LISTED))
def test_example_is_complete_and_consistent(name: str) -> None:
    objs = read_manifests(EXAMPLES / name)
    index = by_key(objs)
    (migration,) = [o for o in objs if o["kind"] == "VMMigration"]
    spec = migration["spec"]
    ns = migration["metadata"]["namespace"]

    def ref(kind: str, reference: Obj, default_ns: str) -> Obj:
        key = (kind, reference.get("namespace") or default_ns, reference["name"])
        assert key in index, f"{name}: {key} is referenced but not defined"
        return index[key]

    source = ref("VirtualMachine", {"name": spec["sourceName"]}, spec["sourceNamespace"])
    assert "vmId" in source["spec"]  # an existing VM, adopted
    source_provider = ref("Provider", source["spec"]["providerRef"], ns)
    target_provider = ref("Provider", spec["targetProviderRef"], ns)

    # the file name says which way it goes
    types = [t.value for t in ProviderType]
    match = re.match(rf"^({'|'.join(types)})-to-({'|'.join(types)})\.yaml$", name)
    if match:
        assert source_provider["spec"]["type"] == match.group(1)
        assert target_provider["spec"]["type"] == match.group(2)
    assert source_provider["spec"]["type"] != target_provider["spec"]["type"]

    # storage as the guide describes it, parsed as the providers parse it
    storage = spec["storage"]
    parse_location(storage)
    description = LISTED[name]
    for kind, word in (("s3", "S3"), ("nfs", "NFS"), ("http", "HTTP")):
        if f"with {word}" in description:
            assert storage["type"] == kind, description
    if storage["type"] == "s3" and "credentialsSecretRef" in storage:
        keys = secret_keys(ref("Secret", storage["credentialsSecretRef"], ns))
        assert {"accessKey", "secretKey"} <= keys
    if storage["type"] == "http":
        assert "token" in secret_keys(ref("Secret", storage["credentialsSecretRef"], ns))

    for provider in (source_provider, target_provider):
        check_provider_secret(
            name, provider, ref("Secret", provider["spec"]["credentialsSecretRef"], ns)
        )


def check_provider_secret(name: str, provider: Obj, secret: Obj) -> None:
    """The keys the provider drivers read (see their module docstrings)."""
    keys = secret_keys(secret)
    kind = provider["spec"]["type"]
    if kind == "vsphere":
        assert {"username", "password"} <= keys, name
    elif kind == "proxmox":
        token = {"tokenId", "tokenSecret"} <= keys
        login = {"username", "password"} <= keys
        assert token != login, f"{name}: a PVE token or a login, not both"
        assert {"sshPrivateKey", "knownHosts"} <= keys, name  # node access over SSH
    elif "ssh" in provider["spec"]["endpoint"].split("://")[0]:
        assert "sshPrivateKey" in keys, name


@pytest.mark.parametrize("name", sorted(LISTED))
def test_example_providers_build_valid_deployments(name: str) -> None:
    for obj in read_manifests(EXAMPLES / name):
        if obj["kind"] != "Provider":
            continue
        obj["metadata"]["uid"] = "00000000-0000-0000-0000-000000000001"
        built = provider_resources(obj)
        assert [o["kind"] for o in built] == ["Deployment", "Service"]
        for item in built:
            as_model(item)
            check_object(item)


def test_a_broken_example_is_refused_naming_file_and_field(tmp_path: Path) -> None:
    """The validation above can fail: an S3 storage without its bucket."""
    text = (EXAMPLES / "libvirt-to-vsphere.yaml").read_text()
    broken = tmp_path / "broken.yaml"
    broken.write_text(text.replace("    bucket: migrations\n", ""))
    with pytest.raises(ValidationError) as info:
        read_manifests(broken)
    assert info.value.field == "spec.storage.bucket"
    assert "broken.yaml" in info.value.reason
