"""Small manifest builders for the store, runtime, controller and one-machine tests."""

from __future__ import annotations

import base64
from typing import Any

API = "infra.virtrigaud.io/v1beta1"


def meta(name: str, namespace: str = "default", **extra: Any) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, **extra}


def provider(
    name: str = "lv",
    namespace: str = "default",
    *,
    type_: str = "libvirt",
    endpoint: str = "qemu:///system",
    labels: dict[str, str] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    metadata = meta(name, namespace)
    if labels:
        metadata["labels"] = labels
    return {
        "apiVersion": API,
        "kind": "Provider",
        "metadata": metadata,
        "spec": {"type": type_, "endpoint": endpoint, **spec},
    }


def vm(
    name: str = "vm1",
    namespace: str = "default",
    *,
    provider_name: str = "lv",
    **spec: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {"providerRef": {"name": provider_name}, **spec}
    if not {"imageRef", "importedDisk", "vmId"} & set(body):
        body["imageRef"] = {"name": "base-image"}
    return {
        "apiVersion": API,
        "kind": "VirtualMachine",
        "metadata": meta(name, namespace),
        "spec": body,
    }


def migration(
    name: str = "m1", namespace: str = "default", *, source: str = "vm1", **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "VMMigration",
        "metadata": meta(name, namespace),
        "spec": {
            "sourceName": source,
            "sourceNamespace": namespace,
            "targetProviderRef": {"name": "target"},
            "targetName": f"{source}-migrated",
            "storage": {"type": "nfs", "path": "/srv/nfs"},
            **spec,
        },
    }


def secret(
    name: str = "creds",
    namespace: str = "default",
    *,
    data: dict[str, str] | None = None,
    string_data: dict[str, str] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"apiVersion": "v1", "kind": "Secret", "metadata": meta(name, namespace)}
    if data is not None:
        body["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    if string_data is not None:
        body["stringData"] = string_data
    return body
