"""What the vSphere provider is told at start-up, checked once.

Endpoint: ``https://vcenter.example.com/sdk``, ``https://esxi01``, ``vcenter:8443`` or a
bare host name; the scheme must be https (the SOAP API and the datastore file
endpoint carry the session cookie), the port defaults to 443 and the path to ``/sdk``.

Credentials (the Provider's Secret): ``username``, ``password``, and optionally
``ca.crt`` -- PEM certificates to trust for the endpoint (e.g. the vCenter's own CA,
VMCA). Options: see ``docs/providers/vsphere.md``; ``caFile`` names a PEM file
(mounted) to trust, and ``insecureSkipTLSVerify=true`` -- only when asked for --
turns certificate verification off. Without either the system trust store is used.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from providers.common.scratch import scratch_options
from providers.runtime.driver import ProviderConfig
from virtrigaud import errors

DEFAULT_PORT = 443
DEFAULT_PATH = "/sdk"
_TRUE = ("true", "yes", "1")
_FALSE = ("false", "no", "0", "")


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int = DEFAULT_PORT
    path: str = DEFAULT_PATH

    @property
    def base_url(self) -> str:
        """``https://host:port`` (IPv6 hosts bracketed), for the datastore file endpoint."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.base_url}{self.path}"


@dataclass(frozen=True)
class TlsSettings:
    """How the endpoint's certificate is checked (verified unless asked otherwise)."""

    ca_file: str | None = None
    ca_data: str | None = None
    insecure: bool = False

    def context(self) -> ssl.SSLContext:
        if self.insecure:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return ctx
        try:
            return ssl.create_default_context(cafile=self.ca_file, cadata=self.ca_data)
        except (OSError, ssl.SSLError, ValueError) as exc:
            where = "caFile" if self.ca_file else "ca.crt"
            raise errors.InvalidArgument(f"{where}: not usable PEM certificates ({exc})") from exc


@dataclass(frozen=True)
class Settings:
    endpoint: Endpoint
    username: str = field(repr=False)
    password: str = field(repr=False)
    tls: TlsSettings = TlsSettings()
    datacenter: str = ""
    datastore: str = ""
    resource_pool: str = ""
    cluster: str = ""
    folder: str = ""
    connect_timeout: float = 30.0
    task_timeout: float = 4 * 3600.0
    scratch_dir: str | None = None
    scratch_limit: int | None = None
    export_method: str = "datastore"  # datastore | nfc


EXPORT_METHODS = ("datastore", "nfc")


def parse_endpoint(value: str) -> Endpoint:
    """The vCenter / ESXi SDK URL (see the module docstring)."""
    text = value.strip()
    if not text:
        raise errors.InvalidArgument("endpoint: required (e.g. https://vcenter.example.com/sdk)")
    if "://" not in text:
        text = f"https://{text}"
    parts = urlsplit(text)
    if parts.scheme.lower() != "https":
        raise errors.InvalidArgument(f"endpoint: {value!r} must use https")
    if parts.username or parts.password:
        raise errors.InvalidArgument("endpoint: put credentials in the Secret, not in the URL")
    if not parts.hostname:
        raise errors.InvalidArgument(f"endpoint: {value!r} has no host")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise errors.InvalidArgument(f"endpoint: {value!r} has an invalid port") from exc
    path = parts.path.rstrip("/") or DEFAULT_PATH
    return Endpoint(parts.hostname, port, path)


def parse_bool(options: Mapping[str, str], key: str) -> bool:
    value = options.get(key, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise errors.InvalidArgument(f"{key}: {options[key]!r} is not true or false")


def parse_seconds(options: Mapping[str, str], key: str, default: float) -> float:
    text = options.get(key, "")
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise errors.InvalidArgument(f"{key}: {text!r} is not a positive number of seconds")
    return value


def from_config(config: ProviderConfig) -> Settings:
    """Settings from the Provider's endpoint, Secret and options (InvalidArgument if bad)."""
    creds = config.credentials
    options = config.options
    username = creds.get("username", "")
    password = creds.get("password", "")
    if not username or not password:
        raise errors.InvalidArgument("credentials: the Secret needs username and password")
    ca_file = options.get("caFile") or None
    if ca_file is not None and not os.path.isfile(ca_file):
        raise errors.InvalidArgument(f"caFile: {ca_file!r} is not a file")
    tls = TlsSettings(
        ca_file=ca_file,
        ca_data=creds.get("ca.crt") or None,
        insecure=parse_bool(options, "insecureSkipTLSVerify"),
    )
    tls.context()  # refuse unusable certificates at start-up
    scratch_dir, scratch_limit = scratch_options(options)
    method = options.get("exportMethod", "datastore") or "datastore"
    if method not in EXPORT_METHODS:
        raise errors.InvalidArgument(f"exportMethod: {method!r} is not datastore or nfc")
    return Settings(
        endpoint=parse_endpoint(config.endpoint),
        username=username,
        password=password,
        tls=tls,
        datacenter=options.get("datacenter", ""),
        datastore=options.get("datastore", ""),
        resource_pool=options.get("resourcePool", ""),
        cluster=options.get("cluster", ""),
        folder=options.get("folder", ""),
        connect_timeout=parse_seconds(options, "connectTimeout", 30.0),
        task_timeout=parse_seconds(options, "taskTimeout", 4 * 3600.0),
        scratch_dir=scratch_dir,
        scratch_limit=scratch_limit,
        export_method=method,
    )
