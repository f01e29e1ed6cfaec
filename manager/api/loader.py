"""Multi-document YAML -> API objects, dispatching on apiVersion and kind."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from manager.api.provider import Provider
from manager.api.secret import Secret
from manager.api.virtualmachine import VirtualMachine
from manager.api.vmmigration import VMMigration
from virtrigaud.errors import ValidationError

Manifest = VMMigration | VirtualMachine | Provider | Secret

KINDS: dict[tuple[str, str], Callable[[Mapping[str, Any]], Manifest]] = {
    (cls.API_VERSION, cls.KIND): cls.from_dict
    for cls in (VMMigration, VirtualMachine, Provider, Secret)
}


def kind_of(
    obj: Mapping[str, Any], known: Iterable[tuple[str, str]] | None = None
) -> tuple[str, str]:
    """(apiVersion, kind) of a manifest if it is one of ``known`` (default: the kinds this
    package parses); otherwise ValidationError naming ``apiVersion`` or ``kind``."""
    pairs = set(KINDS if known is None else known)
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if api_version is None:
        raise ValidationError("apiVersion", "required field is missing")
    if kind is None:
        raise ValidationError("kind", "required field is missing")
    versions = sorted({version for version, _ in pairs})
    if api_version not in versions:
        raise ValidationError(
            "apiVersion", f"unknown apiVersion {api_version!r}: expected one of {versions}"
        )
    if (api_version, kind) not in pairs:
        kinds = sorted(k for v, k in pairs if v == api_version)
        raise ValidationError("kind", f"unknown kind {kind!r} for {api_version}: expected {kinds}")
    return api_version, kind


def parse_manifest(obj: Any) -> Manifest:
    """One manifest dict -> its API object."""
    if not isinstance(obj, Mapping):
        raise ValidationError("", f"a manifest must be a mapping, not {type(obj).__name__}")
    return KINDS[kind_of(obj)](obj)


def _documents(text_or_path: str | os.PathLike[str]) -> Iterator[Any]:
    if isinstance(text_or_path, os.PathLike) or (
        "\n" not in text_or_path and text_or_path.endswith((".yaml", ".yml"))
    ):
        text = Path(text_or_path).read_text(encoding="utf-8")
    else:
        text = text_or_path
    for document in yaml.safe_load_all(text):
        if document is None:
            continue
        if isinstance(document, Mapping) and document.get("kind") == "List":
            yield from document.get("items") or []
        else:
            yield document


def load_manifests(text_or_path: str | os.PathLike[str]) -> list[Manifest]:
    """Parse every document of a YAML stream (a ``Path``, a ``*.yaml`` file name, or the
    YAML text itself). Empty documents are skipped and ``kind: List`` is expanded. A
    document that fails raises ValidationError with its position in the message.
    """
    try:
        documents = list(_documents(text_or_path))
    except yaml.YAMLError as exc:
        raise ValidationError("", f"invalid YAML: {exc}") from exc
    out = []
    for index, document in enumerate(documents):
        try:
            out.append(parse_manifest(document))
        except ValidationError as exc:
            name = document.get("metadata", {}) if isinstance(document, Mapping) else {}
            label = name.get("name") if isinstance(name, Mapping) else None
            where = f"document {index}" + (f" ({label})" if label else "")
            raise ValidationError(exc.field, f"{where}: {exc.reason}") from exc
    return out
