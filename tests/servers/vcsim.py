"""vcsim, the vSphere API simulator, for the vSphere provider's tests.

The binary is built from Debian's govmomi source by ``scripts/build-vcsim.sh`` (from
``tests/servers/vcsim/main.go``, into the gitignored ``.cache/vcsim``; rebuilt only
when main.go changes) the first time a session needs it. ``start_vcsim`` runs it on a
free loopback port with a username and password -- so the SOAP login really checks
them -- and HTTPS with a certificate of a throwaway CA (``tests.support.certs``), so
TLS verification stays on in the tests (``ca_file``). The model is vcsim's default
vCenter: datacenter ``DC0``, datastore ``LocalDS_0`` (a temporary local folder,
removed when vcsim stops), portgroups ``VM Network`` and ``DC0_DVPG0``, a cluster
``DC0_C0`` and a host ``DC0_H0``, four VMs (``DC0_H0_VM0`` ...).

``session_vcsim(config)`` gives the one vcsim of a pytest session (started on first
use, stopped at session end), shared by the provider tests and the conformance
target.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.servers.net import LOOPBACK, free_port, terminate, wait_for_port
from tests.support.certs import CertAuthority

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "scripts" / "build-vcsim.sh"
USERNAME = "virtrigaud"
DATACENTER = "DC0"
DATASTORE = "LocalDS_0"
PORTGROUP = "DC0_DVPG0"
NETWORK = "VM Network"

_KEY = pytest.StashKey["Vcsim"]()


def build_vcsim() -> Path:
    """The vcsim binary (built by scripts/build-vcsim.sh when missing or stale)."""
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=600, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"building vcsim failed:\n{result.stderr[-4000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


@dataclass
class Vcsim:
    binary: Path
    workdir: Path
    port: int = 0
    username: str = USERNAME
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12), repr=False)
    ca_file: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"https://{LOOPBACK}:{self.port}/sdk"

    @property
    def credentials(self) -> dict[str, str]:
        return {"username": self.username, "password": self.password}

    @property
    def options(self) -> dict[str, str]:
        """Provider options that trust this vcsim's certificate."""
        return {"caFile": str(self.ca_file)} if self.ca_file else {}

    def start(self, timeout: float = 30.0) -> None:
        ca = CertAuthority(self.workdir, "vcsim-test-ca")
        pair = ca.issue("vcsim", server=True)
        self.ca_file = ca.path
        self.port = free_port()
        env = dict(os.environ, VCSIM_PASSWORD=self.password, TMPDIR=str(self.workdir))
        log = open(self.workdir / "vcsim.log", "ab")  # noqa: SIM115 - lives with the process
        self.process = subprocess.Popen(
            [
                str(self.binary),
                "-listen",
                f"{LOOPBACK}:{self.port}",
                "-username",
                self.username,
                "-cert",
                str(pair.cert),
                "-key",
                str(pair.key),
                "-exit-with-parent",
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        log.close()
        try:
            wait_for_port(self.port, self.process, timeout)
            assert self.process.stdout is not None
            ready, _, _ = select.select([self.process.stdout], [], [], timeout)
            if not ready:
                raise TimeoutError("vcsim did not report its URL")
            json.loads(self.process.stdout.readline())
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process, 20)
            if self.process.stdout is not None:
                self.process.stdout.close()
            self.process = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def datastore_dir(self) -> Path:
        """The local folder behind datastore LocalDS_0 (vcsim makes it under TMPDIR)."""
        found = sorted(self.workdir.glob(f"govcsim-{DATACENTER}-{DATASTORE}-*"))
        if len(found) != 1:
            raise RuntimeError(f"expected one datastore folder in {self.workdir}, got {found}")
        return found[0]


def start_vcsim(workdir: Path) -> Vcsim:
    server = Vcsim(build_vcsim(), workdir)
    server.start()
    return server


def session_vcsim(config: pytest.Config) -> Vcsim:
    """The session's vcsim: built and started on first use, stopped at session end."""
    existing = config.stash.get(_KEY, None)
    if existing is not None and existing.running:
        return existing
    workdir = Path(tempfile.mkdtemp(prefix="vr-vcsim-"))
    server = start_vcsim(workdir)
    config.stash[_KEY] = server

    def cleanup() -> None:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    config.add_cleanup(cleanup)
    return server
