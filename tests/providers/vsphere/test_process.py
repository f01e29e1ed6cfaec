"""``virtrigaud provider --type vsphere`` as a process (registry, CLI, credentials file)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from manager.providerclient import ProviderClient, RetryPolicy
from tests.servers.vcsim import DATASTORE, PORTGROUP, Vcsim
from tests.support import free_port, venv_tool
from virtrigaud import errors

REPO = Path(__file__).resolve().parents[3]


def test_provider_process_serves_vsphere(vcsim: Vcsim, tmp_path: Path) -> None:
    creds = tmp_path / "secret.json"
    creds.write_text(json.dumps(vcsim.credentials))
    creds.chmod(0o600)
    address = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [
            venv_tool("virtrigaud"),
            "provider",
            "--type",
            "vsphere",
            "--listen",
            address,
            "--endpoint",
            vcsim.url,
            "--credentials-file",
            str(creds),
            "--option",
            f"caFile={vcsim.ca_file}",
            "--option",
            f"datastore={DATASTORE}",
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        with ProviderClient(address, timeout=10, retry=RetryPolicy(attempts=1)) as client:
            while not client.health(timeout=1):
                assert proc.poll() is None, proc.communicate()[0]
                assert time.monotonic() < deadline, "provider never became healthy"
                time.sleep(0.1)
            assert client.get_capabilities().provider_type == "vsphere"
            checked = client.validate(storage_hint="", networks=[PORTGROUP])
            assert checked.ok, [c.message for c in checked.checks if not c.ok]
            assert any(c.name == f"storage:{DATASTORE}" for c in checked.checks)
            assert "DC0_H0_VM0" in {vm.name for vm in client.iter_vms()}
            with pytest.raises(errors.NotFound):
                client.describe_vm("vm-999999")
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    assert vcsim.password not in output  # never logged
