"""The PVE API client: login, typed errors and task (UPID) waiting.

Everything the provider asks Proxmox goes through ``PveApi``. It wraps proxmoxer's
HTTPS backend and turns its exceptions into the typed errors of ``virtrigaud.errors``
at this one edge:

* HTTP 401 / a refused login -> ``AuthenticationError`` (the message never carries the
  credential); 403 -> ``PermissionDenied``; 595 (node unreachable) and connection
  errors -> ``Unavailable``; read timeouts -> ``Timeout``;
* PVE reports most refusals as HTTP 500 with a message ("Configuration file ... does
  not exist", "storage 'x' does not exist", "VM is locked"); ``classify`` maps those
  messages to NotFound / AlreadyExists / Conflict / OutOfSpace / FailedPrecondition.

Long PVE operations answer with a UPID. ``wait_task`` polls
``/nodes/{node}/tasks/{upid}/status`` until ``status == "stopped"`` and checks
``exitstatus``: anything but ``OK`` raises the classified error carrying the exit
status and the tail of the task log. Cancelling the provider task stops the wait (the
PVE task itself may still run; the caller undoes what it can).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from proxmoxer import ProxmoxAPI
from proxmoxer.core import AuthenticationError as PxAuthError
from proxmoxer.core import ResourceException

from virtrigaud import errors
from virtrigaud.logging import get_logger

log = get_logger("virtrigaud.proxmox")

DEFAULT_PORT = 8006
POLL_SECONDS = 0.2
LOG_TAIL = 10

_NOT_FOUND = re.compile(
    r"does not exist|not found|no such|unable to find|unknown (?:vm|storage|node)", re.I
)
_EXISTS = re.compile(r"already exists|already used|already defined", re.I)
_CONFLICT = re.compile(r"locked|got timeout|can't lock|checksum mismatch \(file change", re.I)
_SPACE = re.compile(r"no space left|not enough space|out of space", re.I)


def classify(message: str) -> type[errors.VirtrigaudError]:
    """The error class for a PVE refusal message."""
    if _NOT_FOUND.search(message):
        return errors.NotFound
    if _EXISTS.search(message):
        return errors.AlreadyExists
    if _SPACE.search(message):
        return errors.OutOfSpace
    if _CONFLICT.search(message):
        return errors.Conflict
    return errors.FailedPrecondition


@dataclass(frozen=True)
class Credentials:
    """API credentials from the Provider's Secret (see ``from_secret``)."""

    user: str  # user@realm
    token_name: str = ""
    token_secret: str = ""
    password: str = ""

    @property
    def is_token(self) -> bool:
        return bool(self.token_name)

    def __repr__(self) -> str:
        return f"Credentials(user={self.user!r}, token={self.is_token})"

    @classmethod
    def from_secret(cls, secret: Mapping[str, str]) -> Credentials:
        """``tokenId`` (``user@realm!name``) + ``tokenSecret``, or ``username`` +
        ``password`` (ticket login)."""
        token_id = secret.get("tokenId", "").strip()
        if token_id:
            user, sep, name = token_id.partition("!")
            if not sep or not user or not name or "@" not in user:
                raise errors.InvalidArgument("tokenId: must look like user@realm!tokenname")
            if not secret.get("tokenSecret"):
                raise errors.InvalidArgument("tokenSecret: required with tokenId")
            return cls(user=user, token_name=name, token_secret=secret["tokenSecret"])
        user = secret.get("username", "").strip()
        if user and secret.get("password"):
            if "@" not in user:
                user += "@pam"
            return cls(user=user, password=secret["password"])
        raise errors.InvalidArgument(
            "credentials: give tokenId + tokenSecret (API token) or username + password"
        )


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    @classmethod
    def parse(cls, endpoint: str) -> Endpoint:
        """``https://pve.example:8006`` (or ``pve.example[:port]``)."""
        text = endpoint.strip()
        if not text:
            raise errors.InvalidArgument("endpoint: the PVE API URL is required")
        parts = urlsplit(text if "://" in text else f"https://{text}")
        if parts.scheme != "https" or not parts.hostname:
            raise errors.InvalidArgument(f"endpoint: {endpoint!r} is not an https:// URL")
        return cls(parts.hostname, parts.port or DEFAULT_PORT)


def _message(exc: ResourceException) -> str:
    parts = [str(exc.status_message or "").strip(), str(exc.content or "").strip()]
    if exc.errors:
        parts.append(str(exc.errors))
    return ": ".join(p for p in parts if p) or f"HTTP {exc.status_code}"


def translate(exc: BaseException, what: str) -> errors.VirtrigaudError:  # noqa: PLR0911 - one table
    """A typed error for a proxmoxer / requests exception raised while doing ``what``."""
    if isinstance(exc, errors.VirtrigaudError):
        return exc
    if isinstance(exc, PxAuthError):
        return errors.AuthenticationError(f"{what}: PVE refused the login (check the Secret)")
    if isinstance(exc, ResourceException):
        status, message = int(exc.status_code), _message(exc)
        if status == 401:
            return errors.AuthenticationError(
                f"{what}: PVE rejected the credentials (HTTP 401: {exc.status_message})"
            )
        if status == 403:
            return errors.PermissionDenied(f"{what}: {message}")
        if status == 400:
            return errors.InvalidArgument(f"{what}: {message}")
        if status in (595, 596, 502, 503, 504):
            return errors.Unavailable(f"{what}: {message}")
        return classify(message)(f"{what}: {message}")
    if isinstance(exc, requests.exceptions.SSLError):
        return errors.Unavailable(f"{what}: TLS verification of the PVE API failed: {exc}")
    if isinstance(exc, requests.exceptions.Timeout):
        return errors.Timeout(f"{what}: the PVE API did not answer in time")
    if isinstance(exc, requests.exceptions.RequestException):
        return errors.Unavailable(f"{what}: cannot reach the PVE API: {type(exc).__name__}")
    return errors.InternalError(f"{what}: {type(exc).__name__}: {exc}")


