"""OpenAPI schemas of what the API server validates itself: ObjectMeta and core/v1 Secret.

CRDs leave ``metadata`` open (``type: object``) because the API server checks it; the
jsonschema bridge (``schema.py``) plugs ``OBJECT_META_SCHEMA`` in to do the same. Only
the fields ``meta.ObjectMeta`` and ``secret.Secret`` know are listed, and a test checks
that both sides agree.
"""

from __future__ import annotations

from typing import Any

from manager.api.meta import DNS_LABEL_PATTERN, DNS_SUBDOMAIN_PATTERN
from manager.api.secret import DATA_KEY_PATTERN


def _string(description: str, **extra: Any) -> dict[str, Any]:
    return {"description": description, "type": "string", **extra}


def _string_map(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "type": "object",
        "additionalProperties": _string("One value."),
    }


_OWNER_REFERENCE: dict[str, Any] = {
    "description": "An object this one depends on.",
    "type": "object",
    "required": ["apiVersion", "kind", "name", "uid"],
    "properties": {
        "apiVersion": _string("API version of the owner."),
        "kind": _string("Kind of the owner."),
        "name": _string("Name of the owner."),
        "uid": _string("UID of the owner."),
        "controller": {"description": "Owner is the managing controller.", "type": "boolean"},
        "blockOwnerDeletion": {
            "description": "Owner cannot be deleted before this object.",
            "type": "boolean",
        },
    },
}

OBJECT_META_SCHEMA: dict[str, Any] = {
    "description": "Standard object metadata.",
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": _string(
            "Object name (DNS-1123 subdomain).", maxLength=253, pattern=DNS_SUBDOMAIN_PATTERN
        ),
        "generateName": _string("Prefix for a server-generated name."),
        "namespace": _string(
            "Namespace (DNS-1123 label).", maxLength=63, pattern=DNS_LABEL_PATTERN
        ),
        "selfLink": _string("Deprecated self link (server-set)."),
        "uid": _string("Unique ID (server-set)."),
        "resourceVersion": _string("Version for optimistic concurrency (server-set)."),
        "generation": {
            "description": "Generation of the desired state (server-set).",
            "type": "integer",
            "minimum": 0,
        },
        "creationTimestamp": _string("Creation time (server-set).", format="date-time"),
        "deletionTimestamp": _string("Deletion request time (server-set).", format="date-time"),
        "deletionGracePeriodSeconds": {
            "description": "Grace period before deletion (server-set).",
            "type": "integer",
            "minimum": 0,
        },
        "labels": _string_map("Labels."),
        "annotations": _string_map("Annotations."),
        "ownerReferences": {
            "description": "Objects this one depends on.",
            "type": "array",
            "items": _OWNER_REFERENCE,
        },
        "finalizers": {
            "description": "Finalizers that must be removed before deletion.",
            "type": "array",
            "items": _string("One finalizer."),
        },
        "managedFields": {
            "description": "Server-side apply bookkeeping (kept as is).",
            "type": "array",
            "items": {
                "description": "One managed-fields entry.",
                "type": "object",
                "additionalProperties": {"description": "Any value."},
            },
        },
    },
}

SECRET_SCHEMA: dict[str, Any] = {
    "description": "A core/v1 Secret (the fields virtrigaud reads).",
    "type": "object",
    "properties": {
        "apiVersion": _string("Always v1."),
        "kind": _string("Always Secret."),
        "metadata": {"description": "Standard object metadata.", "type": "object"},
        "type": _string("Secret type.", default="Opaque"),
        "data": {
            "description": "Values, base64 encoded.",
            "type": "object",
            "propertyNames": {"pattern": DATA_KEY_PATTERN},
            "additionalProperties": _string("One base64 value.", format="byte"),
        },
        "stringData": {
            "description": "Values as plain text, merged over data on write.",
            "type": "object",
            "propertyNames": {"pattern": DATA_KEY_PATTERN},
            "additionalProperties": _string("One value."),
        },
        "immutable": {"description": "Whether the data can change.", "type": "boolean"},
    },
}
