"""Check manifests against the Kubernetes API models of the installed ``kubernetes``
client (generated from the Kubernetes OpenAPI spec).

``as_model`` deserializes a manifest dict into its model class (``V1Deployment`` ...),
with the client's own validation on (required fields, enum values), then serializes
the model back: the result must equal the input, so a misspelled or misplaced field,
which deserialization would silently drop, fails the check as well.
"""

from __future__ import annotations

import json
from typing import Any

from kubernetes.client import ApiClient, Configuration

# kind (apiVersion) -> model class name of the kubernetes client
MODELS: dict[tuple[str, str], str] = {
    ("apps/v1", "Deployment"): "V1Deployment",
    ("v1", "Service"): "V1Service",
    ("v1", "ServiceAccount"): "V1ServiceAccount",
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("v1", "Secret"): "V1Secret",
    ("rbac.authorization.k8s.io/v1", "Role"): "V1Role",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "V1RoleBinding",
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): "V1ClusterRole",
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): "V1ClusterRoleBinding",
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"): "V1CustomResourceDefinition",
    ("policy/v1", "PodDisruptionBudget"): "V1PodDisruptionBudget",
}


class _Response:
    """What ``ApiClient.deserialize`` reads: a response with a JSON body."""

    def __init__(self, obj: Any) -> None:
        self.data = json.dumps(obj)


def model_name(obj: dict[str, Any]) -> str:
    key = (obj.get("apiVersion", ""), obj.get("kind", ""))
    if key not in MODELS:
        raise AssertionError(f"no kubernetes client model for {key}")
    return MODELS[key]


def as_model(obj: dict[str, Any]) -> Any:
    """The client's model of ``obj``; AssertionError when it does not round-trip."""
    config = Configuration()
    config.client_side_validation = True
    api = ApiClient(configuration=config)
    model = api.deserialize(_Response(obj), model_name(obj))
    back = api.sanitize_for_serialization(model)
    if back != obj:
        changes = _diff(obj, back)
        raise AssertionError(f"{model_name(obj)} round trip changed the manifest:\n{changes}")
    return model


def _diff(a: Any, b: Any, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        lines = [
            _diff(a.get(k), b.get(k), f"{path}.{k}")
            for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)
        ]
        return "\n".join(lines)
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return "\n".join(
            _diff(x, y, f"{path}[{i}]") for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y
        )
    return f"{path}: {a!r} -> {b!r}"