class PveApi:
    """A logged-in PVE API session (re-logs in when a ticket expires)."""

    def __init__(
        self,
        endpoint: Endpoint,
        credentials: Credentials,
        *,
        verify: bool | str = True,
        timeout: float = 30.0,
    ) -> None:
        self.endpoint = endpoint
        self._credentials = credentials
        self._verify = verify
        self._timeout = timeout
        self._lock = threading.Lock()
        self._api: Any = None

    @property
    def user(self) -> str:
        return self._credentials.user

    @property
    def is_token(self) -> bool:
        return self._credentials.is_token

    def _connect(self) -> Any:
        creds = self._credentials
        common: dict[str, Any] = {
            "port": self.endpoint.port,
            "user": creds.user,
            "verify_ssl": self._verify,
            "timeout": self._timeout,
            "backend": "https",
            "service": "PVE",
        }
        try:
            if creds.is_token:
                return ProxmoxAPI(
                    self.endpoint.host,
                    token_name=creds.token_name,
                    token_value=creds.token_secret,
                    **common,
                )
            return ProxmoxAPI(self.endpoint.host, password=creds.password, **common)
        except BaseException as exc:
            raise translate(exc, "login") from None

    def _session(self) -> Any:
        with self._lock:
            if self._api is None:
                self._api = self._connect()
            return self._api

    def _call(self, method: str, path: str, params: Mapping[str, Any] | None) -> Any:
        api = self._session()
        resource = api(path.strip("/"))
        try:
            return getattr(resource, method)(**dict(params or {}))
        except ResourceException as exc:
            if exc.status_code == 401 and not self._credentials.is_token:
                with self._lock:  # the ticket expired: log in once more
                    self._api = None
                try:
                    return getattr(self._session()(path.strip("/")), method)(**dict(params or {}))
                except BaseException as again:
                    raise translate(again, f"{method.upper()} {path}") from None
            raise translate(exc, f"{method.upper()} {path}") from None
        except errors.VirtrigaudError:
            raise
        except BaseException as exc:
            raise translate(exc, f"{method.upper()} {path}") from None

    def get(self, path: str, **params: Any) -> Any:
        return self._call("get", path, params)

    def post(self, path: str, **params: Any) -> Any:
        return self._call("post", path, params)

    def put(self, path: str, **params: Any) -> Any:
        return self._call("put", path, params)

    def delete(self, path: str, **params: Any) -> Any:
        return self._call("delete", path, params)

    # -- facts ------------------------------------------------------------------------

    def version(self) -> tuple[int, int, str]:
        """(major, minor, text) of the PVE release."""
        data = self.get("version")
        text = str(data.get("version", ""))
        found = re.match(r"(\d+)\.(\d+)", text)
        if found is None:
            return (0, 0, text)
        return (int(found.group(1)), int(found.group(2)), text)

    # -- tasks ------------------------------------------------------------------------

    def wait_task(
        self,
        node: str,
        upid: Any,
        what: str,
        cancel: threading.Event | None = None,
        timeout: float = 3600.0,
    ) -> None:
        """Wait for the task ``upid`` to stop; raise its failure (module docstring)."""
        if not upid:
            return  # a synchronous answer: nothing to wait for
        upid = str(upid)
        deadline = time.monotonic() + timeout
        while True:
            status = self.get(f"nodes/{node}/tasks/{upid}/status")
            if status.get("status") == "stopped":
                break
            if time.monotonic() >= deadline:
                raise errors.Timeout(f"{what}: PVE task {upid} still running after {timeout:.0f}s")
            if cancel is not None and cancel.wait(POLL_SECONDS):
                raise errors.Cancelled(f"{what}: cancelled while PVE task {upid} runs")
            if cancel is None:
                time.sleep(POLL_SECONDS)
        exit_status = str(status.get("exitstatus", ""))
        if exit_status == "OK":
            return
        tail = self.task_log_tail(node, upid)
        message = f"{what}: PVE task {upid} failed: {exit_status or 'no exit status'}"
        if tail:
            message += " | log: " + " / ".join(tail)
        raise classify(exit_status)(message)

    def task_log_tail(self, node: str, upid: str, lines: int = LOG_TAIL) -> list[str]:
        try:
            entries = self.get(f"nodes/{node}/tasks/{upid}/log", start=0, limit=500)
        except errors.VirtrigaudError:
            return []
        text = [str(e.get("t", "")) for e in entries if isinstance(e, Mapping)]
        return [t for t in text if t][-lines:]

    def run_task(  # noqa: PLR0917 - mirrors the PVE call: node, method, path, ...
        self,
        node: str,
        method: str,
        path: str,
        what: str,
        cancel: threading.Event | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        """Start a PVE task with ``method path`` and wait for it."""
        upid = self._call(method, path, params)
        self.wait_task(node, upid, what, cancel)
