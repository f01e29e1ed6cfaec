"""A real OpenSSH server on loopback, as the "node" the Proxmox provider reaches.

``start(workdir)`` generates an ed25519 host key and user key under ``workdir``, writes
an ``sshd_config`` there (loopback only, a free port, public keys only,
``AuthorizedKeysFile`` in ``workdir``, the internal SFTP server) and runs Debian's
``/usr/sbin/sshd -D -e`` as a child process (not a daemon). Nothing outside ``workdir``
is changed.

The user is whoever runs the tests. Run as root, OpenSSH insists on its privilege
separation directory ``/run/sshd`` (normally made by the service unit); when it is
missing, rather than creating it on the host, sshd runs in a private mount namespace
(``unshare -m``, which needs CAP_SYS_ADMIN) with a tmpfs over ``/run`` that holds the
directory, so the host stays untouched.
"""

from __future__ import annotations

import getpass
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.servers.net import LOOPBACK, free_port, terminate, wait_for_port

SSHD = "/usr/sbin/sshd"


@dataclass
class SshServer:
    process: subprocess.Popen[bytes]
    port: int
    user: str
    host_key_pub: str  # "ssh-ed25519 AAAA..."
    user_key: str  # private key (OpenSSH PEM text)
    user_key_path: Path
    workdir: Path

    @property
    def known_hosts(self) -> str:
        """A known_hosts line for this server (OpenSSH's [host]:port form)."""
        return f"[{LOOPBACK}]:{self.port} {self.host_key_pub}\n"

    def stop(self) -> None:
        terminate(self.process, timeout=10)


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "virtrigaud-test", "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )


def make_key(path: Path) -> tuple[str, str]:
    """A new ed25519 key pair at ``path``; returns (private key text, public key line)."""
    _keygen(path)
    return path.read_text(), path.with_suffix(".pub").read_text().strip()


def start(workdir: Path) -> SshServer:
    if not os.path.exists(SSHD):
        raise RuntimeError(
            f"{SSHD} is missing: run scripts/install-system-deps.sh (openssh-server)"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    host_key = workdir / "ssh_host_ed25519_key"
    _keygen(host_key)
    user_key, user_pub = make_key(workdir / "id_ed25519")
    authorized = workdir / "authorized_keys"
    authorized.write_text(user_pub + "\n")
    authorized.chmod(0o600)
    port = free_port()
    config = workdir / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                f"ListenAddress {LOOPBACK}",
                f"HostKey {host_key}",
                "PidFile none",
                f"AuthorizedKeysFile {authorized}",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "MaxSessions 64",
                "MaxStartups 64:30:128",
                "Subsystem sftp internal-sftp",
                "",
            ]
        )
    )
    command = [SSHD, "-D", "-e", "-f", str(config)]
    if os.geteuid() == 0 and not os.path.isdir("/run/sshd"):
        if shutil.which("unshare") is None:
            raise RuntimeError("running as root needs unshare (util-linux) for sshd's /run/sshd")
        inner = shlex.join(command)
        command = [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            f"mount -t tmpfs tmpfs /run && mkdir -m 0755 /run/sshd && exec {inner}",
        ]
    log = (workdir / "sshd.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        wait_for_port(port, process, timeout=20)
    except BaseException:
        terminate(process, timeout=5)
        raise RuntimeError(
            f"sshd did not start: {(workdir / 'sshd.log').read_text(errors='replace')}"
        ) from None
    return SshServer(
        process=process,
        port=port,
        user=getpass.getuser(),
        host_key_pub=" ".join(host_key.with_suffix(".pub").read_text().split()[:2]),
        user_key=user_key,
        user_key_path=workdir / "id_ed25519",
        workdir=workdir,
    )
