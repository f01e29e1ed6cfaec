"""Name and label rules the API server enforces and the client models do not check.

From the Kubernetes API conventions (apimachinery validation): object names are DNS-1123
subdomains (Services: DNS-1035 labels), label values at most 63 characters of
``[A-Za-z0-9_.-]`` starting and ending alphanumeric, label keys an optional DNS
subdomain prefix plus such a name, port names IANA service names (at most 15
characters, lowercase, at least one letter, no ``--``), volume names DNS-1123 labels.
"""

from __future__ import annotations

import re
from typing import Any

DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
PORT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


def check_label(key: str, value: str) -> None:
    prefix, _, name = key.rpartition("/")
    assert not prefix or (len(prefix) <= 253 and DNS_1123_SUBDOMAIN.match(prefix)), key
    assert len(name) <= 63 and LABEL_NAME.match(name), key
    assert len(value) <= 63 and (value == "" or LABEL_NAME.match(value)), (key, value)


def check_port_name(name: str) -> None:
    assert len(name) <= 15 and PORT_NAME.match(name), name
    assert re.search("[a-z]", name) and "--" not in name, name


def check_object(obj: dict[str, Any]) -> None:
    """AssertionError naming what the API server would refuse in ``obj``."""
    meta = obj["metadata"]
    name = meta["name"]
    if obj["kind"] == "Service":
        assert len(name) <= 63 and DNS_1035_LABEL.match(name), name
    else:
        assert len(name) <= 253 and DNS_1123_SUBDOMAIN.match(name), name
    if "namespace" in meta:
        assert len(meta["namespace"]) <= 63 and DNS_1123_LABEL.match(meta["namespace"])
    for key, value in (meta.get("labels") or {}).items():
        check_label(key, value)
    spec = obj.get("spec") or {}
    if obj["kind"] == "Service":
        for port in spec.get("ports", []):
            check_port_name(port["name"])
        for key, value in (spec.get("selector") or {}).items():
            check_label(key, value)
    if obj["kind"] == "Deployment":
        for key, value in spec["selector"]["matchLabels"].items():
            check_label(key, value)
        pod = spec["template"]
        for key, value in pod["metadata"]["labels"].items():
            check_label(key, value)
        volumes = [v["name"] for v in pod["spec"].get("volumes", [])]
        assert len(volumes) == len(set(volumes)), volumes
        for volume in volumes:
            assert len(volume) <= 63 and DNS_1123_LABEL.match(volume), volume
        for container in pod["spec"]["containers"]:
            assert DNS_1123_LABEL.match(container["name"]), container["name"]
            for port in container.get("ports", []):
                check_port_name(port["name"])
            for env in container.get("env", []):
                assert ENV_NAME.match(env["name"]), env["name"]
            paths = [m["mountPath"] for m in container.get("volumeMounts", [])]
            assert len(paths) == len(set(paths)), paths
