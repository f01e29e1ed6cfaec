"""The Helm chart (charts/virtrigaud) renders to valid, least-privilege manifests.

Rendered with chart-render (see test_renderer.py for how far it is Helm), with the
default values and with overrides; every document must parse as YAML and round-trip
through the kubernetes client's model of its kind (tests/shipping/k8s_models.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

from manager.kube.provider_resources import provider_resources
from manager.store.base import ObjectStore
from tests.charts.helm import CHART, REPO, Rendered, RenderError, template
from tests.manager.api.spec_examples import fences
from tests.shipping.cli import subcommand_parser
from tests.shipping.k8s_models import as_model
from tests.shipping.k8s_names import check_object
from virtrigaud.cli import build_parser

Rule = tuple[str, str, str]  # (apiGroup, resource, verb)
CRD_GROUP = "infra.virtrigaud.io"
CLUSTER_SCOPED = ("ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition")
CRD_PLURALS = ("vmmigrations", "virtualmachines", "providers")

# What the manager does through the ObjectStore interface, per method -> RBAC verbs on
# each of the three CRDs (the Kubernetes store maps them to these API calls).
STORE_VERBS: dict[str, tuple[str, ...]] = {
    "get": ("get",),
    "list": ("list",),
    "watch": ("list", "watch"),
    "create": ("create",),
    "update": ("update",),
    "update_status": ("status:update",),
    "delete": ("delete",),
    "emit_event": (),  # events: below
    "events_for": (),
    "read_secret": (),
}
EVENT_VERBS = ("create", "get", "list", "update", "patch")  # recorder: post, or bump count
SECRET_VERBS = ("get",)  # read_secret
LEASE_VERBS = ("create", "get", "update")  # leader election
OWNED_VERBS = ("get", "list", "watch", "create", "update", "patch", "delete")


def required_manager_rules(*, deploy: bool = True) -> set[Rule]:
    """What the manager needs; ``deploy``: it also runs the provider Deployments."""
    rules: set[Rule] = set()
    for verbs in STORE_VERBS.values():
        for verb in verbs:
            for plural in CRD_PLURALS:
                if verb.startswith("status:"):
                    rules.add((CRD_GROUP, f"{plural}/status", verb.removeprefix("status:")))
                else:
                    rules.add((CRD_GROUP, plural, verb))
    rules |= {("", "events", verb) for verb in EVENT_VERBS}
    rules |= {("", "secrets", verb) for verb in SECRET_VERBS}
    if not deploy:
        return rules
    # provider Deployments/Services, owned by their Provider (blockOwnerDeletion needs
    # update on the owner's finalizers subresource)
    for obj in provider_resources(PROVIDER):
        group = obj["apiVersion"].rpartition("/")[0]
        plural = obj["kind"].lower() + "s"
        rules |= {(group, plural, verb) for verb in OWNED_VERBS}
    rules.add((CRD_GROUP, "providers/finalizers", "update"))
    return rules


PROVIDER: dict[str, Any] = {
    "apiVersion": "infra.virtrigaud.io/v1beta1",
    "kind": "Provider",
    "metadata": {"name": "kvm", "namespace": "default", "uid": "u"},
    "spec": {"type": "libvirt", "endpoint": "qemu:///system", "runtime": {"image": "i"}},
}


def granted(role: dict[str, Any]) -> set[Rule]:
    """Every (group, resource, verb) a Role/ClusterRole grants (resourceNames ignored)."""
    out: set[Rule] = set()
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out |= {(group, resource, verb) for verb in rule["verbs"]}
    return out


def spec_role() -> dict[str, Any]:
    """The Role of the API reference's "RBAC Requirements" section."""
    for example in fences("vmmigration-api-reference.md"):
        if example.language != "yaml":
            continue
        doc = yaml.safe_load(example.text)
        if isinstance(doc, dict) and doc.get("kind") == "Role":
            return doc
    raise AssertionError("the API reference has no RBAC Role example")


