"""Export and import between a local image and a contract ``StorageLocation``.

The one place where the provider contract meets the storage backends and the disk
pipeline, so every provider moves bytes the same way:

* ``StorageLocation.url`` is the full URL of one object (``s3://bucket/a/b.qcow2``,
  ``https://host/exports/b.qcow2``, ``nfs:///mnt/migrations/b.qcow2``).
  ``options["base_url"]``, when given, is the storage root the object must stay under
  (the bucket/prefix, HTTP endpoint or NFS path of the VMMigration); the key is the URL
  relative to it and goes through the storage key guard, so it cannot escape. Without
  it the root is the bucket (S3) or the object's parent directory (HTTP, NFS).
* ``credentials`` is the Secret's data (accessKey/secretKey/..., token or
  username/password); ``options`` carries ``endpoint``, ``region``, ``ca_file`` and
  ``insecure_skip_tls_verify``. Loopback and metadata endpoints are refused unless the
  provider's allow-list (``VIRTRIGAUD_STORAGE_ALLOWED_HOSTS``) permits them.
* S3 exports resume: an upload left behind by an interrupted export of the same key is
  found with ListParts and continued; bytes already stored are verified, not re-sent.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from providers.common import pipeline
from providers.runtime.tasks import Progress
from storage import BackendOptions, open_backend
from storage.base import Backend
from storage.keys import validate_key
from storage.netguard import AllowList
from virtrigaud import errors
from virtrigaud.formats import FORMAT_NAMES, FORMAT_VALUES
from virtrigaud.logging import get_logger
from virtrigaud.provider.v1 import provider_pb2 as pb

log = get_logger("virtrigaud.transfer")

_BACKEND_NAMES = {
    pb.STORAGE_BACKEND_S3: "s3",
    pb.STORAGE_BACKEND_HTTP: "http",
    pb.STORAGE_BACKEND_NFS: "nfs",
}


def format_name(value: pb.DiskFormat) -> str:
    """Contract DiskFormat -> qemu-img format name."""
    try:
        return FORMAT_NAMES[value]
    except KeyError:
        raise errors.InvalidArgument(f"disk format {value} is not a concrete format") from None


def _guess_format(key: str) -> str:
    """The format an object's name says (``disk.qcow2``); required when not given."""
    ext = key.rsplit(".", 1)[-1].lower() if "." in key else ""
    name = {"img": "raw", "vhd": "vpc"}.get(ext, ext)
    if name not in FORMAT_VALUES:
        raise errors.InvalidArgument(
            f"source_format: required, the object name {key!r} does not tell the format"
        )
    return name


@dataclass(frozen=True)
class ObjectRef:
    """Where one object is: the backend's root and the key under it."""

    backend_type: str
    root: str  # url_or_config for storage.open_backend
    key: str


def resolve(location: pb.StorageLocation) -> ObjectRef:
    """Split a location's object URL into (root, key) -- see the module docstring."""
    kind = _BACKEND_NAMES.get(location.backend)
    if kind is None:
        raise errors.InvalidArgument("destination.backend: must be s3, http or nfs")
    url = location.url
    scheme = urlsplit(url).scheme.lower()
    if (kind, scheme) not in {("s3", "s3"), ("http", "http"), ("http", "https"), ("nfs", "nfs")}:
        raise errors.InvalidArgument(f"url: {url!r} does not match backend {kind}")
    base = location.options.get("base_url", "").rstrip("/")
    if base:
        if not url.startswith(base + "/"):
            raise errors.InvalidArgument(f"url: {url!r} is not under the storage root {base!r}")
        ref = ObjectRef(kind, base, unquote(url[len(base) + 1 :]))
    elif kind == "s3":
        parts = urlsplit(url)
        ref = ObjectRef(kind, f"s3://{parts.netloc}", unquote(parts.path.lstrip("/")))
    else:
        parent, _, name = url.rpartition("/")
        ref = ObjectRef(kind, parent, unquote(name))
    validate_key(ref.key)  # refuse traversal before any backend is even opened
    return ref


# The backends this module (and so every provider using it) reaches.
STORAGE_BACKENDS = (pb.STORAGE_BACKEND_S3, pb.STORAGE_BACKEND_HTTP, pb.STORAGE_BACKEND_NFS)
# The object formats export_to_storage writes (the pipeline's; vmdk and qcow2 from a
# directly readable source are written in the stream).
EXPORT_FORMATS = (
    pb.DISK_FORMAT_QCOW2,
    pb.DISK_FORMAT_RAW,
    pb.DISK_FORMAT_VMDK,
    pb.DISK_FORMAT_VDI,
    pb.DISK_FORMAT_VPC,
    pb.DISK_FORMAT_VHDX,
)


