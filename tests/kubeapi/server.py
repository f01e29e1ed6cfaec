"""A small stateful Kubernetes API server emulator, over real HTTP (stdlib only).

No kube-apiserver can be installed on the test machines, and the emulators on PyPI
miss the semantics the adapter depends on, so the adapter is tested against this one.
It serves the REST paths the official ``kubernetes`` client calls and honours:

* create: ``201`` with server-set ``uid``, ``resourceVersion`` (one global counter),
  ``creationTimestamp`` and ``generation`` (for kinds that have one); ``409
  AlreadyExists`` for a second object of the same name; ``404`` when the namespace does
  not exist; ``generateName``;
* replace (PUT): ``409 Conflict`` on a stale ``resourceVersion`` (an empty one is an
  unconditional update, as for the real server) or a different ``uid``; server fields
  kept; ``generation`` bumped when anything but metadata/status changed; a write that
  changes nothing does not produce a new ``resourceVersion``;
* the ``/status`` subresource of kinds that have it: the main resource ignores
  ``status`` (also on create), ``/status`` ignores everything but ``status``;
* JSON merge patch (``application/merge-patch+json``; a strategic merge patch is
  treated the same), with an optional ``resourceVersion`` precondition;
* delete: with finalizers only ``metadata.deletionTimestamp`` is set (and
  ``generation`` bumped); the object goes when an update removes the last finalizer;
  ``DeleteOptions.preconditions`` are checked;
* list with ``labelSelector`` / ``fieldSelector``, namespaced or across namespaces,
  with the list's ``metadata.resourceVersion``;
* watch (``?watch=true``): chunked streaming JSON lines, from ``resourceVersion``
  (unset or ``0``: synthetic ``ADDED`` of the current objects first), ending after
  ``timeoutSeconds``; a ``resourceVersion`` older than the kept history gets one
  ``ERROR`` event carrying a ``410 Gone`` Status (``compact()`` drops the history);
* Secrets: ``stringData`` folded into base64 ``data``, non-base64 ``data`` refused;
* Events, Leases, Namespaces, Deployments and Services as plain objects;
* bearer-token authentication (``401``) when a token is configured.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import json
import re
import secrets
import socket
import ssl
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.kubeapi.crds import CRDs
from tests.kubeapi.selectors import SelectorError, field_selector, label_selector

Obj = dict[str, Any]


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    status_subresource: bool = False
    generation: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """How the real server names the resource in messages (``providers.infra...``)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


CRD_GROUP = "infra.virtrigaud.io"
RESOURCES = (
    Resource("", "v1", "namespaces", "Namespace", namespaced=False),
    Resource("", "v1", "secrets", "Secret"),
    Resource("", "v1", "events", "Event"),
    Resource("", "v1", "services", "Service", status_subresource=True),
    Resource("apps", "v1", "deployments", "Deployment", status_subresource=True, generation=True),
    Resource("coordination.k8s.io", "v1", "leases", "Lease"),
    Resource(CRD_GROUP, "v1beta1", "providers", "Provider", True, True, True),
    Resource(CRD_GROUP, "v1beta1", "virtualmachines", "VirtualMachine", True, True, True),
    Resource(CRD_GROUP, "v1beta1", "vmmigrations", "VMMigration", True, True, True),
)
_BY_PATH = {(r.group, r.version, r.plural): r for r in RESOURCES}
SERVER_FIELDS = ("uid", "creationTimestamp", "deletionTimestamp", "generation")


