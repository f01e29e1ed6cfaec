"""nginx with WebDAV as a real HTTP storage server for tests.

``start_nginx_dav()`` writes an nginx.conf into a prefix directory and runs nginx in the
foreground (``daemon off; master_process off;`` -- as root, a worker would run as
``nobody`` and fail to rename uploaded bodies) on a free loopback port. Locations:

- ``/bearer/``: requires ``Authorization: Bearer <token>`` (a ``map`` on the header;
  anything else gets 401);
- ``/basic/``: ``auth_basic`` with a generated htpasswd ({SSHA} hash);
- ``/open/``: no authentication;
- ``/small/``: no authentication, ``client_max_body_size`` of ``small_limit`` (413);
- ``/unavailable/`` answers every request with 503, ``/full/`` with 507.

All of them allow PUT DELETE MKCOL COPY MOVE and PROPFIND/OPTIONS (dav-ext module),
with ``create_full_put_path on`` and ``client_max_body_size 0`` (no limit) except
``/small/``. Files live under ``root / <location>`` so tests can tamper with them
(``path_of``). With ``tls=(cert, key)`` the server speaks HTTPS.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.servers.net import LOOPBACK, free_port, terminate, wait_for_port

NGINX = "/usr/sbin/nginx"
DAV_EXT_MODULE = "/usr/lib/nginx/modules/ngx_http_dav_ext_module.so"
LOCATIONS = ("bearer", "basic", "open", "small")

_CONF = """\
load_module {dav_ext};
daemon off;
master_process off;
worker_processes 1;
error_log {prefix}/logs/error.log info;
pid {prefix}/nginx.pid;
events {{ worker_connections 256; }}
http {{
  access_log {prefix}/logs/access.log;
  client_body_temp_path {prefix}/tmp/body;
  proxy_temp_path {prefix}/tmp/proxy;
  fastcgi_temp_path {prefix}/tmp/fastcgi;
  uwsgi_temp_path {prefix}/tmp/uwsgi;
  scgi_temp_path {prefix}/tmp/scgi;
  client_max_body_size 0;
  sendfile on;
  map $http_authorization $vt_bearer_ok {{
    default 0;
    "Bearer {token}" 1;
  }}
  server {{
    listen {host}:{port}{ssl};
    {tls}
    root {root};
    dav_methods PUT DELETE MKCOL COPY MOVE;
    dav_ext_methods PROPFIND OPTIONS;
    create_full_put_path on;
    dav_access user:rw group:r all:r;
    location /bearer/ {{
      if ($vt_bearer_ok = 0) {{ return 401; }}
    }}
    location /basic/ {{
      auth_basic "virtrigaud-test";
      auth_basic_user_file {prefix}/htpasswd;
    }}
    location /open/ {{ }}
    location /small/ {{ client_max_body_size {small_limit}; }}
    location /unavailable/ {{ return 503; }}
    location /full/ {{ return 507; }}
  }}
}}
"""


def ssha_entry(username: str, password: str) -> str:
    """An htpasswd line with an RFC 2307 {SSHA} hash (nginx supports it natively)."""
    salt = secrets.token_bytes(8)
    digest = hashlib.sha1(password.encode() + salt).digest()  # the {SSHA} scheme is SHA-1
    return f"{username}:{{SSHA}}{base64.b64encode(digest + salt).decode()}\n"


@dataclass
class NginxDav:
    """A running nginx WebDAV server; see the module docstring."""

    prefix: Path
    port: int
    token: str
    username: str
    password: str
    small_limit: str
    tls: tuple[Path, Path] | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _owns_prefix: bool = field(default=False, repr=False)

    @property
    def root(self) -> Path:
        return self.prefix / "www"

    @property
    def base_url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{LOOPBACK}:{self.port}"

    @property
    def bearer_url(self) -> str:
        return f"{self.base_url}/bearer/"

    @property
    def basic_url(self) -> str:
        return f"{self.base_url}/basic/"

    @property
    def open_url(self) -> str:
        return f"{self.base_url}/open/"

    @property
    def small_url(self) -> str:
        return f"{self.base_url}/small/"

    def url_of(self, location: str) -> str:
        """The base URL of a location (``bearer``, ``basic``, ``open``, ``unavailable``...)."""
        return f"{self.base_url}/{location}/"

    def access_log(self) -> list[str]:
        """Request lines nginx logged so far (``METHOD /path HTTP/1.1`` STATUS ...)."""
        try:
            return (self.prefix / "logs" / "access.log").read_text(errors="replace").splitlines()
        except OSError:
            return []

    def path_of(self, location: str, key: str) -> Path:
        """The file behind ``<location>/<key>`` (to tamper with objects in tests)."""
        return self.root / location / key

    def _write_config(self) -> Path:
        for sub in ("logs", "tmp", *(f"www/{name}" for name in LOCATIONS)):
            (self.prefix / sub).mkdir(parents=True, exist_ok=True)
        (self.prefix / "htpasswd").write_text(ssha_entry(self.username, self.password))
        tls = ""
        if self.tls:
            cert, key = self.tls
            tls = f"ssl_certificate {cert}; ssl_certificate_key {key};"
        conf = _CONF.format(
            dav_ext=DAV_EXT_MODULE,
            prefix=self.prefix,
            root=self.root,
            host=LOOPBACK,
            port=self.port,
            ssl=" ssl" if self.tls else "",
            tls=tls,
            token=self.token,
            small_limit=self.small_limit,
        )
        path = self.prefix / "nginx.conf"
        path.write_text(conf)
        return path

    def start(self, timeout: float = 20.0) -> None:
        conf = self._write_config()
        with open(self.prefix / "logs" / "stdout.log", "ab") as log:
            self.process = subprocess.Popen(
                [NGINX, "-p", str(self.prefix), "-c", str(conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            wait_for_port(self.port, self.process, timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: nginx's fast shutdown, open connections are cut."""
        if self.process is not None:
            terminate(self.process, timeout)
            self.process = None

    def restart(self, timeout: float = 20.0) -> None:
        self.stop()
        self.start(timeout)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def error_log(self) -> str:
        try:
            return (self.prefix / "logs" / "error.log").read_text(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        self.stop()
        if self._owns_prefix:
            shutil.rmtree(self.prefix, ignore_errors=True)

    def __enter__(self) -> NginxDav:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_nginx_dav(
    prefix: Path | None = None,
    *,
    token: str | None = None,
    username: str = "vt-user",
    password: str | None = None,
    small_limit: str = "64k",
    tls: tuple[Path, Path] | None = None,
    timeout: float = 20.0,
) -> NginxDav:
    """Start nginx WebDAV in ``prefix`` (a new temp dir when None) on a free port."""
    owns = prefix is None
    root = Path(tempfile.mkdtemp(prefix="vt-nginx-")) if prefix is None else prefix
    root.mkdir(parents=True, exist_ok=True)
    last: Exception | None = None
    for _ in range(3):  # a port can be taken between choosing and binding it
        server = NginxDav(
            prefix=root,
            port=free_port(),
            token=token or secrets.token_urlsafe(24),
            username=username,
            password=password or secrets.token_urlsafe(16),
            small_limit=small_limit,
            tls=tls,
            _owns_prefix=owns,
        )
        try:
            server.start(timeout)
            return server
        except (RuntimeError, TimeoutError) as exc:
            last = exc
    raise RuntimeError(f"nginx did not start: {last}")
