"""The Proxmox VE provider driver: contract messages <-> the proxmox package.

Control goes through the PVE API (``api.PveApi``, proxmoxer); disk data goes through
the node (``node.SshNode`` over SSH with paramiko, or ``node.LocalNode``) with
qemu-img, because the API offers no disk download or upload.

Endpoint: the API URL, ``https://pve.example:8006``.

Secret keys (``ProviderConfig.credentials``):

* API: ``tokenId`` (``user@realm!tokenname``) + ``tokenSecret`` -- an API token, the
  recommended way -- or ``username`` (``user@realm``; ``@pam`` is added when missing)
  + ``password`` (ticket login);
* node over SSH: ``sshUser`` (default ``root``), ``sshPrivateKey`` (OpenSSH / PEM
  text), optional ``sshPrivateKeyPassphrase``, and ``knownHosts`` (known_hosts lines
  for the node; required -- host keys are always verified, never trusted on first
  use). With ``nodeAccess=local`` no SSH key is needed.

Provider options (``ProviderConfig.options``):

* ``node`` -- the PVE node this provider serves (default: the only node of the
  cluster; required when there are several);
* ``sshHost`` / ``sshPort`` -- where the node's sshd listens (default: the API host,
  port 22);
* ``nodeAccess`` -- ``ssh`` (default) or ``local`` (the provider runs on the node);
* ``verifyTls`` -- ``true`` (default) / ``false``; ``caFile`` -- CA bundle for the API
  certificate (PVE's own CA is ``/etc/pve/pve-root-ca.pem`` on the node);
* ``storage`` -- storage for new disks and imports without a storage hint
  (default ``local-lvm``); ``importStorage`` -- file storage with content ``import``
  that receives ImportDisk's images (default: the target storage);
* ``nodeScratchDir`` -- node directory for the temporary copy an export makes
  (default ``/var/tmp``); ``scratchDir`` / ``scratchLimit`` -- the provider's local
  scratch directory and its budget (``K``/``M``/``G``/``T``);
* ``removeImportedAfterCreate`` -- ``true`` deletes import volumes as soon as CreateVM
  copied them into the VM (saves the space of a second copy; the VM can then no
  longer be deleted with ``delete_disks=false``). Default ``false``: they stay until
  DeleteVM with ``delete_disks=true`` or DeleteDisk after the VM is gone;
* ``apiTimeout`` -- seconds per API request (default 30).
"""

from __future__ import annotations

import os
import threading

from providers.common import checks as common_checks
from providers.common import transfer
from providers.common.scratch import scratch_options
from providers.proxmox import checks, exports, imports, inventory, lifecycle, snapshots
from providers.proxmox.api import Credentials, Endpoint, PveApi
from providers.proxmox.node import LocalNode, NodeAccess, SshNode, SshSettings
from providers.proxmox.site import ScratchSettings, Settings, Site
from providers.runtime.driver import ProviderConfig, ProviderDriver
from providers.runtime.tasks import TaskContext
from virtrigaud import __version__, errors
from virtrigaud.logging import get_logger
from virtrigaud.provider.v1 import provider_pb2 as pb

log = get_logger("virtrigaud.proxmox")

ACTIONS = {
    pb.POWER_ACTION_ON: "on",
    pb.POWER_ACTION_OFF: "off",
    pb.POWER_ACTION_SHUTDOWN: "shutdown",
    pb.POWER_ACTION_REBOOT: "reboot",
}
FEATURES = (
    pb.FEATURE_SNAPSHOTS,
    pb.FEATURE_LIVE_EXPORT,  # qcow2 disks on file storages, RBD
    pb.FEATURE_IMAGE_CLONE,
    pb.FEATURE_IMPORTED_DISKS,
    pb.FEATURE_SPARSE_EXPORT,  # the node copy holds only allocated clusters
    pb.FEATURE_RESUMABLE_TRANSFER,  # S3 uploads continue from the parts already stored
    pb.FEATURE_CONTENT_DIGEST,
    pb.FEATURE_UEFI,
    pb.FEATURE_GRACEFUL_SHUTDOWN,
)
EXPORT_FORMATS = transfer.EXPORT_FORMATS
IMPORT_FORMATS = (pb.DISK_FORMAT_QCOW2, pb.DISK_FORMAT_RAW)


