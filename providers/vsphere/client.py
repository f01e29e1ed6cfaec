"""The vSphere session and the one place pyvmomi is called from.

Every call into pyvmomi goes through ``VSphereClient.call``, which logs in on first
use, logs in again once when the session expired (vCenter drops idle sessions after
30 minutes) and turns pyvmomi faults and socket errors into the typed errors of
``virtrigaud.errors`` (``translate``). Nothing above this module sees a pyvmomi
exception.

Typing: pyvmomi 9 ships stubs, but property values read through the
PropertyCollector are ``Any`` by nature (``DynamicProperty.val``), and many managed
object methods are untyped. Values coming out of this module are therefore ``Any``
where they are vSphere data objects; the modules above convert them into their own
dataclasses right away (``inventory``) or pass them straight back into calls.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any, TypeVar

from pyVim.connect import SmartStubAdapter as _SmartStubAdapter
from pyVmomi import vim as _vim
from pyVmomi import vmodl as _vmodl

from providers.vsphere.settings import Settings
from virtrigaud import errors
from virtrigaud.logging import get_logger

log = get_logger("virtrigaud.vsphere")

# pyvmomi 9 ships stubs, but its data object constructors (vim.vm.ConfigSpec(...), the
# PropertyCollector specs, ...) are untyped and managed object properties are Optional
# everywhere, so strict typing would need an ignore on most lines. The namespaces are
# re-exported here as Any instead: the other vSphere modules import ``vim`` / ``vmodl``
# from this module, and this is the one place that decision is made.
vim: Any = _vim
vmodl: Any = _vmodl
SmartStubAdapter: Any = _SmartStubAdapter

T = TypeVar("T")
SESSION_COOKIE = "vmware_soap_session"
PAGE_SIZE = 500

PropertyFilterSpec = vmodl.query.PropertyCollector.FilterSpec
ObjectSpec = vmodl.query.PropertyCollector.ObjectSpec
PropertySpec = vmodl.query.PropertyCollector.PropertySpec
TraversalSpec = vmodl.query.PropertyCollector.TraversalSpec


@dataclass(frozen=True)
class ObjectProps:
    """One object of a PropertyCollector retrieval: its reference and its properties
    (unset properties are absent from ``props``)."""

    ref: Any
    props: dict[str, Any]
    missing: dict[str, Any] = field(default_factory=dict)  # path -> fault (missingSet)

    @property
    def moid(self) -> str:
        return str(self.ref._moId)


def fault_message(fault: Any) -> str:
    """The human text of a vSphere fault (``msg``, else its localized message)."""
    for attr in ("msg", "localizedMessage", "reason"):
        text = getattr(fault, attr, None)
        if text:
            return str(text)
    return type(fault).__name__.rsplit(".", 1)[-1]


# Fault classes -> error classes, most specific first (isinstance order matters).
_FAULTS: tuple[tuple[Any, type[errors.VirtrigaudError]], ...] = (
    (vim.fault.InvalidLogin, errors.AuthenticationError),
    (vim.fault.NotAuthenticated, errors.AuthenticationError),
    (vim.fault.NoPermission, errors.PermissionDenied),
    (vmodl.fault.ManagedObjectNotFound, errors.NotFound),
    (vim.fault.FileNotFound, errors.NotFound),
    (vim.fault.NotFound, errors.NotFound),
    (vim.fault.FileAlreadyExists, errors.AlreadyExists),
    (vim.fault.DuplicateName, errors.AlreadyExists),
    (vim.fault.AlreadyExists, errors.AlreadyExists),
    (vim.fault.NoDiskSpace, errors.OutOfSpace),
    (vim.fault.InsufficientResourcesFault, errors.OutOfSpace),
    (vim.fault.TaskInProgress, errors.Conflict),
    (vim.fault.ConcurrentAccess, errors.Conflict),
    (vim.fault.InvalidPowerState, errors.FailedPrecondition),
    (vim.fault.InvalidState, errors.FailedPrecondition),
    (vim.fault.Timedout, errors.Timeout),
    (vmodl.fault.HostCommunication, errors.Unavailable),
    (vim.fault.FileLocked, errors.FailedPrecondition),
    (vim.fault.CannotCreateFile, errors.FailedPrecondition),
    (vim.fault.CannotDeleteFile, errors.FailedPrecondition),
    (vim.fault.FileFault, errors.FailedPrecondition),
    (vmodl.fault.RequestCanceled, errors.Cancelled),
    (vmodl.fault.MethodNotFound, errors.Unsupported),
    (vmodl.fault.NotSupported, errors.Unsupported),
    (vmodl.fault.NotImplemented, errors.Unsupported),
    (vmodl.fault.InvalidArgument, errors.InvalidArgument),
    (vmodl.fault.InvalidRequest, errors.InvalidArgument),
    (vim.fault.InvalidDatastorePath, errors.InvalidArgument),
    (vim.fault.InvalidName, errors.InvalidArgument),
    (vim.fault.VmConfigFault, errors.InvalidArgument),
)


def fault_error(fault: Any, what: str) -> errors.VirtrigaudError:
    """The typed error for a vSphere fault object (from a call or a task's ``info.error``)."""
    text = f"{what}: {fault_message(fault)}"
    for cls, error in _FAULTS:
        if isinstance(fault, cls):
            return error(text)
    return errors.InternalError(text)


def translate(exc: BaseException, what: str, where: str) -> errors.VirtrigaudError:
    """Any exception of a pyvmomi call -> a typed error (credentials never appear)."""
    if isinstance(exc, errors.VirtrigaudError):
        return exc
    if isinstance(exc, vmodl.MethodFault):
        return fault_error(exc, what)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return errors.FailedPrecondition(
            f"{what}: the TLS certificate of {where} is not trusted ({exc.verify_message}); "
            "give its CA (Secret key ca.crt or option caFile), or set "
            "insecureSkipTLSVerify=true"
        )
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return errors.Timeout(f"{what}: {where} did not answer in time")
    if isinstance(exc, (OSError, http.client.HTTPException, ssl.SSLError)):
        return errors.Unavailable(f"{what}: cannot reach {where} ({type(exc).__name__}: {exc})")
    return errors.InternalError(f"{what}: unexpected {type(exc).__name__} from pyvmomi")


class VSphereClient:
    """One logged-in session to a vCenter or ESXi host, shared by all tasks.

    pyvmomi's stub keeps a pool of HTTPS connections and is safe to use from several
    threads; the lock only guards logging in.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._stub: Any = None
        self._content: Any = None
        self._generation = 0

    # -- session ------------------------------------------------------------------

    @property
    def where(self) -> str:
        return str(self.settings.endpoint)

    def _login(self) -> Any:
        ep = self.settings.endpoint
        try:
            stub = SmartStubAdapter(
                host=ep.host,
                port=ep.port,
                path=ep.path,
                sslContext=self.settings.tls.context(),
                httpConnectionTimeout=self.settings.connect_timeout,
            )
            instance = vim.ServiceInstance("ServiceInstance", stub)
            content = instance.RetrieveContent()
            content.sessionManager.Login(self.settings.username, self.settings.password, None)
        except vim.fault.InvalidLogin as exc:
            raise errors.AuthenticationError(
                f"login to {self.where} as {self.settings.username!r} was refused "
                "(wrong username or password)"
            ) from exc
        except Exception as exc:  # pyvmomi raises many kinds; translate names them
            raise translate(exc, "login", self.where) from exc
        self._stub = stub
        self._content = content
        log.info("vsphere_login", endpoint=self.where, api=content.about.apiType)
        return content

    def content(self) -> Any:
        """The ServiceContent of a logged-in session (logs in when needed)."""
        with self._lock:
            if self._content is None:
                return self._login()
            return self._content

    @property
    def generation(self) -> int:
        """Counts logins: a caller that saw an expired session passes the generation it
        used to ``refresh_session``, so concurrent callers log in again only once."""
        return self._generation

    def refresh_session(self, generation: int) -> None:
        """Log in again on the same connection stub (references made from it stay
        valid; the stub takes the new session cookie from the login response)."""
        with self._lock:
            if self._generation != generation or self._content is None:
                return
            log.info("vsphere_session_expired", endpoint=self.where)
            try:
                self._content.sessionManager.Login(
                    self.settings.username, self.settings.password, None
                )
            except vim.fault.InvalidLogin as exc:
                raise errors.AuthenticationError(
                    f"login to {self.where} as {self.settings.username!r} was refused "
                    "(wrong username or password)"
                ) from exc
            except Exception as exc:
                raise translate(exc, "login", self.where) from exc
            self._generation += 1

    def call(self, fn: Callable[[Any], T], what: str) -> T:
        """``fn(content)`` with faults translated; one re-login when the session expired."""
        content = self.content()
        generation = self._generation
        try:
            return fn(content)
        except vim.fault.NotAuthenticated:
            self.refresh_session(generation)
        except Exception as exc:
            raise translate(exc, what, self.where) from exc
        try:
            return fn(content)
        except Exception as exc:
            raise translate(exc, what, self.where) from exc

    def session_cookie(self) -> str:
        """``vmware_soap_session="..."`` for the datastore file endpoint."""
        self.content()
        raw = str(getattr(self._stub, "cookie", "") or "")
        morsel = SimpleCookie(raw).get(SESSION_COOKIE)
        if morsel is None:
            raise errors.InternalError("the vSphere session has no session cookie")
        return f'{SESSION_COOKIE}="{morsel.value}"'

    def ref(self, kind: Any, moid: str) -> Any:
        """A managed object reference of ``kind`` (e.g. ``vim.VirtualMachine``) by id."""
        self.content()
        return kind(moid, self._stub)

    def close(self) -> None:
        with self._lock:
            content, self._content = self._content, None
            stub, self._stub = self._stub, None
        if content is not None:
            try:
                content.sessionManager.Logout()
            except Exception as exc:  # closing anyway
                log.info("vsphere_logout_failed", error=type(exc).__name__)
        if stub is not None:
            stub.DropConnections()

    # -- facts --------------------------------------------------------------------

    def about(self) -> Any:
        return self.content().about

    # -- PropertyCollector --------------------------------------------------------

    def retrieve(self, specs: Sequence[Any], what: str) -> list[ObjectProps]:
        """Every object the filter specs select, with their properties, in one
        RetrievePropertiesEx (plus continuation pages)."""

        def run(content: Any) -> list[ObjectProps]:
            collector = content.propertyCollector
            options = vmodl.query.PropertyCollector.RetrieveOptions(maxObjects=PAGE_SIZE)
            result = collector.RetrievePropertiesEx(list(specs), options)
            found: list[ObjectProps] = []
            while result is not None:
                for obj in result.objects or ():
                    missing = {m.path: m.fault for m in obj.missingSet or ()}
                    for fault in missing.values():
                        if isinstance(fault, vim.fault.NotAuthenticated):
                            raise fault  # the session expired: call() logs in again
                    found.append(
                        ObjectProps(obj.obj, {p.name: p.val for p in obj.propSet}, missing)
                    )
                token = result.token
                result = collector.ContinueRetrievePropertiesEx(token) if token else None
            return found

        return self.call(run, what)

    def properties(self, ref: Any, paths: Iterable[str], what: str) -> dict[str, Any]:
        """Properties of one object (NotFound if it does not exist)."""
        spec = PropertyFilterSpec(
            objectSet=[ObjectSpec(obj=ref, skip=False)],
            propSet=[PropertySpec(type=type(ref), pathSet=list(paths))],
        )
        found = self.retrieve([spec], what)
        if not found:
            raise errors.NotFound(f"{what}: {ref._moId} does not exist")
        if not found[0].props and found[0].missing:
            # Nothing readable: say why (typically NoPermission -> PermissionDenied).
            raise fault_error(next(iter(found[0].missing.values())), what)
        return found[0].props

    def retrieve_all(
        self, kinds: dict[Any, list[str]], what: str, root: Any = None
    ) -> list[ObjectProps]:
        """Every object of the given types under ``root`` (default: the root folder),
        through one ContainerView and one retrieval."""

        def make_view(content: Any) -> Any:
            return content.viewManager.CreateContainerView(
                root or content.rootFolder, list(kinds), True
            )

        view = self.call(make_view, what)
        try:
            spec = PropertyFilterSpec(
                objectSet=[
                    ObjectSpec(
                        obj=view,
                        skip=True,
                        selectSet=[
                            TraversalSpec(
                                name="view", path="view", skip=False, type=vim.view.ContainerView
                            )
                        ],
                    )
                ],
                propSet=[PropertySpec(type=kind, pathSet=paths) for kind, paths in kinds.items()],
            )
            return self.retrieve([spec], what)
        finally:
            try:
                self.call(lambda _c: view.DestroyView(), "destroying a container view")
            except errors.VirtrigaudError as exc:
                log.info("vsphere_view_leak", error=exc.message)