def manager_container(rendered: Rendered) -> dict[str, Any]:
    deployment = rendered.one("Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


@pytest.fixture(scope="module")
def default() -> Rendered:
    return template(include_crds=True)


OVERRIDES: dict[str, Any] = {
    "replicaCount": 3,
    "image": {"repository": "registry.example.com/virtrigaud/manager", "tag": "1.2.3"},
    "watchNamespaces": ["vms-a", "vms-b"],
    "serviceAccount": {"create": False, "name": "existing-sa"},
    "storage": {"allowedHosts": ["minio.internal", "10.0.0.0/8"]},
    "tls": {"enabled": True, "clientSecretName": "mgr-tls", "serverName": "providers.local"},
    "metrics": {"enabled": False},
    "leaderElection": {"leaseName": "my-lease"},
    "extraArgs": ["--something=1"],
    "providers": {"image": "mirror.example.com/virtrigaud/provider:1.2.3"},
    "podLabels": {"team": "virt"},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "resources": {"requests": {"cpu": "1"}, "limits": {"memory": "2Gi"}},
}


@pytest.fixture(scope="module")
def overridden() -> Rendered:
    return template(values=OVERRIDES, name="prod", namespace="ops")


def kinds(rendered: Rendered) -> list[tuple[str, str]]:
    return sorted((d["kind"], d["metadata"]["name"]) for d in rendered.documents)


# -- CRDs ----------------------------------------------------------------------------


def test_chart_crds_are_the_crds_of_config() -> None:
    bases = sorted((REPO / "config" / "crd" / "bases").glob("*.yaml"))
    chart = sorted((CHART / "crds").glob("*.yaml"))
    assert [p.name for p in chart] == [p.name for p in bases]
    for ours, theirs in zip(chart, bases, strict=True):
        assert ours.read_bytes() == theirs.read_bytes(), (
            f"{ours} differs from {theirs}: cp config/crd/bases/*.yaml charts/virtrigaud/crds/"
        )


# -- default values ------------------------------------------------------------------


def test_default_render_is_valid(default: Rendered) -> None:
    assert kinds(default) == [
        ("ClusterRole", "vr-virtrigaud-manager"),
        ("ClusterRole", "vr-virtrigaud-vmmigration-editor"),
        ("ClusterRoleBinding", "vr-virtrigaud-manager"),
        ("CustomResourceDefinition", "providers.infra.virtrigaud.io"),
        ("CustomResourceDefinition", "virtualmachines.infra.virtrigaud.io"),
        ("CustomResourceDefinition", "vmmigrations.infra.virtrigaud.io"),
        ("Deployment", "vr-virtrigaud-manager"),
        ("Role", "vr-virtrigaud-leader-election"),
        ("RoleBinding", "vr-virtrigaud-leader-election"),
        ("Service", "vr-virtrigaud-metrics"),
        ("ServiceAccount", "vr-virtrigaud"),
    ]
    for document in default.documents:
        as_model(document)
        check_object(document)
        if document["kind"] not in CLUSTER_SCOPED:
            assert document["metadata"]["namespace"] == "virtrigaud-system"
        assert document["kind"] == "CustomResourceDefinition" or (
            document["metadata"]["labels"]["app.kubernetes.io/instance"] == "vr"
        )


def test_deployment_selectors_ports_and_service(default: Rendered) -> None:
    deployment = default.one("Deployment")
    spec = deployment["spec"]
    pod_labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= pod_labels.items()
    assert spec["replicas"] == 1
    service = default.one("Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    # the Service selects the manager only, never a provider pod the manager creates
    provider_labels = provider_resources(PROVIDER)[0]["spec"]["template"]["metadata"]["labels"]
    assert not service["spec"]["selector"].items() <= provider_labels.items()
    container = manager_container(default)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert service["spec"]["ports"][0]["targetPort"] in ports
    assert container["livenessProbe"]["httpGet"]["port"] in ports
    assert container["readinessProbe"]["httpGet"]["port"] in ports
    assert (
        spec["template"]["spec"]["serviceAccountName"]
        == default.one("ServiceAccount")["metadata"]["name"]
    )


def test_deployment_is_hardened(default: Rendered) -> None:
    pod = default.one("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    container = manager_container(default)
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        assert mount["name"] in volumes
        if not mount.get("readOnly"):
            assert "emptyDir" in volumes[mount["name"]]


def test_manager_command(default: Rendered) -> None:
    container = manager_container(default)
    assert container["command"] == ["virtrigaud"]
    args = container["args"]
    assert args[0] == "manager"
    assert "--leader-elect" in args
    assert "--leader-election-namespace=virtrigaud-system" in args
    assert container["image"] == "virtrigaud/manager:0.1.0"  # appVersion


def test_manager_arguments_parse_with_the_real_cli(default: Rendered, overridden: Rendered) -> None:
    parser = subcommand_parser("manager")
    assert parser is not None, "the chart runs `virtrigaud manager`"
    for rendered in (default, overridden):
        args = manager_container(rendered)["args"]
        build_parser().parse_args([a for a in args if a != "--something=1"])


def test_bindings_point_at_existing_roles_and_the_service_account(default: Rendered) -> None:
    sa = default.one("ServiceAccount")["metadata"]
    for binding in default.find("ClusterRoleBinding") + default.find("RoleBinding"):
        ref = binding["roleRef"]
        assert default.find(ref["kind"], ref["name"]), ref
        (subject,) = binding["subjects"]
        assert (subject["kind"], subject["name"], subject["namespace"]) == (
            "ServiceAccount",
            sa["name"],
            sa["namespace"],
        )


# -- RBAC ----------------------------------------------------------------------------


def test_store_interface_is_fully_mapped_to_rbac() -> None:
    """A new ObjectStore operation must be mapped (and granted) before it ships."""
    assert set(ObjectStore.__abstractmethods__) == set(STORE_VERBS)


def test_manager_rules_cover_what_the_manager_does_and_no_more(default: Rendered) -> None:
    rules = granted(default.one("ClusterRole", "vr-virtrigaud-manager"))
    required = required_manager_rules()
    assert required - rules == set()
    # least privilege: beyond what is required, only the API reference's role and
    # patch (server-side apply of owned objects) on the CRDs and their status
    spec = granted(spec_role())
    extra = rules - required - spec
    assert extra <= {(CRD_GROUP, p, "patch") for p in CRD_PLURALS} | {
        (CRD_GROUP, f"{p}/status", v) for p in CRD_PLURALS for v in ("get", "patch")
    }, extra
    assert spec <= rules  # the manager can do what the reference says a user can
    for role in default.find("ClusterRole") + default.find("Role"):
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
    # Secrets are only ever read
    assert {verb for group, res, verb in rules if res == "secrets"} <= {"get", "list"}


def test_kubernetes_adapter_kinds_are_all_granted(default: Rendered) -> None:
    """Every kind the Kubernetes store talks to (manager.kube.rest.KINDS) is granted."""
    from manager.kube.rest import KINDS

    rules = granted(default.one("ClusterRole", "vr-virtrigaud-manager"))
    rules |= granted(default.one("Role", "vr-virtrigaud-leader-election"))
    resources = {(group, resource) for group, resource, _ in rules}
    for kind in KINDS.values():
        assert (kind.group, kind.plural) in resources, kind


def test_leader_election_lease_only(default: Rendered, overridden: Rendered) -> None:
    for rendered, lease in ((default, "vr-virtrigaud-leader"), (overridden, "my-lease")):
        (role,) = [d for d in rendered.find("Role") if "leader" in d["metadata"]["name"]]
        assert {(g, r, v) for g, r, v in granted(role)} == {
            ("coordination.k8s.io", "leases", v) for v in ("create", "get", "update", "patch")
        }
        named = [r for r in role["rules"] if r.get("resourceNames")]
        assert named and all(r["resourceNames"] == [lease] for r in named)
        assert set(LEASE_VERBS) <= {v for r in role["rules"] for v in r["verbs"]}
        assert f"--leader-election-id={lease}" in manager_container(rendered)["args"]


def test_user_role_is_the_api_reference_role(default: Rendered) -> None:
    editor = default.one("ClusterRole", "vr-virtrigaud-vmmigration-editor")
    assert editor["rules"] == spec_role()["rules"]


# -- overrides -----------------------------------------------------------------------


def test_overrides_render_valid_manifests(overridden: Rendered) -> None:
    for document in overridden.documents:
        as_model(document)
        check_object(document)
    assert kinds(overridden) == [
        ("ClusterRole", "prod-virtrigaud-vmmigration-editor"),
        ("Deployment", "prod-virtrigaud-manager"),
        ("Role", "prod-virtrigaud-leader-election"),
        ("Role", "prod-virtrigaud-manager"),
        ("Role", "prod-virtrigaud-manager"),
        ("RoleBinding", "prod-virtrigaud-leader-election"),
        ("RoleBinding", "prod-virtrigaud-manager"),
        ("RoleBinding", "prod-virtrigaud-manager"),
    ]
    managers = overridden.find("Role", "prod-virtrigaud-manager")
    assert sorted(r["metadata"]["namespace"] for r in managers) == ["vms-a", "vms-b"]
    for role in managers:
        assert required_manager_rules() <= granted(role)
    for binding in overridden.find("RoleBinding"):
        assert binding["subjects"][0]["name"] == "existing-sa"
        assert binding["subjects"][0]["namespace"] == "ops"


def test_overridden_deployment(overridden: Rendered) -> None:
    deployment = overridden.one("Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 3
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "existing-sa"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert spec["template"]["metadata"]["labels"]["team"] == "virt"
    container = manager_container(overridden)
    assert container["image"] == "registry.example.com/virtrigaud/manager:1.2.3"
    # maps coalesce key by key (Helm): the default memory request stays
    assert container["resources"] == {
        "requests": {"cpu": "1", "memory": "128Mi"},
        "limits": {"memory": "2Gi"},
    }
    args = container["args"]
    assert "--namespace=vms-a" in args and "--namespace=vms-b" in args
    assert args[-1] == "--something=1"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["VIRTRIGAUD_STORAGE_ALLOWED_HOSTS"] == "minio.internal,10.0.0.0/8"
    # TLS: the client Secret mounted read-only, its files passed to the manager
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "mgr-tls"
    mount = next(m for m in container["volumeMounts"] if m["name"] == "tls")
    assert mount["readOnly"] is True
    for flag, file in (("cert", "tls.crt"), ("key", "tls.key"), ("ca", "ca.crt")):
        assert f"--provider-tls-{flag}={mount['mountPath']}/{file}" in args
    assert "--provider-tls-server-name=providers.local" in args
    assert "--provider-image=mirror.example.com/virtrigaud/provider:1.2.3" in args
    assert "--no-provider-deployments" not in args


def test_without_provider_deployments_no_rights_on_them() -> None:
    rendered = template(values={"providers": {"deploy": False}})
    args = manager_container(rendered)["args"]
    assert "--no-provider-deployments" in args
    if subcommand_parser("manager") is not None:
        build_parser().parse_args(args)
    rules = granted(rendered.one("ClusterRole", "vr-virtrigaud-manager"))
    assert required_manager_rules(deploy=False) <= rules
    resources = {resource for _, resource, _ in rules}
    assert not resources & {"deployments", "services", "providers/finalizers"}


def test_rbac_disabled_and_metrics_disabled() -> None:
    rendered = template(values={"rbac": {"create": False}, "metrics": {"enabled": False}})
    assert {d["kind"] for d in rendered.documents} == {"Deployment", "ServiceAccount"}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": 2, "leaderElection": {"enabled": False}}, "needs leaderElection"),
        ({"serviceAccount": {"create": False}}, "serviceAccount.name is required"),
        ({"tls": {"enabled": True, "clientSecretName": ""}}, "tls.clientSecretName is required"),
    ],
)
def test_refused_values(values: dict[str, Any], message: str) -> None:
    with pytest.raises(RenderError) as info:
        template(values=values)
    assert message in str(info.value)


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "virtrigaud"
    from virtrigaud import __version__

    assert chart["appVersion"] == __version__


def _all_files(paths: Iterable[Path]) -> list[Path]:
    return [p for p in paths if p.is_file()]


def test_templates_only_use_what_the_renderer_was_proven_on() -> None:
    """No Helm feature the stand-in renderer does not implement (.Files, lookup,
    .Capabilities.APIVersions, subcharts): it would render differently under Helm."""
    for path in _all_files((CHART / "templates").rglob("*")):
        text = path.read_text()
        for feature in (".Files", "lookup", "APIVersions", ".Subcharts"):
            assert feature not in text, f"{path.name} uses {feature}"
    assert not (CHART / "charts").exists()
    assert not (CHART / "Chart.lock").exists()


def _leaf_paths(values: Any, prefix: str = "") -> list[str]:
    if isinstance(values, dict) and values:
        out: list[str] = []
        for key, value in values.items():
            out += _leaf_paths(value, f"{prefix}.{key}" if prefix else key)
        return out
    return [prefix]


def test_every_value_is_used_by_a_template() -> None:
    """A value no template reads would be a setting that silently does nothing."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    text = "".join(p.read_text() for p in _all_files((CHART / "templates").rglob("*")))
    used = set(re.findall(r"\.Values\.([\w.]+)", text))
    for path in _leaf_paths(values):
        parts = path.split(".")
        prefixes = {".".join(parts[:n]) for n in range(1, len(parts) + 1)}
        assert prefixes & used, f"values.yaml: {path} is used by no template"
