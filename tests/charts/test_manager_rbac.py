"""The chart's manager, run as its Deployment says, needs no API call its RBAC denies.

``virtrigaud manager`` is started with the arguments and environment of the rendered
Deployment (only the listen addresses moved to loopback and a kubeconfig added, since
this is not a pod) against the Kubernetes API emulator (tests/kubeapi), with the
objects of an example migration in the cluster. Every request it makes is recorded by
the emulator; each one is then authorized against the rendered Roles, ClusterRoles and
bindings of the manager's ServiceAccount with Kubernetes' RBAC rules. With
``watchNamespaces`` the manager must stay inside those namespaces (Roles only there).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import pytest
from kubernetes import client

from manager.onemachine.manifests import read_manifests
from tests.charts.helm import REPO, Rendered, template
from tests.kubeapi.fixtures import api_client, namespace, running, write_kubeconfig
from tests.kubeapi.server import RESOURCES, KubeAPIServer, parse_target
from tests.servers.net import free_port
from tests.shipping.cli import subcommand_parser

RELEASE_NS = "virtrigaud-system"
EXAMPLE = REPO / "examples" / "migration" / "libvirt-to-vsphere.yaml"
APP_NS = "kvm-to-vsphere"
POD_NAME = "vr-virtrigaud-manager-7d9f8-abcde"
T = TypeVar("T")


@dataclass(frozen=True)
class Attributes:
    """What RBAC authorizes: a verb on a (sub)resource, in a namespace, maybe by name."""

    verb: str
    group: str
    resource: str  # "providers" or "providers/status"
    namespace: str | None
    name: str


def attributes(request: str) -> Attributes:
    """``METHOD /path?query`` (as the emulator logs it) -> RBAC request attributes."""
    method, _, raw = request.partition(" ")
    url = urlsplit(raw)
    target = parse_target(url.path)
    query = parse_qs(url.query)
    if method == "GET":
        watch = query.get("watch", [""])[-1].lower() in ("1", "t", "true")
        verb = "get" if target.name else ("watch" if watch else "list")
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method]
    resource = target.res.plural + (f"/{target.sub}" if target.sub else "")
    return Attributes(verb, target.res.group, resource, target.namespace, target.name)


def _rule_allows(rule: dict[str, Any], a: Attributes) -> bool:
    if a.group not in rule["apiGroups"] or a.resource not in rule["resources"]:
        return False
    if a.verb not in rule["verbs"]:
        return False
    names = rule.get("resourceNames") or []
    return not names or (bool(a.name) and a.name in names)


def _subject_is(binding: dict[str, Any], sa: tuple[str, str]) -> bool:
    return any(
        s["kind"] == "ServiceAccount" and (s["namespace"], s["name"]) == sa
        for s in binding.get("subjects", [])
    )


def authorized(rendered: Rendered, sa: tuple[str, str], a: Attributes) -> bool:
    """Kubernetes RBAC: a ClusterRoleBinding grants everywhere; a RoleBinding grants its
    Role's (or ClusterRole's) rules in the binding's namespace only."""
    for binding in rendered.find("ClusterRoleBinding"):
        if _subject_is(binding, sa):
            role = rendered.one("ClusterRole", binding["roleRef"]["name"])
            if any(_rule_allows(rule, a) for rule in role["rules"]):
                return True
    if a.namespace is None:
        return False
    for binding in rendered.find("RoleBinding"):
        if binding["metadata"]["namespace"] != a.namespace or not _subject_is(binding, sa):
            continue
        ref = binding["roleRef"]
        roles = [
            r
            for r in rendered.find(ref["kind"], ref["name"])
            if ref["kind"] == "ClusterRole" or r["metadata"]["namespace"] == a.namespace
        ]
        if any(_rule_allows(rule, a) for role in roles for rule in role["rules"]):
            return True
    return False


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


def _until(check: Callable[[], T | None], what: str, process: subprocess.Popen[str]) -> T:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the manager exited while waiting for {what}"
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _load_example(server: KubeAPIServer) -> None:
    api = api_client(server)
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    for obj in read_manifests(EXAMPLE):
        ns = obj["metadata"]["namespace"]
        if obj["kind"] == "Secret":
            core.create_namespaced_secret(ns, obj)
        else:
            group, version = obj["apiVersion"].split("/")
            plural = obj["kind"].lower() + "s"
            custom.create_namespaced_custom_object(group, version, ns, plural, obj)


def _field(state: Any, res: Any, ns: str, name: str, field: str) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] | None = state.get(res, ns, name).get(field)
    except Exception:  # not there yet (the emulator's NotFound)
        return None
    return found


def _local(args: list[str], ports: dict[str, int]) -> list[str]:
    out = []
    for arg in args:
        flag, sep, _ = arg.partition("=")
        out.append(f"{flag}=127.0.0.1:{ports[flag]}" if sep and flag in ports else arg)
    return out


