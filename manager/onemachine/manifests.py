"""Reading manifest files and applying them to the store (``virtrigaud run -f``).

Every document of every ``*.yaml`` / ``*.yml`` file (a directory is read recursively,
in name order) is parsed and validated before anything is written, so one bad
manifest leaves the store untouched; its error names the file, the document and the
field. Applying is idempotent and never touches ``status``: a new object is created,
an existing one gets the manifest's spec (and its labels/annotations laid over the
stored ones) through ``update``, which leaves status alone and does not write at all
when nothing changed, so re-running the same directory resumes where it stopped.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

from manager.api import load_manifests
from manager.store.base import Obj, ObjectKey, ObjectStore
from manager.store.objects import spec_of
from virtrigaud import errors

# Secrets and Providers first: the later kinds refer to them.
APPLY_ORDER = {"Secret": 0, "Provider": 1, "VirtualMachine": 2, "VMMigration": 3}
SUFFIXES = (".yaml", ".yml")
ATTEMPTS = 5


def manifest_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
        if not files:
            raise errors.InvalidArgument(f"{path}: no *.yaml or *.yml manifests in it")
        return files
    if path.is_file():
        return [path]
    raise errors.NotFound(f"{path}: no such file or directory")


def read_manifests(path: Path) -> list[Obj]:
    """Every manifest under ``path``, validated, in apply order."""
    found: list[Obj] = []
    seen: dict[ObjectKey, Path] = {}
    for file in manifest_files(path):
        try:
            parsed = load_manifests(file)
        except errors.ValidationError as exc:
            raise errors.ValidationError(exc.field, f"{file}: {exc.reason}") from exc
        for manifest in parsed:
            obj = manifest.to_dict()
            obj["metadata"].setdefault("namespace", "default")
            key = ObjectKey.of(obj)
            if key in seen:
                raise errors.ValidationError(
                    "metadata.name", f"{file}: {key} is also defined in {seen[key]}"
                )
            seen[key] = file
            found.append(obj)
    return sorted(found, key=lambda obj: APPLY_ORDER.get(obj["kind"], 99))


def merged(existing: Obj, manifest: Obj) -> Obj:
    """``existing`` with the manifest's spec and its labels/annotations laid over."""
    out = {k: copy.deepcopy(v) for k, v in existing.items() if k not in spec_of(existing)}
    out.update(spec_of(manifest))
    meta = out["metadata"]
    for part in ("labels", "annotations"):
        values = {**(meta.get(part) or {}), **(manifest["metadata"].get(part) or {})}
        if values:
            meta[part] = values
    return out


@dataclass
class Applied:
    created: list[ObjectKey] = field(default_factory=list)
    updated: list[ObjectKey] = field(default_factory=list)
    unchanged: list[ObjectKey] = field(default_factory=list)


def apply(store: ObjectStore, manifests: list[Obj]) -> Applied:
    applied = Applied()
    for manifest in manifests:
        key = ObjectKey.of(manifest)
        for _ in range(ATTEMPTS):
            try:
                _apply_one(store, key, manifest, applied)
                break
            except (errors.Conflict, errors.AlreadyExists):
                continue  # someone wrote meanwhile: read again
        else:
            raise errors.Conflict(f"{key}: kept changing while it was applied")
    return applied


def _apply_one(store: ObjectStore, key: ObjectKey, manifest: Obj, applied: Applied) -> None:
    try:
        existing = store.get(key.kind, key.namespace, key.name)
    except errors.NotFound:
        store.create(copy.deepcopy(manifest))
        applied.created.append(key)
        return
    written = store.update(merged(existing, manifest))
    same = written["metadata"]["resourceVersion"] == existing["metadata"]["resourceVersion"]
    (applied.unchanged if same else applied.updated).append(key)
