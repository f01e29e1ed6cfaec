"""``virtrigaud provider --type proxmox`` as a process, configured like a provider pod:
the Secret mounted as a directory (one file per key, trailing newline stripped by the
loader), options on the command line."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from manager.providerclient import ProviderClient, RetryPolicy
from tests.providers.proxmox.env import BRIDGE, STORAGE, PveEnv
from tests.servers.net import free_port
from tests.support import venv_tool
from virtrigaud import errors
from virtrigaud.provider.v1 import provider_pb2 as pb

REPO = Path(__file__).resolve().parents[3]


def test_provider_process_serves_proxmox(pve_env: PveEnv, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    for key, value in pve_env.credentials().items():
        (secret / key).write_text(value + "\n")
    address = f"127.0.0.1:{free_port()}"
    options = [arg for k, v in pve_env.options().items() for arg in ("--option", f"{k}={v}")]
    proc = subprocess.Popen(
        [
            venv_tool("virtrigaud"),
            "provider",
            "--type",
            "proxmox",
            "--listen",
            address,
            "--endpoint",
            pve_env.pve_server.url,
            "--credentials-dir",
            str(secret),
            *options,
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        with ProviderClient(address, timeout=10, retry=RetryPolicy(attempts=1)) as client:
            while not client.health(timeout=1):
                assert proc.poll() is None, proc.communicate()[1]
                assert time.monotonic() < deadline, "provider never became healthy"
                time.sleep(0.1)
            assert client.get_capabilities().provider_type == "proxmox"
            checked = client.validate(storage_hint=STORAGE, networks=[BRIDGE])
            assert checked.ok, [(c.name, c.message) for c in checked.checks if not c.ok]
            assert any(c.name.startswith("node-access:") and c.ok for c in checked.checks)
            try:
                client.describe_vm("99999999")
            except errors.NotFound:
                pass
            else:
                raise AssertionError("an unknown vmid was found")
            assert isinstance(client.list_vms(), pb.ListVMsResponse)
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert pve_env.token_secret not in stderr  # secrets never logged
    assert "PRIVATE KEY" not in stderr