def _env(container: dict[str, Any]) -> dict[str, str]:
    downward = {"metadata.name": POD_NAME, "metadata.namespace": RELEASE_NS}
    env = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            env[item["name"]] = downward[item["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


@pytest.mark.parametrize(
    "values",
    [{}, {"watchNamespaces": [APP_NS]}],
    ids=["all-namespaces", "watched-namespace"],
)
def test_manager_api_calls_are_all_authorized_by_the_chart(
    values: dict[str, Any], tmp_path: Path
) -> None:
    assert subcommand_parser("manager") is not None, "the chart runs `virtrigaud manager`"
    rendered = template(values=values, name="vr", namespace=RELEASE_NS)
    deployment = rendered.one("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    sa = (RELEASE_NS, pod["serviceAccountName"])
    ports = {
        "--metrics-bind-address": free_port(),
        "--health-probe-bind-address": free_port(),
    }
    lease = next(a for a in container["args"] if a.startswith("--leader-election-id="))
    lease_name = lease.partition("=")[2]

    with running(token="chart-test") as server:
        for ns in (RELEASE_NS, APP_NS):
            namespace(server, ns)
        _load_example(server)
        first = len(server.requests)
        kubeconfig = write_kubeconfig(server, tmp_path / "kubeconfig", RELEASE_NS)
        argv = [*container["command"], *_local(container["args"], ports)]
        argv += ["--kubeconfig", str(kubeconfig)]
        env = {**os.environ, **_env(container), "TMPDIR": str(tmp_path)}
        log = (tmp_path / "manager.log").open("w")
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / argv[0]), *argv[1:]],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        state = server.state  # read in-process: only the manager's requests are logged
        by_plural = {r.plural: r for r in RESOURCES}
        try:
            health = f"http://127.0.0.1:{ports['--health-probe-bind-address']}"
            _until(lambda: _get(f"{health}/healthz")[0] == 200, "/healthz", process)
            _until(lambda: _get(f"{health}/readyz")[0] == 200, "/readyz", process)
            holder = _until(
                lambda: _field(state, by_plural["leases"], RELEASE_NS, lease_name, "spec"),
                "the Lease",
                process,
            )
            assert holder.get("holderIdentity") == POD_NAME
            _until(
                lambda: state.list(by_plural["deployments"], APP_NS, "", "")["items"],
                "the provider Deployments",
                process,
            )
            _until(
                lambda: _field(
                    state, by_plural["vmmigrations"], APP_NS, "kvm-to-vsphere", "status"
                ),
                "the VMMigration's status",
                process,
            )
            metrics = _get(f"http://127.0.0.1:{ports['--metrics-bind-address']}/metrics")
            assert metrics[0] == 200 and "virtrigaud_leader 1.0" in metrics[1]
            process.send_signal(signal.SIGTERM)
            assert process.wait(pod["terminationGracePeriodSeconds"]) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)
            log.close()
        requests = list(server.requests)[first:]

    made = [attributes(r) for r in requests]
    # the run exercised what the RBAC is about
    seen = {(a.group, a.resource, a.verb) for a in made}
    for needed in (
        ("coordination.k8s.io", "leases", "get"),
        ("apps", "deployments", "create"),
        ("", "services", "create"),
        ("", "events", "create"),
        ("", "secrets", "get"),
        ("infra.virtrigaud.io", "vmmigrations", "watch"),
        ("infra.virtrigaud.io", "providers/status", "update"),
    ):
        assert needed in seen, f"the run never made {needed}: {sorted(seen)}"
    denied = sorted({str(a) for a in made if not authorized(rendered, sa, a)})
    assert denied == [], "\n".join(denied)
    if values.get("watchNamespaces"):
        assert {a.namespace for a in made} <= {RELEASE_NS, APP_NS}


def test_the_rbac_evaluator_denies() -> None:
    """The check above can fail: requests the chart does not grant are denied."""
    rendered = template(name="vr", namespace=RELEASE_NS)
    sa = (RELEASE_NS, "vr-virtrigaud")
    assert authorized(rendered, sa, Attributes("get", "", "secrets", APP_NS, "x"))
    assert not authorized(
        rendered, (RELEASE_NS, "another"), Attributes("get", "", "secrets", APP_NS, "x")
    )
    for a in (
        Attributes("create", "", "secrets", APP_NS, ""),
        Attributes("delete", "", "namespaces", None, APP_NS),
        Attributes("update", "coordination.k8s.io", "leases", RELEASE_NS, "someone-else"),
        Attributes("get", "coordination.k8s.io", "leases", APP_NS, "vr-virtrigaud-leader"),
    ):
        assert not authorized(rendered, sa, a), a
    lease = Attributes(
        "update", "coordination.k8s.io", "leases", RELEASE_NS, "vr-virtrigaud-leader"
    )
    assert authorized(rendered, sa, lease)
    watched = template(values={"watchNamespaces": [APP_NS]}, name="vr", namespace=RELEASE_NS)
    assert authorized(watched, sa, Attributes("list", "", "events", APP_NS, ""))
    assert not authorized(watched, sa, Attributes("list", "", "events", None, ""))
    assert not authorized(watched, sa, Attributes("list", "", "events", "elsewhere", ""))
