"""Provider -> Deployment + Service (manager/kube/provider_resources.py).

Every object is checked against the kubernetes client's API models (``as_model``:
deserialize with validation, then serialize back unchanged), and the container's
arguments are parsed by the real ``virtrigaud`` command line parser, so a flag the
CLI does not know fails here rather than in a crash-looping pod.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from manager.api.provider import ProviderType
from manager.kube.provider_resources import (
    CREDENTIALS_DIR,
    SCRATCH_DIR,
    TLS_DIR,
    provider_address,
    provider_resources,
    resource_name,
)
from providers.runtime.server import SERVICE_NAME
from tests.shipping.k8s_models import as_model
from tests.shipping.k8s_names import check_object
from virtrigaud.cli import build_parser
from virtrigaud.errors import ValidationError

ENDPOINTS = {
    ProviderType.LIBVIRT: "qemu+ssh://root@kvm1.example.com/system",
    ProviderType.VSPHERE: "https://vcenter.example.com",
    ProviderType.PROXMOX: "https://pve.example.com:8006",
}
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def provider(kind: ProviderType = ProviderType.LIBVIRT, **runtime: Any) -> dict[str, Any]:
    return {
        "apiVersion": "infra.virtrigaud.io/v1beta1",
        "kind": "Provider",
        "metadata": {"name": f"{kind.value}-prod", "namespace": "virt", "uid": "0b6f-uid"},
        "spec": {
            "type": kind.value,
            "endpoint": ENDPOINTS[kind],
            "credentialsSecretRef": {"name": f"{kind.value}-creds"},
            "runtime": {"image": "registry.example.com/virtrigaud/provider:0.1.0", **runtime},
        },
    }


def split(objs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    assert [o["kind"] for o in objs] == ["Deployment", "Service"]
    return objs[0], objs[1]


def container_of(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


@pytest.mark.parametrize("kind", list(ProviderType), ids=lambda k: k.value)
def test_every_provider_type_builds_valid_objects(kind: ProviderType) -> None:
    obj = provider(kind)
    deployment, service = split(provider_resources(obj))
    model = as_model(deployment)
    assert model.kind == "Deployment"
    assert as_model(service).spec.type == "ClusterIP"
    check_object(deployment)
    check_object(service)

    name = resource_name(obj["metadata"]["name"])
    for item in (deployment, service):
        assert item["metadata"]["name"] == name
        assert item["metadata"]["namespace"] == "virt"
        assert item["metadata"]["labels"]["virtrigaud.io/provider-type"] == kind.value
        (owner,) = item["metadata"]["ownerReferences"]
        assert owner == {
            "apiVersion": "infra.virtrigaud.io/v1beta1",
            "kind": "Provider",
            "name": obj["metadata"]["name"],
            "uid": "0b6f-uid",
            "controller": True,
            "blockOwnerDeletion": True,
        }

    # the container runs the real CLI with the Provider's type and endpoint
    c = container_of(deployment)
    assert c["command"] == ["virtrigaud"]
    args = build_parser().parse_args(c["args"])
    assert args.command == "provider"
    assert args.provider_type == kind.value
    assert args.endpoint == ENDPOINTS[kind]
    assert args.listen == "0.0.0.0:9443"
    assert args.credentials_dir == CREDENTIALS_DIR
    assert args.tls_cert is None
    assert f"scratchDir={SCRATCH_DIR}" in args.option


def test_selectors_ports_and_volumes_fit_together() -> None:
    deployment, service = split(provider_resources(provider(port=7443)))
    spec = deployment["spec"]
    pod_labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}

    c = container_of(deployment)
    (port,) = c["ports"]
    assert port == {"name": "grpc", "containerPort": 7443, "protocol": "TCP"}
    (svc_port,) = service["spec"]["ports"]
    assert svc_port["port"] == 7443
    assert svc_port["targetPort"] == port["name"]
    assert "--listen" in c["args"]
    assert c["args"][c["args"].index("--listen") + 1] == "0.0.0.0:7443"

    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert set(volumes) == set(mounts)
    assert volumes["credentials"]["secret"]["secretName"] == "libvirt-creds"
    assert mounts["credentials"] == {
        "name": "credentials",
        "mountPath": CREDENTIALS_DIR,
        "readOnly": True,
    }
    assert mounts["scratch"]["mountPath"] == SCRATCH_DIR
    assert "emptyDir" in volumes["scratch"]
    assert mounts["tmp"]["mountPath"] == "/tmp"
    assert {"name": "TMPDIR", "value": "/tmp"} in c["env"]


def test_hardened_pod() -> None:
    deployment, _ = split(provider_resources(provider()))
    pod = deployment["spec"]["template"]["spec"]
    c = container_of(deployment)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    # every writable path is a volume: nothing needs the read-only root filesystem
    writable = {m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")}
    assert writable == {SCRATCH_DIR, "/tmp"}
    # the kubelet waits longer than the provider's own shutdown grace
    args = build_parser().parse_args(c["args"])
    assert pod["terminationGracePeriodSeconds"] > args.grace


def test_probes_use_grpc_health_of_the_provider_service() -> None:
    deployment, _ = split(provider_resources(provider()))
    c = container_of(deployment)
    assert c["readinessProbe"]["grpc"] == {"port": 9443, "service": SERVICE_NAME}
    assert c["livenessProbe"]["grpc"] == {"port": 9443}
    assert c["startupProbe"]["grpc"] == {"port": 9443}


def test_tls_secret_is_mounted_and_passed_and_probes_fall_back_to_tcp() -> None:
    obj = provider(tlsSecretRef={"name": "provider-tls"})
    deployment, _ = split(provider_resources(obj))
    as_model(deployment)
    c = container_of(deployment)
    args = build_parser().parse_args(c["args"])
    assert (args.tls_cert, args.tls_key, args.tls_ca) == (
        f"{TLS_DIR}/tls.crt",
        f"{TLS_DIR}/tls.key",
        f"{TLS_DIR}/ca.crt",
    )
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "provider-tls"
    assert {"name": "tls", "mountPath": TLS_DIR, "readOnly": True} in c["volumeMounts"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["tcpSocket"] == {"port": 9443}
        assert "grpc" not in c[probe]


def test_resources_default_and_given() -> None:
    deployment, _ = split(provider_resources(provider()))
    assert container_of(deployment)["resources"]["requests"]["memory"] == "256Mi"
    given = {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": 2, "memory": "4Gi"}}
    deployment, _ = split(provider_resources(provider(resources=given)))
    assert as_model(deployment)
    assert container_of(deployment)["resources"] == {
        "requests": {"cpu": "500m", "memory": "1Gi"},
        "limits": {"cpu": "2", "memory": "4Gi"},
    }


def test_options_allowed_hosts_image_and_scratch_limit() -> None:
    obj = provider()
    obj["metadata"]["annotations"] = {
        "options.virtrigaud.io/storagePool": "fast",
        "options.virtrigaud.io/scratchDir": "/somewhere/else",
    }
    obj["spec"]["defaults"] = {"network": "br0"}
    obj["spec"]["allowedStorageHosts"] = ["10.0.0.0/8", "minio.internal"]
    deployment, _ = split(
        provider_resources(
            obj,
            image="mirror.example.com/provider:pinned",
            allowed_storage_hosts=["minio.internal", "127.0.0.1"],
            scratch_size_limit="50Gi",
        )
    )
    as_model(deployment)
    c = container_of(deployment)
    assert c["image"] == "mirror.example.com/provider:pinned"
    options = build_parser().parse_args(c["args"]).option
    # the pod's scratch volume wins over an annotation: nothing else is writable
    assert sorted(options) == ["network=br0", f"scratchDir={SCRATCH_DIR}", "storagePool=fast"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["VIRTRIGAUD_STORAGE_ALLOWED_HOSTS"] == "minio.internal,127.0.0.1,10.0.0.0/8"
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["scratch"]["emptyDir"] == {"sizeLimit": "50Gi"}


def test_no_runtime_means_no_objects_and_no_address() -> None:
    obj = provider()
    del obj["spec"]["runtime"]
    assert provider_resources(obj) == []
    with pytest.raises(ValidationError) as info:
        provider_address(obj)
    assert info.value.field == "spec.runtime"


def test_address_is_the_service() -> None:
    _, service = split(provider_resources(provider(port=7443)))
    address = provider_address(provider(port=7443))
    assert address == f"{service['metadata']['name']}.virt.svc:7443"


def test_zero_replicas_allowed_more_than_one_refused() -> None:
    deployment, _ = split(provider_resources(provider(replicas=0)))
    assert deployment["spec"]["replicas"] == 0
    with pytest.raises(ValidationError) as info:
        provider_resources(provider(replicas=2))
    assert info.value.field == "spec.runtime.replicas"
    assert "at most 1 replica" in info.value.reason


def test_secret_in_another_namespace_is_refused() -> None:
    obj = provider()
    obj["spec"]["credentialsSecretRef"]["namespace"] = "elsewhere"
    with pytest.raises(ValidationError) as info:
        provider_resources(obj)
    assert info.value.field == "spec.credentialsSecretRef.namespace"
    obj = provider(tlsSecretRef={"name": "t", "namespace": "elsewhere"})
    with pytest.raises(ValidationError) as info:
        provider_resources(obj)
    assert info.value.field == "spec.runtime.tlsSecretRef.namespace"
    # the same namespace spelled out is fine
    obj = provider()
    obj["spec"]["credentialsSecretRef"]["namespace"] = "virt"
    assert len(provider_resources(obj)) == 2


def test_provider_without_uid_or_invalid_is_refused() -> None:
    obj = provider()
    del obj["metadata"]["uid"]
    with pytest.raises(ValidationError) as info:
        provider_resources(obj)
    assert info.value.field == "metadata.uid"
    obj = provider()
    obj["spec"]["type"] = "hyperv"
    with pytest.raises(ValidationError) as info:
        provider_resources(obj)
    assert info.value.field == "spec.type"


def test_long_and_dotted_names_become_valid_distinct_service_names() -> None:
    long_a = "a." + "x" * 200 + ".one"
    long_b = "a." + "x" * 200 + ".two"
    names = {resource_name(n) for n in ("kvm", "kvm.lab", "0kvm", long_a, long_b)}
    assert len(names) == 5
    for name in names:
        assert len(name) <= 63
        assert DNS_1035.match(name), name
    obj = provider()
    obj["metadata"]["name"] = long_a
    deployment, service = split(provider_resources(obj))
    for item in (deployment, service):
        as_model(item)
        check_object(item)
    for value in deployment["spec"]["template"]["metadata"]["labels"].values():
        assert len(value) <= 63


def test_input_is_not_modified() -> None:
    obj = provider(tlsSecretRef={"name": "provider-tls"})
    before = copy.deepcopy(obj)
    provider_resources(obj, allowed_storage_hosts=["h"])
    assert obj == before


@pytest.mark.parametrize(
    "spoil",
    [
        lambda d, s: s["metadata"].update(name="9-starts-with-a-digit"),
        lambda d, s: s["spec"]["ports"][0].update(name="a-port-name-over-15"),
        lambda d, s: d["metadata"]["labels"].update({"bad label": "x"}),
        lambda d, s: d["spec"]["template"]["spec"]["volumes"][0].update(name="Upper"),
        lambda d, s: container_of(d)["volumeMounts"].append({"name": "tmp", "mountPath": "/tmp"}),
    ],
)
def test_name_rules_catch_what_the_api_server_refuses(spoil: Any) -> None:
    """check_object can fail: each spoiled object is refused."""
    deployment, service = split(provider_resources(provider()))
    spoil(deployment, service)
    with pytest.raises(AssertionError):
        check_object(deployment)
        check_object(service)