def now_text() -> str:
    return datetime.now(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


class APIError(Exception):
    """Answered as a ``Status`` object with the given HTTP code and reason."""

    def __init__(self, code: int, reason: str, message: str, details: Obj | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> Obj:
        body: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def _details(res: Resource, name: str) -> Obj:
    return {"name": name, "group": res.group, "kind": res.plural}


def not_found(res: Resource, name: str) -> APIError:
    return APIError(404, "NotFound", f'{res.qualified} "{name}" not found', _details(res, name))


def conflict(res: Resource, name: str, why: str) -> APIError:
    return APIError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {res.qualified} "{name}": {why}',
        _details(res, name),
    )


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge_patch(out.get(key), value)
    return out


def _spec_part(obj: Obj) -> Obj:
    return {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata", "status")}


@dataclass
class Change:
    rv: int
    res: Resource
    type: str
    obj: Obj


class State:
    """Every object, the resourceVersion counter and the change history."""

    def __init__(self, history: int = 1000) -> None:
        self.cond = threading.Condition(threading.RLock())
        self.objects: dict[tuple[str, str, str], Obj] = {}  # (plural key, ns, name)
        self.rv = 0
        self.history: deque[Change] = deque(maxlen=history)
        self.compacted = 0  # changes up to this resourceVersion are gone
        self.closed = False
        self.crds = CRDs()
        for name in ("default", "kube-system"):
            self._put_namespace(name)

    def _put_namespace(self, name: str) -> None:
        res = _BY_PATH[("", "v1", "namespaces")]
        self.create(res, "", {"metadata": {"name": name}})

    # -- helpers ------------------------------------------------------------------------

    @staticmethod
    def _key(res: Resource, namespace: str, name: str) -> tuple[str, str, str]:
        return (res.qualified, namespace if res.namespaced else "", name)

    def _record(self, res: Resource, type_: str, obj: Obj) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        key = self._key(res, obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        if type_ == "DELETED":
            self.objects.pop(key, None)
        else:
            self.objects[key] = obj
        if len(self.history) == self.history.maxlen:
            self.compacted = self.history[0].rv
        self.history.append(Change(self.rv, res, type_, copy.deepcopy(obj)))
        self.cond.notify_all()

    def _stored(self, res: Resource, namespace: str, name: str) -> Obj:
        found = self.objects.get(self._key(res, namespace, name))
        if found is None:
            raise not_found(res, name)
        return found

    def compact(self) -> None:
        """Forget the change history (a watch from an older version gets 410 Gone)."""
        with self.cond:
            self.compacted = self.rv
            self.history.clear()

    # -- verbs --------------------------------------------------------------------------

    def get(self, res: Resource, namespace: str, name: str) -> Obj:
        with self.cond:
            return copy.deepcopy(self._stored(res, namespace, name))

    def list(self, res: Resource, namespace: str | None, labels: str, fields: str) -> Obj:
        try:
            by_label, by_field = label_selector(labels), field_selector(fields)
        except SelectorError as exc:
            raise APIError(400, "BadRequest", str(exc)) from None
        with self.cond:
            items = [
                copy.deepcopy(obj)
                for (plural, ns, _), obj in sorted(self.objects.items())
                if plural == res.qualified
                and (namespace is None or ns == namespace)
                and by_label(obj)
                and by_field(obj)
            ]
            version = str(self.rv)
        return {
            "kind": f"{res.kind}List",
            "apiVersion": res.api_version,
            "metadata": {"resourceVersion": version},
            "items": items,
        }

    def create(self, res: Resource, namespace: str, body: Obj) -> Obj:
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise APIError(400, "BadRequest", "metadata: must be an object")
        if res.namespaced:
            if meta.get("namespace") and meta["namespace"] != namespace:
                raise APIError(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace "
                    "sent on the request",
                )
            meta["namespace"] = namespace
        if meta.get("resourceVersion"):
            raise APIError(
                500, "InternalError", "resourceVersion should not be set on objects to be created"
            )
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        if not meta.get("name"):
            raise APIError(422, "Invalid", f"{res.kind} is invalid: metadata.name: Required value")
        obj["apiVersion"], obj["kind"] = res.api_version, res.kind
        if res.status_subresource:
            obj.pop("status", None)
        if res.kind == "Secret":
            _fold_secret(obj)
        if res.kind == "Namespace":
            obj["status"] = {"phase": "Active"}
        with self.cond:
            if res.namespaced and self._key(_NAMESPACES, "", namespace) not in self.objects:
                raise APIError(
                    404,
                    "NotFound",
                    f'namespaces "{namespace}" not found',
                    {"name": namespace, "kind": "namespaces"},
                )
            if self._key(res, namespace, meta["name"]) in self.objects:
                raise APIError(
                    409,
                    "AlreadyExists",
                    f'{res.qualified} "{meta["name"]}" already exists',
                    _details(res, meta["name"]),
                )
            for field in SERVER_FIELDS:
                meta.pop(field, None)
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now_text()
            if res.generation:
                meta["generation"] = 1
            obj = self._admit(res, obj)
            self._record(res, "ADDED", obj)
            return copy.deepcopy(obj)

    def _admit(self, res: Resource, obj: Obj) -> Obj:
        """Prune, default and validate a custom resource against its CRD (422 if bad)."""
        admitted, problems = self.crds.admit(obj)
        if problems:
            name = obj["metadata"].get("name")
            text = "; ".join(f"{field}: Invalid value: {reason}" for field, reason in problems)
            causes = [
                {"reason": "FieldValueInvalid", "message": reason, "field": field}
                for field, reason in problems
            ]
            raise APIError(
                422,
                "Invalid",
                f'{res.kind}.{res.group} "{name}" is invalid: {text}',
                {**_details(res, str(name)), "causes": causes},
            )
        return admitted

    def _check_preconditions(self, res: Resource, stored: Obj, meta: Obj) -> None:
        name = stored["metadata"]["name"]
        given = meta.get("resourceVersion")
        if given and str(given) != stored["metadata"]["resourceVersion"]:
            raise conflict(
                res,
                name,
                "the object has been modified; please apply your changes to the latest "
                "version and try again",
            )
        uid = meta.get("uid")
        if uid and uid != stored["metadata"]["uid"]:
            raise conflict(
                res,
                name,
                f"Precondition failed: UID in precondition: {uid}, "
                f"UID in object meta: {stored['metadata']['uid']}",
            )

    def replace(self, res: Resource, namespace: str, name: str, body: Obj, sub: str) -> Obj:
        meta = body.get("metadata")
        if not isinstance(meta, dict) or meta.get("name") != name:
            raise APIError(
                400, "BadRequest", "the name of the object does not match the name on the URL"
            )
        with self.cond:
            stored = self._stored(res, namespace, name)
            self._check_preconditions(res, stored, meta)
            if sub == "status":
                new = copy.deepcopy(stored)
                if body.get("status") is None:
                    new.pop("status", None)
                else:
                    new["status"] = copy.deepcopy(body["status"])
            else:
                new = copy.deepcopy(body)
                new["apiVersion"], new["kind"] = res.api_version, res.kind
                new_meta = new["metadata"]
                if res.namespaced:
                    new_meta["namespace"] = namespace
                for field in SERVER_FIELDS:
                    if field in stored["metadata"]:
                        new_meta[field] = stored["metadata"][field]
                    else:
                        new_meta.pop(field, None)
                if res.status_subresource:
                    new.pop("status", None)
                    if "status" in stored:
                        new["status"] = copy.deepcopy(stored["status"])
                if res.kind == "Secret":
                    _fold_secret(new)
                new = self._admit(res, new)  # defaults first: they are no spec change
                new_meta = new["metadata"]
                if res.generation and _spec_part(new) != _spec_part(stored):
                    new_meta["generation"] = int(new_meta.get("generation") or 0) + 1
                if stored["metadata"].get("deletionTimestamp"):
                    added = set(new_meta.get("finalizers") or []) - set(
                        stored["metadata"].get("finalizers") or []
                    )
                    if added:
                        raise APIError(
                            422,
                            "Invalid",
                            f"{res.kind} {name!r} is invalid: metadata.finalizers: Forbidden: "
                            f"no new finalizers can be added if the object is being deleted",
                        )
            if sub == "status":
                new = self._admit(res, new)
            return self._write(res, stored, new)

    def _write(self, res: Resource, stored: Obj, new: Obj) -> Obj:
        new["metadata"]["resourceVersion"] = stored["metadata"]["resourceVersion"]
        if new == stored:
            return copy.deepcopy(stored)  # a no-op write: no new resourceVersion
        meta = new["metadata"]
        gone = bool(meta.get("deletionTimestamp")) and not meta.get("finalizers")
        self._record(res, "DELETED" if gone else "MODIFIED", new)
        return copy.deepcopy(new)

    def patch(self, res: Resource, namespace: str, name: str, patch: Any, sub: str) -> Obj:
        if not isinstance(patch, dict):
            raise APIError(400, "BadRequest", "a merge patch must be a JSON object")
        with self.cond:
            stored = self._stored(res, namespace, name)
            self._check_preconditions(res, stored, patch.get("metadata") or {})
            merged = _merge_patch(stored, patch)
            merged["metadata"]["resourceVersion"] = ""  # precondition already checked
            return self.replace(res, namespace, name, merged, sub)

    def delete(self, res: Resource, namespace: str, name: str, options: Obj) -> Obj:
        pre = options.get("preconditions") or {}
        with self.cond:
            stored = self._stored(res, namespace, name)
            self._check_preconditions(res, stored, pre)
            meta = stored["metadata"]
            if meta.get("finalizers"):
                if not meta.get("deletionTimestamp"):
                    new = copy.deepcopy(stored)
                    new["metadata"]["deletionTimestamp"] = now_text()
                    new["metadata"]["deletionGracePeriodSeconds"] = 0
                    if res.generation:
                        new["metadata"]["generation"] = int(meta.get("generation") or 0) + 1
                    self._record(res, "MODIFIED", new)
                    return copy.deepcopy(new)
                return copy.deepcopy(stored)
            gone = copy.deepcopy(stored)
            self._record(res, "DELETED", gone)
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {**_details(res, name), "uid": meta["uid"]},
        }

    # -- watch --------------------------------------------------------------------------

    def watch(
        self,
        res: Resource,
        namespace: str | None,
        *,
        since: str,
        labels: str,
        fields: str,
        deadline: float,
    ) -> Iterator[Obj]:
        """Watch events (dicts with ``type`` and ``object``) until ``deadline``."""
        try:
            by_label, by_field = label_selector(labels), field_selector(fields)
        except SelectorError as exc:
            raise APIError(400, "BadRequest", str(exc)) from None

        def wanted(change: Change) -> bool:
            ns = change.obj["metadata"].get("namespace")
            return (
                change.res == res
                and (namespace is None or ns == namespace)
                and by_label(change.obj)
                and by_field(change.obj)
            )

        with self.cond:
            if since in ("", "0"):
                initial = self.list(res, namespace, labels, fields)
                cursor = self.rv
            else:
                try:
                    cursor = int(since)
                except ValueError:
                    raise APIError(
                        400, "BadRequest", f"invalid resourceVersion {since!r}"
                    ) from None
                initial = {"items": []}
        for item in initial["items"]:
            yield {"type": "ADDED", "object": item}
        while True:
            with self.cond:
                if cursor < self.compacted:
                    yield {
                        "type": "ERROR",
                        "object": APIError(
                            410,
                            "Expired",
                            f"too old resource version: {cursor} ({self.compacted + 1})",
                        ).status(),
                    }
                    return
                pending = [c for c in self.history if c.rv > cursor]
                if not pending:
                    left = deadline - time.monotonic()
                    if left <= 0 or self.closed:
                        return
                    self.cond.wait(min(left, 1.0))
                    continue
            for change in pending:
                cursor = change.rv
                if wanted(change):
                    yield {"type": change.type, "object": copy.deepcopy(change.obj)}

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()


_NAMESPACES = _BY_PATH[("", "v1", "namespaces")]


def _fold_secret(obj: Obj) -> None:
    data = dict(obj.get("data") or {})
    for key, value in data.items():
        try:
            base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError):
            raise APIError(
                400,
                "BadRequest",
                f'Secret in version "v1" cannot be handled: data[{key}]: illegal base64 data',
            ) from None
    for key, value in (obj.pop("stringData", None) or {}).items():
        data[key] = base64.b64encode(str(value).encode()).decode()
    if data:
        obj["data"] = data


# -- HTTP -------------------------------------------------------------------------------

_PATH = re.compile(r"^/(?:api/(?P<cv>v1)|apis/(?P<g>[^/]+)/(?P<v>[^/]+))(?P<rest>(?:/[^/]+)*)/?$")


@dataclass
class Target:
    res: Resource
    namespace: str | None  # None: across namespaces (or cluster-scoped)
    name: str
    sub: str


def parse_target(path: str) -> Target:
    found = _PATH.match(path)
    if not found:
        raise APIError(404, "NotFound", f"the server could not find the requested resource: {path}")
    group, version = ("", "v1") if found["cv"] else (found["g"], found["v"])
    parts = [p for p in found["rest"].split("/") if p]
    namespace: str | None = None
    if len(parts) >= 3 and parts[0] == "namespaces":
        namespace, parts = parts[1], parts[2:]
    if not parts or len(parts) > 3:
        raise APIError(404, "NotFound", f"the server could not find the requested resource: {path}")
    res = _BY_PATH.get((group, version, parts[0]))
    if res is None:
        raise APIError(404, "NotFound", f"the server could not find the requested resource: {path}")
    name = parts[1] if len(parts) > 1 else ""
    sub = parts[2] if len(parts) > 2 else ""
    if sub and (sub != "status" or not res.status_subresource):
        raise APIError(404, "NotFound", f"the server could not find the requested resource: {path}")
    if res.namespaced and name and namespace is None:
        raise APIError(404, "NotFound", f"the server could not find the requested resource: {path}")
    return Target(res, namespace if res.namespaced else None, name, sub)


_VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]


