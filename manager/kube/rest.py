"""The REST calls the adapter makes, through the official ``kubernetes`` client.

Every call goes through the generated API classes (``CustomObjectsApi`` for our CRDs,
``CoreV1Api`` for Secrets and Events, ``CoordinationV1Api`` for Leases) with
``_preload_content=False``: we get the server's JSON as plain dicts, exactly as the
controllers read manifests, instead of the client's model classes. ``ApiException``
and transport errors become the typed errors of ``virtrigaud.errors`` here, in one
place (``translate``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import urllib3
from kubernetes import client
from kubernetes.client.rest import ApiException

from virtrigaud import errors

Obj = dict[str, Any]
T = TypeVar("T")

CRD_GROUP = "infra.virtrigaud.io"
CRD_VERSION = "v1beta1"
REQUEST_TIMEOUT = 30.0


@dataclass(frozen=True)
class Kind:
    """Where objects of one kind live in the API."""

    kind: str
    group: str
    version: str
    plural: str
    status_subresource: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


KINDS: dict[str, Kind] = {
    "Provider": Kind("Provider", CRD_GROUP, CRD_VERSION, "providers", True),
    "VirtualMachine": Kind("VirtualMachine", CRD_GROUP, CRD_VERSION, "virtualmachines", True),
    "VMMigration": Kind("VMMigration", CRD_GROUP, CRD_VERSION, "vmmigrations", True),
    "Secret": Kind("Secret", "", "v1", "secrets", False),
    "Event": Kind("Event", "", "v1", "events", False),
    "Lease": Kind("Lease", "coordination.k8s.io", "v1", "leases", False),
    "Deployment": Kind("Deployment", "apps", "v1", "deployments", True),
    "Service": Kind("Service", "", "v1", "services", True),
}
# built-in kinds: the method suffix of their generated API class (CoreV1Api, ...)
_TYPED = {
    "Secret": "secret",
    "Event": "event",
    "Lease": "lease",
    "Deployment": "deployment",
    "Service": "service",
}


def _status_of(exc: ApiException) -> Obj:
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


_SIMPLE: dict[int, type[errors.VirtrigaudError]] = {
    400: errors.InvalidArgument,
    401: errors.AuthenticationError,  # the message never carries our credentials
    403: errors.PermissionDenied,
    410: errors.Unavailable,  # Gone: the watch re-lists
}


def _conflict(reason: str, what: str, message: str) -> errors.VirtrigaudError:
    if reason == "AlreadyExists":
        return errors.AlreadyExists(f"{what} already exists")
    return errors.Conflict(
        f"{what}: the object has been modified (our resourceVersion is stale): {message}"
    )


def translate(exc: BaseException, what: str) -> errors.VirtrigaudError:
    """An API or transport failure as a typed error; ``what`` names the object."""
    if not isinstance(exc, ApiException):
        return errors.Unavailable(f"{what}: Kubernetes API unreachable: {exc}")
    status = _status_of(exc)
    reason = str(status.get("reason") or exc.reason or "")
    message = str(status.get("message") or exc.reason or "")
    code = int(exc.status or 0)
    simple = _SIMPLE.get(code)
    if simple is not None:
        return simple(f"{what}: {message}")
    if code == 404:
        return errors.NotFound(f"{what} not found ({message})")
    if code == 409:
        return _conflict(reason, what, message)
    if code == 422:
        causes = (status.get("details") or {}).get("causes") or [{}]
        return errors.ValidationError(str(causes[0].get("field") or ""), message)
    return errors.Unavailable(f"{what}: Kubernetes API answered {code} {reason}: {message}")


TRANSPORT_ERRORS = (ApiException, urllib3.exceptions.HTTPError, OSError)


def _json(response: Any) -> Obj:
    data: Obj = json.loads(response.data or b"{}")
    return data


class Rest:
    """Raw-dict REST calls for the kinds of ``KINDS``."""

    def __init__(self, api: client.ApiClient, timeout: float = REQUEST_TIMEOUT) -> None:
        self.api = api
        self.timeout = timeout
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.coordination = client.CoordinationV1Api(api)
        self.apps = client.AppsV1Api(api)

    def _owner(self, kind: Kind) -> Any:
        return {"Lease": self.coordination, "Deployment": self.apps}.get(kind.kind, self.core)

    def _typed(self, kind: Kind, verb: str) -> Callable[..., Any]:
        return getattr(self._owner(kind), f"{verb}_{_TYPED[kind.kind]}")  # type: ignore[no-any-return]

    def _call(self, what: str, call: Callable[[], Any]) -> Obj:
        try:
            return _json(call())
        except TRANSPORT_ERRORS as exc:
            raise translate(exc, what) from None

    def _opts(self) -> dict[str, Any]:
        return {"_preload_content": False, "_request_timeout": self.timeout}

    # -- verbs --------------------------------------------------------------------------

    def get(self, kind: Kind, namespace: str, name: str, what: str) -> Obj:
        if kind.kind in _TYPED:
            fn = self._typed(kind, "read_namespaced")
            return self._call(what, lambda: fn(name, namespace, **self._opts()))
        return self._call(
            what,
            lambda: self.custom.get_namespaced_custom_object(
                kind.group, kind.version, namespace, kind.plural, name, **self._opts()
            ),
        )

    def list(
        self,
        kind: Kind,
        namespace: str | None,
        *,
        labels: str = "",
        fields: str = "",
        what: str = "",
    ) -> Obj:
        """The list object (``items`` + ``metadata.resourceVersion``)."""
        opts: dict[str, Any] = self._opts()
        if labels:
            opts["label_selector"] = labels
        if fields:
            opts["field_selector"] = fields
        what = what or f"list {kind.plural}"
        if kind.kind in _TYPED:
            if namespace is None:
                owner = self._owner(kind)
                fn = getattr(owner, f"list_{_TYPED[kind.kind]}_for_all_namespaces")
                return self._call(what, lambda: fn(**opts))
            fn = self._typed(kind, "list_namespaced")
            return self._call(what, lambda: fn(namespace, **opts))
        if namespace is None:
            return self._call(
                what,
                lambda: self.custom.list_cluster_custom_object(
                    kind.group, kind.version, kind.plural, **opts
                ),
            )
        return self._call(
            what,
            lambda: self.custom.list_namespaced_custom_object(
                kind.group, kind.version, namespace, kind.plural, **opts
            ),
        )

    def create(self, kind: Kind, namespace: str, body: Obj, what: str) -> Obj:
        if kind.kind in _TYPED:
            fn = self._typed(kind, "create_namespaced")
            return self._call(what, lambda: fn(namespace, body, **self._opts()))
        return self._call(
            what,
            lambda: self.custom.create_namespaced_custom_object(
                kind.group, kind.version, namespace, kind.plural, body, **self._opts()
            ),
        )

    def replace(
        self, kind: Kind, namespace: str, name: str, body: Obj, what: str, *, status: bool = False
    ) -> Obj:
        if kind.kind in _TYPED:
            if status:
                raise errors.Unsupported(f"{what}: {kind.kind} has no status subresource")
            fn = self._typed(kind, "replace_namespaced")
            return self._call(what, lambda: fn(name, namespace, body, **self._opts()))
        method = (
            self.custom.replace_namespaced_custom_object_status
            if status
            else self.custom.replace_namespaced_custom_object
        )
        return self._call(
            what,
            lambda: method(
                kind.group, kind.version, namespace, kind.plural, name, body, **self._opts()
            ),
        )

    def delete(self, kind: Kind, namespace: str, name: str, what: str) -> Obj:
        if kind.kind in _TYPED:
            fn = self._typed(kind, "delete_namespaced")
            return self._call(what, lambda: fn(name, namespace, **self._opts()))
        return self._call(
            what,
            lambda: self.custom.delete_namespaced_custom_object(
                kind.group, kind.version, namespace, kind.plural, name, **self._opts()
            ),
        )

    def watch(
        self, kind: Kind, namespace: str | None, resource_version: str, timeout_seconds: int
    ) -> Any:
        """The streaming response of a watch (raises ``ApiException`` / transport errors)."""
        opts: dict[str, Any] = {
            "watch": True,
            "resource_version": resource_version,
            "timeout_seconds": timeout_seconds,
            "allow_watch_bookmarks": True,
            "_preload_content": False,
            "_request_timeout": (self.timeout, timeout_seconds + self.timeout),
        }
        if kind.kind in _TYPED:
            if namespace is None:
                owner = self._owner(kind)
                return getattr(owner, f"list_{_TYPED[kind.kind]}_for_all_namespaces")(**opts)
            return self._typed(kind, "list_namespaced")(namespace, **opts)
        if namespace is None:
            return self.custom.list_cluster_custom_object(
                kind.group, kind.version, kind.plural, **opts
            )
        return self.custom.list_namespaced_custom_object(
            kind.group, kind.version, namespace, kind.plural, **opts
        )


def lines(response: Any) -> Iterator[bytes]:
    """The JSON lines of a streaming watch response, as they arrive."""
    buffer = b""
    for segment in response.stream(amt=None, decode_content=False):
        buffer += segment
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield line
    if buffer.strip():
        yield buffer
