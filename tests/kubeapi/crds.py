"""What the API server does with a custom resource because its CRD is installed: prune
the fields the structural schema does not know, apply the schema's defaults, validate
(``422 Invalid`` with the field in ``details.causes``).

The CRDs are the project's own (``config/crd/bases``), read through
``manager.api.schema``. Pruned field paths are recorded, so a test can assert that the
controllers never write a field a real cluster would silently drop.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from manager.api.schema import SchemaValidator, validator_for

CRD_KINDS = ("Provider", "VirtualMachine", "VMMigration")


def _prune(schema: Mapping[str, Any], value: Any, path: str, pruned: list[str]) -> Any:
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        keep_all = schema.get("x-kubernetes-preserve-unknown-fields") or props is None
        out = {}
        for key, item in value.items():
            sub = (props or {}).get(key)
            if sub is None and isinstance(extra, Mapping):
                sub = extra
            if sub is None and not keep_all and extra is not True:
                pruned.append(f"{path}.{key}" if path else key)
                continue
            out[key] = _prune(sub or {}, item, f"{path}.{key}" if path else key, pruned)
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [
            _prune(schema["items"], item, f"{path}[{i}]", pruned) for i, item in enumerate(value)
        ]
    return value


class CRDs:
    """Admission of our custom resources (kinds of ``CRD_KINDS``)."""

    def __init__(self) -> None:
        self.validators: dict[str, SchemaValidator] = {k: validator_for(k) for k in CRD_KINDS}
        self.pruned: list[str] = []  # "<Kind>/<ns>/<name>: <field path>"

    def admit(self, obj: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        """(the pruned + defaulted object, [(field, message)] of validation errors)."""
        validator = self.validators.get(str(obj.get("kind")))
        if validator is None:
            return obj, []
        body = {k: v for k, v in obj.items() if k != "metadata"}
        dropped: list[str] = []
        pruned = _prune(validator.openapi, body, "", dropped)
        pruned["metadata"] = copy.deepcopy(obj.get("metadata") or {})
        meta = pruned["metadata"]
        where = f"{obj.get('kind')}/{meta.get('namespace')}/{meta.get('name')}"
        self.pruned += [f"{where}: {field}" for field in dropped]
        defaulted = validator.default(pruned)
        problems = [(e.field, e.reason) for e in validator.errors(defaulted, defaults=False)]
        return defaulted, problems
