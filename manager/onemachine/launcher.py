"""Start each Provider's gRPC server as a local child process (one-machine mode).

For a Provider object the launcher runs::

    python -m virtrigaud.cli provider --type T --listen 127.0.0.1:PORT
        --endpoint <spec.endpoint> [--credentials-file F] [--option k=v ...]

* credentials: the Secret named by ``spec.credentialsSecretRef``, decoded, written as
  JSON to a 0600 temporary file that is deleted when the provider stops;
* options: ``spec.defaults`` (``storagePool=...``, ``network=...``) plus annotations
  ``options.virtrigaud.io/<key>: <value>`` for provider options that have no field
  (e.g. ``options.virtrigaud.io/domainType: qemu`` for the libvirt provider);
* environment: inherited, with ``spec.allowedStorageHosts`` added to
  ``VIRTRIGAUD_STORAGE_ALLOWED_HOSTS``;
* output goes to ``<state dir>/logs/<namespace>.<name>.log``.

Once the health service answers SERVING, ``status.endpoint`` is set to
``127.0.0.1:PORT``; the ``Launched`` condition says whether the process started (and
why not, with the tail of its log). ``stop_all`` sends SIGTERM (SIGKILL after ``grace`` seconds),
deletes the credential files and clears ``status.endpoint``. Providers are started
afresh on every run; the store (and so every object's status) survives.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from manager.api import Provider
from manager.providerclient import ProviderClient, RetryPolicy
from manager.store.base import Obj, ObjectKey, ObjectStore
from manager.store.objects import now_text
from virtrigaud import errors
from virtrigaud.logging import get_logger

log = get_logger("virtrigaud.launcher")

OPTION_ANNOTATION = "options.virtrigaud.io/"
ALLOWED_HOSTS_ENV = "VIRTRIGAUD_STORAGE_ALLOWED_HOSTS"
DEFAULT_OPTIONS = (
    ("storage_pool", "storagePool"),
    ("datastore", "datastore"),
    ("node", "node"),
    ("network", "network"),
    ("folder", "folder"),
    ("resource_pool", "resourcePool"),
    ("cluster", "cluster"),
)
PR_SET_PDEATHSIG = 1
LAUNCHED = "Launched"  # condition type the launcher owns in Provider status


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def provider_options(provider: Provider) -> dict[str, str]:
    options: dict[str, str] = {}
    defaults = provider.spec.defaults
    if defaults is not None:
        for attr, key in DEFAULT_OPTIONS:
            value = getattr(defaults, attr)
            if value:
                options[key] = str(value)
    for name, value in provider.metadata.annotations.items():
        if name.startswith(OPTION_ANNOTATION) and name != OPTION_ANNOTATION:
            options[name.removeprefix(OPTION_ANNOTATION)] = value
    return options


def _die_with_parent() -> None:
    """Child side: get SIGTERM when the parent dies (Linux), so no provider outlives a
    killed ``virtrigaud run``."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class LaunchedProvider:
    key: ObjectKey
    process: subprocess.Popen[bytes]
    endpoint: str
    log_path: Path
    credentials_file: Path | None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class ProviderLauncher:
    def __init__(
        self,
        store: ObjectStore,
        state_dir: Path,
        *,
        start_timeout: float = 90.0,
        grace: float = 20.0,
        record_status: bool = True,
    ) -> None:
        self.store = store
        self.record_status = record_status
        self.state_dir = state_dir
        self.start_timeout = start_timeout
        self.grace = grace
        self.running: dict[ObjectKey, LaunchedProvider] = {}
        self.failed: dict[ObjectKey, str] = {}

    def __enter__(self) -> ProviderLauncher:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop_all()

    # -- starting -----------------------------------------------------------------------

    def start_all(self, only: ObjectKey | None = None) -> None:
        """Start every Provider of the store (or just ``only``); failures are recorded
        in ``failed`` and in the Provider's status, never raised."""
        for obj in self.store.list("Provider"):
            key = ObjectKey.of(obj)
            if only is not None and key != only:
                continue
            try:
                self.start(obj)
            except errors.VirtrigaudError as exc:
                self.failed[key] = exc.message
                log.error("provider_start_failed", provider=str(key), error=exc.message)
                self._set_endpoint(key, None, ("StartFailed", f"provider process: {exc}"))

    def start(self, obj: Obj) -> LaunchedProvider:
        provider = Provider.from_dict(obj)
        key = ObjectKey.of(obj)
        creds = self._credentials_file(provider, key)
        try:
            launched = self._spawn(provider, key, creds)
            self._wait_serving(launched)
        except BaseException:
            if creds is not None:
                creds.unlink(missing_ok=True)
            raise
        self.running[key] = launched
        self._set_endpoint(key, launched.endpoint, ("Serving", f"serving at {launched.endpoint}"))
        log.info("provider_started", provider=str(key), endpoint=launched.endpoint)
        return launched

    def _credentials_file(self, provider: Provider, key: ObjectKey) -> Path | None:
        ref = provider.spec.credentials_secret_ref
        if ref is None:
            return None
        data = self.store.read_secret(ref.namespace_or(key.namespace), ref.name)
        fd, name = tempfile.mkstemp(prefix=f"vr-cred-{key.name}-", suffix=".json")
        with os.fdopen(fd, "w") as handle:  # mkstemp: mode 0600
            json.dump(data, handle)
        return Path(name)

    def _command(self, provider: Provider, listen: str, creds: Path | None) -> list[str]:
        cmd = [sys.executable, "-m", "virtrigaud.cli", "provider", "--type"]
        cmd += [provider.spec.type.value, "--listen", listen, "--endpoint", provider.spec.endpoint]
        cmd += ["--grace", str(max(1.0, self.grace / 2)), "--parent-pid", str(os.getpid())]
        if creds is not None:
            cmd += ["--credentials-file", str(creds)]
        for key, value in provider_options(provider).items():
            cmd += ["--option", f"{key}={value}"]
        return cmd

    def _environment(self, provider: Provider) -> dict[str, str]:
        env = dict(os.environ)
        hosts = [h for h in env.get(ALLOWED_HOSTS_ENV, "").split(",") if h.strip()]
        hosts += [h for h in provider.spec.allowed_storage_hosts if h not in hosts]
        if hosts:
            env[ALLOWED_HOSTS_ENV] = ",".join(hosts)
        return env

    def _spawn(self, provider: Provider, key: ObjectKey, creds: Path | None) -> LaunchedProvider:
        endpoint = f"127.0.0.1:{free_port()}"
        log_path = self.state_dir / "logs" / f"{key.namespace}.{key.name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        out: IO[bytes]
        with log_path.open("ab") as out:
            process = subprocess.Popen(
                self._command(provider, endpoint, creds),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self._environment(provider),
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - only calls prctl
            )
        return LaunchedProvider(key, process, endpoint, log_path, creds)

    def _wait_serving(self, launched: LaunchedProvider) -> None:
        deadline = time.monotonic() + self.start_timeout
        with ProviderClient(launched.endpoint, timeout=2, retry=RetryPolicy(attempts=1)) as probe:
            while not probe.health(timeout=1.0):
                code = launched.process.poll()
                if code is not None:
                    raise errors.Unavailable(
                        f"provider {launched.key} exited with code {code}:\n{launched.log_tail()}"
                    )
                if time.monotonic() > deadline:
                    self._terminate(launched)
                    raise errors.Timeout(
                        f"provider {launched.key} did not serve within {self.start_timeout:.0f}s"
                        f":\n{launched.log_tail()}"
                    )
                time.sleep(0.1)

    # -- status -------------------------------------------------------------------------

    def _set_endpoint(
        self, key: ObjectKey, endpoint: str | None, launched: tuple[str, str]
    ) -> None:
        """Write ``status.endpoint`` and the ``Launched`` condition (reason, message)."""
        if not self.record_status:
            return
        reason, message = launched
        condition = {
            "type": LAUNCHED,
            "status": "True" if endpoint else "False",
            "reason": reason,
            "message": message,
            "lastTransitionTime": now_text(),
        }
        for _ in range(10):
            try:
                obj = self.store.get(key.kind, key.namespace, key.name)
            except errors.NotFound:
                return
            status = dict(obj.get("status") or {})
            if endpoint:
                status["endpoint"] = endpoint
            else:
                status.pop("endpoint", None)
                status["ready"] = False
                status["message"] = message
            others = [c for c in status.get("conditions") or [] if c.get("type") != LAUNCHED]
            status["conditions"] = [*others, condition]
            try:
                self.store.update_status({**obj, "status": status})
                return
            except errors.Conflict:
                continue

    # -- stopping -----------------------------------------------------------------------

    def _terminate(self, launched: LaunchedProvider) -> None:
        process = launched.process
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(self.grace)
            except subprocess.TimeoutExpired:
                log.warning("provider_killed", provider=str(launched.key))
                process.kill()
                process.wait(10)
        if launched.credentials_file is not None:
            launched.credentials_file.unlink(missing_ok=True)

    def stop(self, key: ObjectKey) -> None:
        launched = self.running.pop(key, None)
        if launched is None:
            return
        self._terminate(launched)
        with contextlib.suppress(errors.VirtrigaudError):
            self._set_endpoint(key, None, ("Stopped", "provider process stopped"))
        log.info("provider_stopped", provider=str(key), code=launched.process.returncode)

    def stop_all(self) -> None:
        for launched in self.running.values():  # signal all first, then wait for each
            if launched.process.poll() is None:
                launched.process.send_signal(signal.SIGTERM)
        for key in list(self.running):
            self.stop(key)
