"""Extract the YAML examples of the spec documents at test time.

The four documents live in ``docs/spec/`` of this repository (override with
``$VIRTRIGAUD_SPEC_DIR``).
Every fenced ``yaml`` block is parsed and put in exactly one category:

* ``manifest``  a complete object of a kind this package parses;
* ``foreign``   a complete object of another API (RBAC Role, the Harvester import-job
  design's ``importjob.harvesterhci.io/v1`` VirtualMachine ...): it must be rejected;
* ``skeleton``  the reference's outline whose spec/status are only comments: its metadata
  is embedded into a minimal valid VMMigration;
* ``fragment``  part of an object (a bare ``storage:`` block, a ``status:`` excerpt, a
  ``metadata:`` excerpt, a ``spec:`` excerpt): embedded into a minimal valid
  VMMigration or VirtualMachine, as described by ``embed``.

A block fitting no category is returned as ``unknown`` so that a test fails on it.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from manager.api.loader import KINDS
from manager.api.schema import describe, validator_for

_REPO = Path(__file__).resolve().parents[3]

SPEC_DOCUMENTS = (
    "vmmigration-api-reference.md",
    "migration-user-guide.md",
    "imported-disk-design.md",
    "vm-import-controller-design.md",
)
API = "infra.virtrigaud.io/v1beta1"
_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<info>\S*)\s*$")

MINIMAL_MIGRATION: dict[str, Any] = {
    "apiVersion": API,
    "kind": "VMMigration",
    "metadata": {"name": "fragment-host", "namespace": "default"},
    "spec": {
        "sourceName": "source-vm",
        "sourceNamespace": "default",
        "targetProviderRef": {"name": "target-provider"},
        "targetName": "target-vm",
        "storage": {"type": "nfs", "path": "/exports"},
    },
}
MINIMAL_VM: dict[str, Any] = {
    "apiVersion": API,
    "kind": "VirtualMachine",
    "metadata": {"name": "fragment-host", "namespace": "default"},
    "spec": {"providerRef": {"name": "libvirt"}},
}
_BOOT_SOURCES = ("imageRef", "importedDisk", "vmId")


@dataclass(frozen=True)
class Example:
    document: str
    line: int
    language: str
    text: str

    @property
    def label(self) -> str:
        return f"{self.document}:{self.line}"


@dataclass(frozen=True)
class Classified:
    example: Example
    category: str  # manifest | foreign | skeleton | fragment | unknown
    doc: Any
    manifest: dict[str, Any] | None  # what to validate (embedded for fragments)


def spec_dir() -> Path:
    return Path(os.environ.get("VIRTRIGAUD_SPEC_DIR", str(_REPO / "docs" / "spec")))


def fences(document: str) -> list[Example]:
    """Every fenced code block of a markdown document (indented fences included)."""
    lines = (spec_dir() / document).read_text(encoding="utf-8").splitlines()
    out: list[Example] = []
    start: int | None = None
    indent, info = "", ""
    body: list[str] = []
    for number, line in enumerate(lines, start=1):
        match = _FENCE.match(line)
        if start is None and match:
            start, indent, info, body = number, match["indent"], match["info"], []
        elif start is not None and match and match["indent"] == indent and not match["info"]:
            text = "\n".join(b[len(indent) :] if b.startswith(indent) else b for b in body)
            out.append(Example(document, start, info, text + "\n"))
            start = None
        elif start is not None:
            body.append(line)
    assert start is None, f"{document}:{start}: unterminated code fence"
    return out


def yaml_examples() -> list[Example]:
    return [
        example
        for document in SPEC_DOCUMENTS
        for example in fences(document)
        if example.language.rstrip(":").lower() in ("yaml", "yml")
    ]


def _field_names(kind: str, prefix: str) -> set[str]:
    paths = describe(validator_for(kind).openapi)
    return {p.split(".")[1] for p in paths if p.startswith(prefix + ".") and p.count(".") == 1}


def embed(doc: dict[str, Any]) -> dict[str, Any] | None:
    """A complete manifest holding the fragment ``doc``, or None if it fits nowhere."""
    migration_spec = _field_names("VMMigration", "spec")
    vm_spec = _field_names("VirtualMachine", "spec")
    keys = set(doc)
    if keys == {"spec"} and isinstance(doc["spec"], dict):
        if set(doc["spec"]) <= migration_spec:
            return _merged(MINIMAL_MIGRATION, spec=doc["spec"])
        if set(doc["spec"]) <= vm_spec:
            spec = dict(doc["spec"])
            if not any(key in spec for key in _BOOT_SOURCES):
                spec["imageRef"] = {"name": "fragment-image"}
            return _merged(MINIMAL_VM, spec=spec)
    if keys == {"status"}:
        return {**copy.deepcopy(MINIMAL_MIGRATION), "status": doc["status"]}
    if keys == {"metadata"}:
        return _merged(MINIMAL_MIGRATION, metadata=doc["metadata"])
    if keys <= migration_spec:
        return _merged(MINIMAL_MIGRATION, spec=doc)
    return None


def _merged(base: dict[str, Any], **parts: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in parts.items():
        out[key] = {**out[key], **copy.deepcopy(value)}
    return out


def classify(example: Example) -> list[Classified]:
    out = []
    for doc in yaml.safe_load_all(example.text):
        out.append(_classify_doc(example, doc))
    return out


def _classify_doc(example: Example, doc: Any) -> Classified:
    if not isinstance(doc, dict):
        return Classified(example, "unknown", doc, None)
    if "apiVersion" in doc and "kind" in doc:
        if (doc["apiVersion"], doc["kind"]) not in KINDS:
            return Classified(example, "foreign", doc, None)
        if "spec" in doc and doc["spec"] is None and doc.get("status", 0) is None:
            # the outline: spec and status hold only comments
            body = _merged(MINIMAL_MIGRATION, metadata=doc["metadata"])
            return Classified(example, "skeleton", doc, body)
        return Classified(example, "manifest", doc, doc)
    manifest = embed(doc)
    return Classified(example, "unknown" if manifest is None else "fragment", doc, manifest)


def all_classified() -> list[Classified]:
    return [item for example in yaml_examples() for item in classify(example)]