class ProxmoxDriver(ProviderDriver):
    provider_type = "proxmox"

    def __init__(self, site: Site) -> None:
        self.site = site
        self._importing = imports.InFlight()
        self._version_text = ""
        self._lock = threading.Lock()

    # -- quick calls ---------------------------------------------------------------

    def capabilities(self) -> pb.Capabilities:
        with self._lock:
            if not self._version_text:
                try:
                    self._version_text = f"Proxmox VE {self.site.api.version()[2]}"
                except errors.VirtrigaudError as exc:  # capabilities never fail for the host
                    log.info("capabilities_without_host", error=exc.message)
        return pb.Capabilities(
            provider_type=self.provider_type,
            provider_version=__version__,
            hypervisor_version=self._version_text,
            export_formats=EXPORT_FORMATS,
            import_formats=IMPORT_FORMATS,
            native_format=pb.DISK_FORMAT_QCOW2,
            storage_backends=transfer.STORAGE_BACKENDS,
            features=FEATURES,
        )

    def validate(self, request: pb.ValidateRequest) -> pb.ValidateResponse:
        results = checks.validate(self.site, request.storage_hint, list(request.networks))
        return common_checks.response(results)

    def list_vms(self, name_filter: str) -> list[pb.VM]:
        return inventory.list_vms(self.site, name_filter)

    def describe_vm(self, vm_id: str) -> pb.VM:
        return inventory.describe_vm(self.site, vm_id)

    # -- tasks ---------------------------------------------------------------------

    def create_vm(self, request: pb.CreateVMRequest, ctx: TaskContext) -> pb.CreateVMResult:
        return pb.CreateVMResult(vm_id=lifecycle.create_vm(self.site, request, ctx))

    def delete_vm(self, request: pb.DeleteVMRequest, ctx: TaskContext) -> None:
        lifecycle.delete_vm(self.site, request.vm_id, request.delete_disks, ctx)

    def power(self, request: pb.PowerRequest, ctx: TaskContext) -> None:
        lifecycle.power(
            self.site, request.vm_id, ACTIONS[request.action], request.graceful_timeout_seconds, ctx
        )

    def create_snapshot(
        self, request: pb.CreateSnapshotRequest, ctx: TaskContext
    ) -> pb.SnapshotResult:
        snap = snapshots.create_snapshot(
            self.site,
            request.vm_id,
            request.name,
            request.description,
            request.operation_id,
            include_memory=request.include_memory,
            ctx=ctx,
        )
        return pb.SnapshotResult(snapshot_id=snap)

    def delete_snapshot(self, request: pb.DeleteSnapshotRequest, ctx: TaskContext) -> None:
        snapshots.delete_snapshot(self.site, request.vm_id, request.snapshot_id, ctx)

    def export_disk(self, request: pb.ExportDiskRequest, ctx: TaskContext) -> pb.ExportResult:
        return exports.export_disk(
            self.site, request, ctx, allowed_hosts=self.storage_allowed_hosts
        )

    def import_disk(self, request: pb.ImportDiskRequest, ctx: TaskContext) -> pb.ImportResult:
        return imports.import_disk(
            self.site,
            request,
            ctx,
            in_flight=self._importing,
            allowed_hosts=self.storage_allowed_hosts,
        )

    def delete_disk(self, request: pb.DeleteDiskRequest, ctx: TaskContext) -> None:
        imports.delete_disk(self.site, request.disk_id, ctx)

    def close(self) -> None:
        self.site.access.close()


# -- configuration ---------------------------------------------------------------------


def _flag(options: dict[str, str], key: str, default: bool) -> bool:
    value = options.get(key, "").strip().lower()
    if not value:
        return default
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise errors.InvalidArgument(f"{key}: {value!r} is not true or false")


def settings_from(options: dict[str, str]) -> Settings:
    directory, limit = scratch_options(options)
    node_scratch = options.get("nodeScratchDir", "/var/tmp")  # noqa: S108 - on the node.rstrip("/") or "/"
    if not node_scratch.startswith("/"):
        raise errors.InvalidArgument("nodeScratchDir: must be an absolute path on the node")
    return Settings(
        default_storage=options.get("storage", "local-lvm"),
        import_storage=options.get("importStorage", ""),
        node_scratch=node_scratch,
        scratch=ScratchSettings(directory, limit),
        remove_imported=_flag(options, "removeImportedAfterCreate", False),
    )


def node_access(
    options: dict[str, str], credentials: dict[str, str], endpoint: Endpoint
) -> NodeAccess:
    mode = options.get("nodeAccess", "ssh")
    if mode == "local":
        return LocalNode()
    if mode != "ssh":
        raise errors.InvalidArgument(f"nodeAccess: {mode!r} is not ssh or local")
    try:
        port = int(options.get("sshPort", "22"))
    except ValueError:
        raise errors.InvalidArgument("sshPort: must be a port number") from None
    return SshNode(
        SshSettings(
            host=options.get("sshHost") or endpoint.host,
            port=port,
            user=credentials.get("sshUser", "root"),
            private_key=credentials.get("sshPrivateKey", ""),
            key_passphrase=credentials.get("sshPrivateKeyPassphrase", ""),
            known_hosts=credentials.get("knownHosts", ""),
        )
    )


def _node_name(api: PveApi, configured: str) -> str:
    if configured:
        return configured
    nodes = [str(n.get("node")) for n in api.get("nodes")]
    if len(nodes) != 1:
        raise errors.InvalidArgument(
            f"node: required, the cluster has {len(nodes)} nodes ({', '.join(sorted(nodes))})"
        )
    return nodes[0]


def create(config: ProviderConfig) -> ProxmoxDriver:
    """Factory registered as provider type ``proxmox``."""
    options = dict(config.options)
    credentials = dict(config.credentials)
    endpoint = Endpoint.parse(config.endpoint)
    verify: bool | str = _flag(options, "verifyTls", True)
    if options.get("caFile"):
        if not os.path.isfile(options["caFile"]):
            raise errors.InvalidArgument(f"caFile: {options['caFile']!r} is not a file")
        verify = options["caFile"] if verify else False
    try:
        timeout = float(options.get("apiTimeout", "30"))
    except ValueError:
        raise errors.InvalidArgument("apiTimeout: must be a number of seconds") from None
    api = PveApi(endpoint, Credentials.from_secret(credentials), verify=verify, timeout=timeout)
    access = node_access(options, credentials, endpoint)
    node = _node_name(api, options.get("node", ""))
    driver = ProxmoxDriver(Site(api, node, access, settings_from(options)))
    driver.storage_allowed_hosts = tuple(config.allowed_storage_hosts)
    return driver
