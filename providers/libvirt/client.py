"""The libvirt client: the only module of virtrigaud that imports ``libvirt``.

Everything else in this package works with plain values (UUID strings, XML text,
the dataclasses of ``domxml``/``volxml``/``snapxml``); libvirt objects never leave
this module. ``libvirtError`` is translated in exactly one place, ``translate``, by
error code (table below); a connection-level failure becomes ``Unavailable`` naming
the URI, and the connection is re-opened on the next call.

Connection: the Provider endpoint is a libvirt URI (``qemu:///system``,
``qemu+ssh://user@host/system``, ``qemu+tls://host/system``, ``test:///default``).
Credentials (optional): ``username``/``password`` answer libvirt's auth callback
(SASL, TLS with SASL), ``sshPrivateKey`` is written to a private temporary file
passed as the URI's ``keyfile`` parameter. Opening is bounded by ``connect_timeout``
(a thread waits for ``virConnectOpen``, which has no timeout of its own), and a
keepalive (``interval`` x ``count`` seconds, driven by libvirt's default event loop
running in a daemon thread) closes connections to hosts that stopped answering, so
no call hangs forever.

Inventory is fetched in bulk (see ``list_domains``/``volume_index``): a constant
number of calls plus one ``XMLDesc`` per domain, whatever the number of disks.

Volume streams (``download_volume``/``upload_volume``) use virStorageVolDownload /
virStorageVolUpload with sparse streams, so they work on remote hosts and move only
allocated data; they are what ExportDisk/ImportDisk build on (``volfiles``).
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import libvirt

from providers.libvirt import volxml
from providers.libvirt.names import check_safe, check_uuid
from virtrigaud import errors
from virtrigaud.logging import get_logger

log = get_logger("virtrigaud.libvirt")

CHUNK = 1 << 20
Opener = Callable[[str, Mapping[str, str]], Any]  # (uri, credentials) -> virConnect


def _ignore_libvirt_error(_ctx: object, _err: object) -> None:
    """libvirt prints every error on stderr by default; we raise them instead."""


libvirt.registerErrorHandler(_ignore_libvirt_error, None)

# -- error translation (the one place) ------------------------------------------------

_NOT_FOUND = {
    libvirt.VIR_ERR_NO_DOMAIN,
    libvirt.VIR_ERR_NO_STORAGE_POOL,
    libvirt.VIR_ERR_NO_STORAGE_VOL,
    libvirt.VIR_ERR_NO_NETWORK,
    libvirt.VIR_ERR_NO_INTERFACE,
    libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT,
    libvirt.VIR_ERR_NO_SECRET,
    libvirt.VIR_ERR_NO_NODE_DEVICE,
}
_CODE_TO_ERROR: dict[int, type[errors.VirtrigaudError]] = {
    **dict.fromkeys(_NOT_FOUND, errors.NotFound),
    libvirt.VIR_ERR_STORAGE_VOL_EXIST: errors.AlreadyExists,
    libvirt.VIR_ERR_DOM_EXIST: errors.AlreadyExists,
    libvirt.VIR_ERR_NETWORK_EXIST: errors.AlreadyExists,
    libvirt.VIR_ERR_AUTH_FAILED: errors.AuthenticationError,
    libvirt.VIR_ERR_AUTH_CANCELLED: errors.AuthenticationError,
    libvirt.VIR_ERR_AUTH_UNAVAILABLE: errors.AuthenticationError,
    libvirt.VIR_ERR_ACCESS_DENIED: errors.PermissionDenied,
    libvirt.VIR_ERR_OPERATION_INVALID: errors.FailedPrecondition,
    libvirt.VIR_ERR_NO_SUPPORT: errors.Unsupported,
    libvirt.VIR_ERR_OPERATION_UNSUPPORTED: errors.Unsupported,
    libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED: errors.Unsupported,
    libvirt.VIR_ERR_CONFIG_UNSUPPORTED: errors.Unsupported,
    libvirt.VIR_ERR_INVALID_ARG: errors.InvalidArgument,
    libvirt.VIR_ERR_XML_ERROR: errors.InvalidArgument,
    libvirt.VIR_ERR_XML_DETAIL: errors.InvalidArgument,
    libvirt.VIR_ERR_OPERATION_TIMEOUT: errors.Timeout,
    libvirt.VIR_ERR_AGENT_UNRESPONSIVE: errors.Timeout,
    libvirt.VIR_ERR_RESOURCE_BUSY: errors.Conflict,
    libvirt.VIR_ERR_OPERATION_ABORTED: errors.Cancelled,
}
# Codes that mean the connection itself is gone or was never made.
_CONNECTION_CODES = {libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INVALID_CONN, libvirt.VIR_ERR_RPC}
_CONNECTION_DOMAINS = {libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE}


def translate(exc: libvirt.libvirtError, what: str, uri: str) -> errors.VirtrigaudError:
    """The virtrigaud error for a libvirt error raised while doing ``what``."""
    code = exc.get_error_code()
    message = exc.get_error_message() or str(exc)
    if code in _CONNECTION_CODES or (
        exc.get_error_domain() in _CONNECTION_DOMAINS
        and code in (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_INTERNAL_ERROR)
    ):
        return errors.Unavailable(f"libvirt at {uri} is not reachable ({what}): {message}")
    if code == libvirt.VIR_ERR_SYSTEM_ERROR and exc.get_int1() == errno.ENOSPC:
        return errors.OutOfSpace(f"{what}: {message}")
    if code == libvirt.VIR_ERR_OPERATION_FAILED and "already exists" in message:
        return errors.AlreadyExists(f"{what}: {message}")
    cls = _CODE_TO_ERROR.get(code, errors.InternalError)
    return cls(f"{what}: {message}")


def _absent(code: int, call: Callable[..., Any], *args: Any) -> Any:
    """``call(*args)``, or None when libvirt answers that the looked-up object
    (``code``: VIR_ERR_NO_DOMAIN, ..._NO_STORAGE_VOL, ...) does not exist. Every other
    error propagates to ``LibvirtClient.calls`` and ``translate``."""
    try:
        return call(*args)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == code:
            return None
        raise


# -- records returned to the rest of the package -------------------------------------

_STATE_NAMES = {
    libvirt.VIR_DOMAIN_NOSTATE: "nostate",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "running",  # running, waiting on a resource
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "running",  # shutdown in progress: still running
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "shutoff",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "pmsuspended",
}


@dataclass(frozen=True)
class DomainRecord:
    uuid: str
    name: str
    state: str  # running | paused | pmsuspended | shutoff | nostate
    xml: str
    has_snapshots: bool


@dataclass(frozen=True)
class PoolRecord:
    name: str
    type: str
    path: str
    active: bool


@dataclass(frozen=True)
class Hole:
    """A run of zeros in an upload stream that is not sent as bytes."""

    length: int


@dataclass(frozen=True)
class TransferStats:
    data_bytes: int  # bytes that travelled as data
    hole_bytes: int  # bytes reported as holes (zeros never sent)

    @property
    def total(self) -> int:
        return self.data_bytes + self.hole_bytes


# -- the event loop that drives keepalives --------------------------------------------

_event_loop_lock = threading.Lock()
_event_loop_started = False


def _ensure_event_loop() -> None:
    """libvirt keepalives need an event loop; run the default one in a daemon thread."""
    global _event_loop_started  # noqa: PLW0603 - one loop per process
    with _event_loop_lock:
        if _event_loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


def with_uri_params(uri: str, params: Mapping[str, str]) -> str:
    """``uri`` with query parameters added (values are URL-encoded)."""
    parts = urlsplit(uri)
    query = [*parse_qsl(parts.query, keep_blank_values=True), *params.items()]
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


def open_connection(uri: str, credentials: Mapping[str, str]) -> Any:
    """``virConnectOpenAuth`` answering username/password prompts from ``credentials``."""
    username, password = credentials.get("username"), credentials.get("password")
    if username is None and password is None:
        return libvirt.open(uri)

    def answer(creds: list[list[Any]], _opaque: object) -> int:
        for cred in creds:
            if cred[0] == libvirt.VIR_CRED_AUTHNAME and username is not None:
                cred[4] = username
            elif cred[0] == libvirt.VIR_CRED_PASSPHRASE and password is not None:
                cred[4] = password
            else:
                return -1
        return 0

    auth = [[libvirt.VIR_CRED_AUTHNAME, libvirt.VIR_CRED_PASSPHRASE], answer, None]
    return libvirt.openAuth(uri, auth, 0)


class LibvirtClient:
    """One (re-opened as needed) connection to one libvirt URI."""

    def __init__(
        self,
        uri: str,
        credentials: Mapping[str, str] | None = None,
        *,
        connect_timeout: float = 15.0,
        keepalive: tuple[int, int] = (5, 3),
        opener: Opener = open_connection,
    ) -> None:
        self.uri = uri
        self._credentials = dict(credentials or {})
        self._connect_timeout = connect_timeout
        self._keepalive = keepalive
        self._opener = opener
        self._lock = threading.Lock()
        self._conn: Any = None
        self._keyfile: str | None = None

    # -- connection -----------------------------------------------------------------

    def _effective_uri(self) -> str:
        key = self._credentials.get("sshPrivateKey")
        if not key or "ssh" not in urlsplit(self.uri).scheme:
            return self.uri
        if self._keyfile is None:
            fd, self._keyfile = tempfile.mkstemp(prefix="virtrigaud-ssh-")
            with os.fdopen(fd, "w") as handle:  # mkstemp creates it 0600
                handle.write(key if key.endswith("\n") else key + "\n")
        return with_uri_params(self.uri, {"keyfile": self._keyfile})

    def _open(self) -> Any:
        uri = self._effective_uri()
        _ensure_event_loop()
        result: dict[str, Any] = {}
        done = threading.Event()
        handoff = threading.Lock()

        def attempt() -> None:
            try:
                result["conn"] = self._opener(uri, self._credentials)
            except Exception as exc:  # handed to the waiting thread
                result["error"] = exc
            with handoff:
                if not result.get("abandoned"):
                    done.set()
                    return
            if "conn" in result:  # answered after the caller gave up: nobody will use it
                with contextlib.suppress(Exception):
                    result["conn"].close()

        threading.Thread(target=attempt, name="libvirt-open", daemon=True).start()
        done.wait(self._connect_timeout)
        with handoff:
            if not done.is_set():
                result["abandoned"] = True
                raise errors.Unavailable(
                    f"libvirt at {self.uri} did not answer within {self._connect_timeout:g}s"
                )
        error = result.get("error")
        if isinstance(error, libvirt.libvirtError):
            raise translate(error, "connect", self.uri)
        if error is not None:
            raise error
        conn = result["conn"]
        with contextlib.suppress(libvirt.libvirtError):  # unsupported by some drivers
            conn.setKeepAlive(*self._keepalive)
        log.info("libvirt_connected", uri=self.uri)
        return conn

    def connection(self) -> Any:
        """The open connection (re-opened when the previous one died)."""
        with self._lock:
            if self._conn is not None:
                try:
                    alive = self._conn.isAlive()
                except libvirt.libvirtError:
                    alive = False
                if alive:
                    return self._conn
                self._drop_locked()
            self._conn = self._open()
            return self._conn

    def _drop_locked(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()

    def close(self) -> None:
        with self._lock:
            self._drop_locked()
            if self._keyfile:
                with contextlib.suppress(OSError):
                    os.unlink(self._keyfile)
                self._keyfile = None

    @contextlib.contextmanager
    def calls(self, what: str) -> Iterator[None]:
        """Translate libvirt errors raised inside the block."""
        try:
            yield
        except libvirt.libvirtError as exc:
            error = translate(exc, what, self.uri)
            if isinstance(error, errors.Unavailable):
                with self._lock:
                    self._drop_locked()
            raise error from exc

    # -- host -----------------------------------------------------------------------

    def versions(self) -> tuple[int, int]:
        """(libvirt daemon version, hypervisor version), as major*1e6+minor*1e3+micro."""
        with self.calls("read versions"):
            conn = self.connection()
            return int(conn.getLibVersion()), int(conn.getVersion())

    def capabilities_xml(self) -> str:
        with self.calls("read host capabilities"):
            return str(self.connection().getCapabilities())

    def domain_capabilities_xml(self, virt_type: str, arch: str) -> str:
        with self.calls("read domain capabilities"):
            return str(self.connection().getDomainCapabilities(None, arch, None, virt_type, 0))

    # -- domains --------------------------------------------------------------------

    def _domain(self, vm_id: str) -> Any:
        canonical = check_uuid(vm_id)
        dom = None
        if canonical is not None:
            conn = self.connection()
            dom = _absent(libvirt.VIR_ERR_NO_DOMAIN, conn.lookupByUUIDString, canonical)
        if dom is None:
            raise errors.NotFound(f"VM {vm_id!r} not found (VM ids are libvirt domain UUIDs)")
        return dom

    def list_domains(self, name_filter: str = "") -> list[DomainRecord]:
        """Every domain with state and XML: 2 calls + one XMLDesc per matching domain."""
        records = []
        with self.calls("list domains"):
            conn = self.connection()
            stats = conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE, 0)
            with_snapshots = {
                d.UUIDString()
                for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_HAS_SNAPSHOT)
            }
            for dom, values in stats:
                name = dom.name()
                if name_filter and not fnmatch.fnmatchcase(name, name_filter):
                    continue
                xml = _absent(libvirt.VIR_ERR_NO_DOMAIN, dom.XMLDesc, 0)
                if xml is None:
                    continue  # undefined since the listing
                uuid = dom.UUIDString()
                state = _STATE_NAMES.get(values.get("state.state", 0), "nostate")
                records.append(DomainRecord(uuid, name, state, xml, uuid in with_snapshots))
        return records

    def domain(self, vm_id: str) -> DomainRecord:
        with self.calls(f"read VM {vm_id}"):
            dom = self._domain(vm_id)
            state = _STATE_NAMES.get(dom.state()[0], "nostate")
            xml = dom.XMLDesc(0)
            return DomainRecord(dom.UUIDString(), dom.name(), state, xml, True)

    def state(self, vm_id: str) -> tuple[str, int]:
        """(state name, domain id) -- the id changes each time the domain starts."""
        with self.calls(f"read state of VM {vm_id}"):
            dom = self._domain(vm_id)
            return _STATE_NAMES.get(dom.state()[0], "nostate"), int(dom.ID())

    def uuid_of(self, name: str) -> str | None:
        """The UUID of the domain called ``name``, or None."""
        with self.calls(f"look up domain {name!r}"):
            conn = self.connection()
            dom = _absent(libvirt.VIR_ERR_NO_DOMAIN, conn.lookupByName, name)
            return None if dom is None else str(dom.UUIDString())

    def define(self, xml: str) -> str:
        with self.calls("define domain"):
            return str(self.connection().defineXML(xml).UUIDString())

    def undefine(self, vm_id: str) -> None:
        flags = (
            libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
            | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
            | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
        )
        with self.calls(f"undefine VM {vm_id}"):
            self._domain(vm_id).undefineFlags(flags)

    def power_call(self, vm_id: str, action: str) -> None:
        """start | destroy | shutdown | resume | wakeup | reset."""
        with self.calls(f"{action} VM {vm_id}"):
            dom = self._domain(vm_id)
            if action == "start":
                dom.create()
            elif action == "destroy":
                dom.destroy()
            elif action == "shutdown":
                dom.shutdown()
            elif action == "resume":
                dom.resume()
            elif action == "wakeup":
                dom.pMWakeup(0)
            elif action == "reset":
                dom.reset(0)
            else:
                raise errors.InternalError(f"unknown power call {action!r}")

    def block_info(self, vm_id: str, target: str) -> tuple[int, int]:
        """(capacity, allocation) of one disk, for disks outside every pool."""
        with self.calls(f"read disk {target} of VM {vm_id}"):
            capacity, allocation, _physical = self._domain(vm_id).blockInfo(target, 0)
            return int(capacity), int(allocation)

    # -- snapshots ------------------------------------------------------------------

    def _snapshot(self, vm_id: str, name: str) -> Any:
        dom = self._domain(vm_id)
        snap = _absent(libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT, dom.snapshotLookupByName, name, 0)
        if snap is None:
            raise errors.NotFound(f"snapshot {name!r} of VM {vm_id} not found")
        return snap

    def snapshot_xmls(self, vm_id: str) -> list[str]:
        with self.calls(f"list snapshots of VM {vm_id}"):
            return [s.getXMLDesc(0) for s in self._domain(vm_id).listAllSnapshots(0)]

    def snapshot_xml(self, vm_id: str, name: str) -> str:
        with self.calls(f"read snapshot {name!r} of VM {vm_id}"):
            return str(self._snapshot(vm_id, name).getXMLDesc(0))

    def create_disk_snapshot(self, vm_id: str, xml: str, *, atomic: bool, quiesce: bool) -> str:
        flags = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
        if atomic:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
        if quiesce:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE
        with self.calls(f"snapshot VM {vm_id}"):
            return str(self._domain(vm_id).snapshotCreateXML(xml, flags).getName())

    def delete_snapshot(self, vm_id: str, name: str) -> None:
        """Delete a snapshot; external ones are merged back (libvirt >= 9.0)."""
        with self.calls(f"delete snapshot {name!r} of VM {vm_id}"):
            self._snapshot(vm_id, name).delete(0)

    # -- storage --------------------------------------------------------------------

    def _pool(self, name: str) -> Any:
        conn = self.connection()
        pool = _absent(libvirt.VIR_ERR_NO_STORAGE_POOL, conn.storagePoolLookupByName, name)
        if pool is None:
            raise errors.NotFound(f"storage pool {name!r} not found")
        return pool

    def pool(self, name: str) -> PoolRecord:
        with self.calls(f"read storage pool {name!r}"):
            pool = self._pool(name)
            parsed = volxml.parse_pool(pool.XMLDesc(0))
            return PoolRecord(name, parsed.type, parsed.path, bool(pool.isActive()))

    def list_pools(self) -> list[PoolRecord]:
        """Every storage pool, active or not."""
        with self.calls("list storage pools"):
            records = []
            for pool in self.connection().listAllStoragePools(0):
                parsed = volxml.parse_pool(pool.XMLDesc(0))
                active = bool(pool.isActive())
                records.append(PoolRecord(parsed.name, parsed.type, parsed.path, active))
            return records

    def refresh_pool(self, name: str) -> None:
        with self.calls(f"refresh storage pool {name!r}"):
            self._pool(name).refresh(0)

    def volume_index(
        self,
        select_pool: Callable[[volxml.PoolXml], bool],
        select_volume: Callable[[volxml.PoolXml, str], bool],
    ) -> list[tuple[str, volxml.VolumeXml]]:
        """(pool name, volume) for every selected volume of every active pool.

        One listAllStoragePools; per pool one XMLDesc, and one listAllVolumes if
        ``select_pool`` accepts the pool; per volume that ``select_volume`` accepts
        (given its pool and name, known without a call) one XMLDesc, which carries
        path, format, capacity and allocation at once.
        """
        found = []
        with self.calls("index storage volumes"):
            pools = self.connection().listAllStoragePools(
                libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE
            )
            for pool in pools:
                parsed = volxml.parse_pool(pool.XMLDesc(0))
                if not select_pool(parsed):
                    continue
                for vol in pool.listAllVolumes(0):
                    if not select_volume(parsed, vol.name()):
                        continue
                    xml = _absent(libvirt.VIR_ERR_NO_STORAGE_VOL, vol.XMLDesc, 0)
                    if xml is not None:  # else: deleted since the listing
                        found.append((parsed.name, volxml.parse_volume(xml)))
        return found

    def _volume(self, pool: str, name: str) -> Any:
        target = self._pool(pool)
        vol = _absent(libvirt.VIR_ERR_NO_STORAGE_VOL, target.storageVolLookupByName, name)
        if vol is None:
            raise errors.NotFound(f"volume {name!r} not found in pool {pool!r}")
        return vol

    def _volume_by_key(self, key: str) -> Any:
        conn = self.connection()
        for lookup in (conn.storageVolLookupByKey, conn.storageVolLookupByPath):
            vol = _absent(libvirt.VIR_ERR_NO_STORAGE_VOL, lookup, key)
            if vol is not None:
                return vol
        raise errors.NotFound(f"volume {key!r} not found in any storage pool")

    def volume(self, pool: str, name: str) -> volxml.VolumeXml:
        with self.calls(f"read volume {pool}/{name}"):
            return volxml.parse_volume(self._volume(pool, name).XMLDesc(0))

    def find_volume(self, pool: str, name: str) -> volxml.VolumeXml | None:
        """Volume ``name`` of ``pool``, or None (NotFound only when the pool is missing)."""
        with self.calls(f"read volume {pool}/{name}"):
            target = self._pool(pool)
            vol = _absent(libvirt.VIR_ERR_NO_STORAGE_VOL, target.storageVolLookupByName, name)
            return None if vol is None else volxml.parse_volume(vol.XMLDesc(0))

    def volume_by_key(self, key: str) -> tuple[str, volxml.VolumeXml]:
        """(pool name, volume) for a volume key or path."""
        with self.calls(f"read volume {key!r}"):
            vol = self._volume_by_key(key)
            pool_name = str(vol.storagePoolLookupByVolume().name())
            return pool_name, volxml.parse_volume(vol.XMLDesc(0))

    def create_volume(self, pool: str, xml: str, clone_of: str = "") -> volxml.VolumeXml:
        """Create a volume (a full copy of volume key ``clone_of`` when given)."""
        with self.calls(f"create volume in pool {pool!r}"):
            target = self._pool(pool)
            if clone_of:
                vol = target.createXMLFrom(xml, self._volume_by_key(clone_of), 0)
            else:
                vol = target.createXML(xml, 0)
            return volxml.parse_volume(vol.XMLDesc(0))

    def delete_volume(self, key: str) -> None:
        with self.calls(f"delete volume {key!r}"):
            self._volume_by_key(key).delete(0)

    def resize_volume(self, key: str, capacity: int) -> None:
        with self.calls(f"resize volume {key!r}"):
            self._volume_by_key(key).resize(capacity, 0)

    # -- networks -------------------------------------------------------------------

    def network_active(self, name: str) -> bool | None:
        """True/False for an (in)active libvirt network, None when there is none."""
        with self.calls(f"look up network {name!r}"):
            conn = self.connection()
            net = _absent(libvirt.VIR_ERR_NO_NETWORK, conn.networkLookupByName, name)
            return None if net is None else bool(net.isActive())

    def host_interface_xml(self, name: str) -> str | None:
        """The host interface (e.g. a bridge) called ``name``, or None."""
        with self.calls(f"look up host interface {name!r}"):
            conn = self.connection()
            iface = _absent(libvirt.VIR_ERR_NO_INTERFACE, conn.interfaceLookupByName, name)
            return None if iface is None else str(iface.XMLDesc(0))

    # -- volume streams -------------------------------------------------------------

    def download_volume(  # noqa: PLR0917 - the signature the export pipeline calls
        self,
        vol_key: str,
        sink_write: Callable[[bytes], object],
        offset: int = 0,
        length: int = 0,
        cancel: threading.Event | None = None,
        sink_hole: Callable[[int], object] | None = None,
    ) -> TransferStats:
        """Stream a volume's bytes (``length`` 0 = to the end) through a sparse stream.

        Data goes to ``sink_write``; runs of zeros the storage reports as holes go to
        ``sink_hole(length)`` without travelling (without ``sink_hole`` they are
        written as zeros). ``cancel`` is checked between chunks: the stream is then
        aborted and ``Cancelled`` raised. ``vol_key`` is a volume key or path.
        """
        data = holes = 0
        with self.calls(f"download volume {vol_key!r}"):
            conn = self.connection()
            vol = self._volume_by_key(vol_key)
            stream = conn.newStream(0)
            vol.download(stream, offset, length, libvirt.VIR_STORAGE_VOL_DOWNLOAD_SPARSE_STREAM)
            try:
                while True:
                    if cancel is not None and cancel.is_set():
                        raise errors.Cancelled(f"download of {vol_key!r} cancelled")
                    got = stream.recvFlags(CHUNK, libvirt.VIR_STREAM_RECV_STOP_AT_HOLE)
                    if got == -3:
                        size = int(stream.recvHole(0))
                        holes += size
                        _emit_hole(size, sink_write, sink_hole)
                        continue
                    if isinstance(got, int):
                        raise errors.InternalError(f"libvirt stream returned {got}")
                    if not got:
                        break
                    data += len(got)
                    sink_write(got)
                stream.finish()
            except BaseException:
                with contextlib.suppress(libvirt.libvirtError):
                    stream.abort()
                raise
        return TransferStats(data, holes)

    def upload_volume(  # noqa: PLR0917 - the signature the import pipeline calls
        self,
        pool: str,
        name: str,
        format: str,
        capacity: int,
        chunks: Iterable[bytes | Hole],
        cancel: threading.Event | None = None,
    ) -> volxml.VolumeXml:
        """Create volume ``pool/name`` and fill it from ``chunks`` (bytes or ``Hole``).

        The volume holds exactly the bytes sent (holes read as zeros, also where
        creating a qcow2 volume had written its empty header: those are sent as
        zeros); a raw volume shorter than ``capacity`` is then grown to it. On any
        failure or cancel the stream is aborted and the new volume deleted.
        """
        check_safe(name, "volume name")
        with self.calls(f"create volume {pool}/{name}"):
            target = self._pool(pool)
            vol = target.createXML(volxml.build_volume(name, capacity, format), 0)
        try:
            with self.calls(f"upload volume {pool}/{name}"):
                written = 0 if format == "raw" else _initial_length(vol)
                self._send(vol, chunks, cancel, f"{pool}/{name}", written)
                info = volxml.parse_volume(vol.XMLDesc(0))
                if format == "raw" and info.capacity < capacity:
                    vol.resize(capacity, 0)
                    info = volxml.parse_volume(vol.XMLDesc(0))
        except BaseException:
            with contextlib.suppress(libvirt.libvirtError):
                vol.delete(0)
            raise
        return info

    def _send(
        self,
        vol: Any,
        chunks: Iterable[bytes | Hole],
        cancel: threading.Event | None,
        what: str,
        written: int,
    ) -> None:
        """Stream ``chunks`` into ``vol`` from offset 0.

        A hole only skips bytes in the file (it is not truncated), so holes over the
        first ``written`` bytes -- what creating the volume already wrote there, e.g.
        an empty qcow2's header and tables -- are sent as zeros.
        """
        stream = self.connection().newStream(0)
        vol.upload(stream, 0, 0, libvirt.VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM)
        pos = 0
        try:
            for chunk in chunks:
                if cancel is not None and cancel.is_set():
                    raise errors.Cancelled(f"upload of {what} cancelled")
                if isinstance(chunk, Hole):
                    zeros = min(chunk.length, max(written - pos, 0))
                    _send_bytes(stream, _zero_run(zeros))
                    if chunk.length > zeros:
                        stream.sendHole(chunk.length - zeros, 0)
                    pos += chunk.length
                else:
                    _send_bytes(stream, [chunk])
                    pos += len(chunk)
            stream.finish()
        except BaseException:
            with contextlib.suppress(libvirt.libvirtError):
                stream.abort()
            raise


_ZEROS = bytes(CHUNK)


def _initial_length(vol: Any) -> int:
    """Bytes a freshly created volume's file already holds (its ``physical`` size).

    Unknown (old daemons): every hole of the upload is then sent as zeros.
    """
    try:
        return int(vol.infoFlags(libvirt.VIR_STORAGE_VOL_GET_PHYSICAL)[2])
    except (libvirt.libvirtError, AttributeError):
        return 1 << 62


def _zero_run(length: int) -> Iterator[bytes]:
    while length > 0:
        step = min(length, CHUNK)
        yield _ZEROS[:step]
        length -= step


def _send_bytes(stream: Any, pieces: Iterable[bytes]) -> None:
    for piece in pieces:
        view = memoryview(piece)
        while view:
            sent = stream.send(bytes(view[:CHUNK]))
            view = view[sent:]


def _emit_hole(
    size: int, sink_write: Callable[[bytes], object], sink_hole: Callable[[int], object] | None
) -> None:
    if sink_hole is not None:
        sink_hole(size)
        return
    while size:
        step = min(size, CHUNK)
        sink_write(_ZEROS[:step])
        size -= step