def open_location(
    location: pb.StorageLocation, allowed_hosts: Iterable[str] = ()
) -> tuple[Backend, str]:
    """The backend holding the location's object, and the object's key."""
    ref = resolve(location)
    opts = location.options
    options = BackendOptions(
        ca_file=opts.get("ca_file") or None,
        insecure_skip_tls_verify=opts.get("insecure_skip_tls_verify", "") == "true",
    )
    root: str | dict[str, str] = ref.root
    if ref.backend_type == "s3":
        parts = urlsplit(ref.root)
        root = {
            "type": "s3",
            "bucket": parts.netloc,
            "prefix": parts.path.strip("/"),
            "region": opts.get("region", ""),
            "endpoint": opts.get("endpoint", ""),
        }
    backend = open_backend(
        ref.backend_type,
        root,
        dict(location.credentials),
        options,
        allowed_hosts=AllowList.parse(list(allowed_hosts)),
    )
    return backend, ref.key


def export_to_storage(
    src_path: str | os.PathLike[str],
    src_format: str,
    request: pb.ExportDiskRequest,
    ctx: Progress,
    *,
    allowed_hosts: Iterable[str] = (),
    scratch_dir: str | os.PathLike[str] | None = None,
    force_share: bool = False,
) -> pb.ExportResult:
    """Export a local image as the request's destination object."""
    target = format_name(request.target_format) if request.target_format else src_format
    backend, key = open_location(request.destination, allowed_hosts)
    with backend:
        resume = getattr(backend, "recover_state", lambda _key: None)(key)
        if resume is not None:
            log.info("export_resuming", key=key, parts=len(resume.parts))
        with backend.open_writer(key, resume=resume) as writer:
            outcome = pipeline.export_image(
                src_path,
                src_format,
                target,
                writer,
                compress=request.compress,
                scratch_dir=scratch_dir,
                progress=ctx.progress,
                on_stage=ctx.set_stage,
                cancel=ctx.cancel_event,
                force_share=force_share,
            )
    return pb.ExportResult(
        url=request.destination.url,
        format=FORMAT_VALUES[outcome.format],
        size_bytes=outcome.size,
        sha256=outcome.sha256,
        content_sha256=outcome.content_sha256,
        virtual_size_bytes=outcome.virtual_size,
        source_format=FORMAT_VALUES[src_format],
    )


def import_from_storage(
    request: pb.ImportDiskRequest,
    dest_path: str | os.PathLike[str],
    target_format: str,
    ctx: Progress,
    *,
    allowed_hosts: Iterable[str] = (),
    scratch_dir: str | os.PathLike[str] | None = None,
) -> pipeline.ImportOutcome:
    """Download, verify and convert the request's source object into ``dest_path``."""
    backend, key = open_location(request.source, allowed_hosts)
    with backend:
        info = backend.stat(key)
        expected = request.expected_sha256 or info.sha256
        if not expected:
            raise errors.FailedPrecondition(
                f"source.url: no expected_sha256 given and none stored with {key!r}; "
                "refusing to import unverified data"
            )
        src_format = (
            format_name(request.source_format) if request.source_format else _guess_format(key)
        )
        reader = backend.open_reader(key, expected_sha256=expected, expected_size=info.size)
        try:
            return pipeline.import_image(
                reader,
                src_format,
                target_format,
                dest_path,
                expected_sha256=expected,
                expected_content_sha256=request.expected_content_sha256 or None,
                size=info.size,
                scratch_dir=scratch_dir,
                progress=ctx.progress,
                on_stage=ctx.set_stage,
                cancel=ctx.cancel_event,
                durable=False,  # the caller copies it into the hypervisor's storage
            )
        finally:
            reader.close()


def delete_object(location: pb.StorageLocation, allowed_hosts: Iterable[str] = ()) -> None:
    """Delete the object and abort any unfinished upload of it (idempotent)."""
    backend, key = open_location(location, allowed_hosts)
    with backend:
        backend.delete(key)
        aborted = backend.abort_incomplete(key)
    log.info("object_deleted", key=key, aborted_uploads=aborted)
