"""Deterministic names: operation ids, object keys and URLs, snapshot and volume names.

Everything here is a pure function of the migration (namespace, name, uid, spec) and a
disk, so a restarted manager derives exactly the same names and the provider contract's
idempotency (same operation id -> same task) does the rest:

* operation id: ``<uid>/<attempt>/<step>/<target>`` (``<attempt>`` is the disk's attempt
  for export/import, ``status.retryAttempts + 1`` for migration-level steps, and
  ``cleanup-r<round>`` / ``finalize-r<round>`` for cleanup deletes, a round being a
  ``Settings.cleanup_retry_seconds`` window, so a failed delete is re-submitted as a new
  operation in the next window while a succeeded one is just re-read);
* object key: ``storage.keys.derive_key`` (``virtrigaud/<ns>/<name>-<uid8>/<disk>.<fmt>``)
  below ``spec.storage.prefix``; the same key on every attempt, so an interrupted S3
  upload is resumed by the next export and a corrupt object is overwritten;
* object URL (``StorageLocation.url``) and storage root (``options["base_url"]``) as
  ``providers/common/transfer.py`` expects them: ``s3://bucket/key``,
  ``<http endpoint>/key``, ``nfs://<path>/key``;
* snapshot name ``vmmig-<uid8>-<attempt>`` (cleanup finds every snapshot of this
  migration by the ``vmmig-<uid8>-`` prefix, including ones a lost task left behind);
* target volume name ``<targetName>-<disk>[-r<attempt>].<fmt>`` (a retried import gets a
  fresh name, because an import never overwrites an existing volume).
"""

from __future__ import annotations

from urllib.parse import quote

from manager.api import DiskFormat, MigrationStorage, StorageType, VMMigration
from storage.keys import derive_key, disk_slug, join_key
from virtrigaud.formats import FORMAT_NAMES
from virtrigaud.provider.v1 import provider_pb2 as pb

BACKENDS: dict[StorageType, int] = {
    StorageType.S3: pb.STORAGE_BACKEND_S3,
    StorageType.HTTP: pb.STORAGE_BACKEND_HTTP,
    StorageType.NFS: pb.STORAGE_BACKEND_NFS,
}
BACKEND_TYPES: dict[int, StorageType] = {value: key for key, value in BACKENDS.items()}
STORAGE_LABELS = {StorageType.S3: "S3", StorageType.HTTP: "HTTP", StorageType.NFS: "NFS"}


def uid8(migration: VMMigration) -> str:
    return (migration.metadata.uid or "").replace("-", "").lower()[:8]


def op_id(migration: VMMigration, attempt: int | str, step: str, target: str) -> str:
    return f"{migration.metadata.uid}/{attempt}/{step}/{disk_slug(target)}"


def format_name(value: int) -> str | None:
    """Contract DiskFormat -> name; None for UNSPECIFIED."""
    return FORMAT_NAMES.get(value)  # type: ignore[call-overload,no-any-return]


def api_format(name: str | None) -> DiskFormat | None:
    """A format name as the API's DiskFormat (None for formats the API cannot name)."""
    try:
        return DiskFormat(name) if name else None
    except ValueError:
        return None


def object_key(migration: VMMigration, disk: str, fmt: str) -> str:
    ns = migration.metadata.namespace or "default"
    key = derive_key(ns, migration.metadata.name, migration.metadata.uid or "", disk, fmt)
    return join_key(migration.spec.storage.prefix or "", key)


def probe_url(migration: VMMigration) -> str:
    """Where Validate's storage probe writes (and deletes) its small object."""
    return object_url(migration.spec.storage, object_key(migration, "storage-probe", "txt"))


def base_url(storage: MigrationStorage) -> str:
    """The storage root every object of the migration must stay under."""
    if storage.type is StorageType.S3:
        return f"s3://{storage.bucket}"
    if storage.type is StorageType.HTTP:
        return (storage.endpoint or "").rstrip("/")
    return "nfs://" + (storage.path or "").rstrip("/")


def object_url(storage: MigrationStorage, key: str) -> str:
    quoted = key if storage.type is StorageType.NFS else quote(key, safe="/")
    return f"{base_url(storage)}/{quoted}"


def folder_url(storage: MigrationStorage, key: str) -> str:
    """The URL of the folder holding ``key`` (ends with ``/``)."""
    return object_url(storage, key).rsplit("/", 1)[0] + "/"


def url_format(url: str) -> str:
    """The object format an object URL names (the key ends with ``.<fmt>``)."""
    return url.rsplit(".", 1)[-1]


def storage_location(
    storage: MigrationStorage, url: str, credentials: dict[str, str]
) -> pb.StorageLocation:
    """The contract StorageLocation of one object (credentials = the Secret's data)."""
    options = {"base_url": base_url(storage)}
    if storage.type is StorageType.S3:
        if storage.endpoint:
            options["endpoint"] = storage.endpoint
        if storage.region:
            options["region"] = storage.region
    return pb.StorageLocation(
        backend=BACKENDS[storage.type],  # type: ignore[arg-type]
        url=url,
        credentials=credentials,
        options=options,
    )


def snapshot_prefix(migration: VMMigration) -> str:
    return f"vmmig-{uid8(migration)}-"


def snapshot_name(migration: VMMigration, attempt: int) -> str:
    return f"{snapshot_prefix(migration)}{attempt}"


def volume_name(migration: VMMigration, disk: str, attempt: int, fmt: str | None) -> str:
    base = f"{migration.spec.target_name}-{disk_slug(disk)}"
    if attempt > 1:
        base += f"-r{attempt}"
    return f"{base}.{fmt}" if fmt else base