def _resource_list(group: str, version: str) -> Obj | None:
    found = [r for r in RESOURCES if (r.group, r.version) == (group, version)]
    if not found:
        return None
    items: list[Obj] = []
    for res in found:
        base = {"namespaced": res.namespaced, "kind": res.kind}
        items.append(
            {**base, "name": res.plural, "singularName": res.kind.lower(), "verbs": _VERBS}
        )
        if res.status_subresource:
            items.append(
                {
                    **base,
                    "name": f"{res.plural}/status",
                    "singularName": "",
                    "verbs": ["get", "patch", "update"],
                }
            )
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": found[0].api_version,
        "resources": items,
    }


def discovery(path: str, url: str) -> Obj | None:
    """The discovery documents kubectl reads first (None: not a discovery path)."""
    path = path.rstrip("/")
    if path == "/version":
        return {"major": "1", "minor": "30", "gitVersion": "v1.30.0-virtrigaud-emulator"}
    if path == "/api":
        return {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": url.removeprefix("http://")}
            ],
        }
    if path == "/apis":
        groups: dict[str, list[str]] = {}
        for res in RESOURCES:
            if res.group and res.version not in groups.setdefault(res.group, []):
                groups[res.group].append(res.version)
        return {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [
                {
                    "name": name,
                    "versions": [{"groupVersion": f"{name}/{v}", "version": v} for v in versions],
                    "preferredVersion": {
                        "groupVersion": f"{name}/{versions[0]}",
                        "version": versions[0],
                    },
                }
                for name, versions in groups.items()
            ],
        }
    if path == "/api/v1":
        return _resource_list("", "v1")
    parts = path.split("/")
    if len(parts) == 4 and parts[1] == "apis":
        return _resource_list(parts[2], parts[3])
    return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: KubeAPIServer

    def log_message(self, format: str, *args: Any) -> None:
        self.server.requests.append(f"{self.command} {self.path}")

    # -- replies ------------------------------------------------------------------------

    def _reply(self, code: int, body: Obj) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError:
            raise APIError(400, "BadRequest", "the request body is not JSON") from None

    def _authorised(self) -> bool:
        token = self.server.token
        if token is None:
            return True
        scheme, _, given = self.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and given == token

    # -- verbs --------------------------------------------------------------------------

    def _handle(self, verb: str) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            body = self._body() if verb in ("POST", "PUT", "PATCH", "DELETE") else {}
            if not self._authorised():
                raise APIError(401, "Unauthorized", "Unauthorized")
            if url.path in ("/healthz", "/readyz", "/livez"):
                data = b"ok"
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            found = discovery(url.path, self.server.url) if verb == "GET" else None
            if found is not None:
                self._reply(200, found)
                return
            target = parse_target(url.path)
            self._dispatch(verb, target, query, body)
        except APIError as exc:
            self._reply(exc.code, exc.status())
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _dispatch(self, verb: str, t: Target, query: dict[str, str], body: Any) -> None:
        state = self.server.state
        ns = t.namespace or ""
        if verb == "GET" and not t.name:
            if query.get("watch", "").lower() in ("1", "t", "true"):  # Go's ParseBool
                self._watch(t, query)
                return
            labels, fields = query.get("labelSelector", ""), query.get("fieldSelector", "")
            self._reply(200, state.list(t.res, t.namespace, labels, fields))
        elif verb == "GET":
            self._reply(200, state.get(t.res, ns, t.name))
        elif verb == "POST" and not t.name:
            if t.res.namespaced and t.namespace is None:
                raise APIError(405, "MethodNotAllowed", "create needs a namespace in the path")
            self._reply(201, state.create(t.res, ns, body))
        elif verb == "PUT" and t.name:
            self._reply(200, state.replace(t.res, ns, t.name, body, t.sub))
        elif verb == "PATCH" and t.name:
            kind = self.headers.get("Content-Type", "")
            if "merge-patch" not in kind:
                raise APIError(415, "UnsupportedMediaType", f"unsupported patch type {kind!r}")
            self._reply(200, state.patch(t.res, ns, t.name, body, t.sub))
        elif verb == "DELETE" and t.name:
            self._reply(
                200, state.delete(t.res, ns, t.name, body if isinstance(body, dict) else {})
            )
        else:
            raise APIError(405, "MethodNotAllowed", f"{verb} is not supported here")

    def _watch(self, t: Target, query: dict[str, str]) -> None:
        timeout = float(query.get("timeoutSeconds") or self.server.max_watch_seconds)
        deadline = time.monotonic() + min(timeout, self.server.max_watch_seconds)
        events = self.server.state.watch(
            t.res,
            t.namespace,
            since=query.get("resourceVersion", ""),
            labels=query.get("labelSelector", ""),
            fields=query.get("fieldSelector", ""),
            deadline=deadline,
        )
        first = next(events, None)  # selector errors are raised before any header
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.server.watches_served += 1
        try:
            if first is not None:
                self._chunk(json.dumps(first).encode() + b"\n")
                for event in events:
                    self._chunk(json.dumps(event).encode() + b"\n")
            self._chunk(b"")
        except (BrokenPipeError, ConnectionResetError):
            return

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")


class KubeAPIServer(ThreadingHTTPServer):
    """The emulator on ``127.0.0.1:<port>``; ``start()`` serves it in a thread."""

    daemon_threads = True

    def __init__(
        self,
        port: int = 0,
        *,
        token: str | None = None,
        history: int = 1000,
        max_watch_seconds: float = 300.0,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.tls = tls is not None
        if tls is not None:  # (certificate, key): serve HTTPS, as a real API server does
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            self.socket = context.wrap_socket(self.socket, server_side=True)
        self.state = State(history)
        self.token = token
        self.max_watch_seconds = max_watch_seconds
        self.requests: deque[str] = deque(maxlen=5000)
        self.watches_served = 0
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, address = super().get_request()
        with self._conns_lock:
            self._conns.add(conn)
        return conn, address

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client closing its watch mid-stream is normal, not worth a traceback."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"{'https' if self.tls else 'http'}://{host!s}:{port}"

    def start(self) -> KubeAPIServer:
        self._thread = threading.Thread(target=self.serve_forever, name="kubeapi", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and drop every open connection (keep-alive ones too), as a
        server that went away would."""
        self.state.close()
        self.shutdown()
        self.server_close()
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(10)

    def kubeconfig(self, namespace: str = "default") -> Obj:
        """A kubeconfig document for this server (token auth when configured)."""
        user: Obj = {"token": self.token} if self.token else {}
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": user}],
            "contexts": [
                {
                    "name": "emulator",
                    "context": {"cluster": "emulator", "user": "tester", "namespace": namespace},
                }
            ],
            "current-context": "emulator",
        }
