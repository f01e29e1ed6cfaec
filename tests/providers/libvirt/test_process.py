"""``virtrigaud provider --type libvirt`` as a process, and bounded connection waits."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from manager.providerclient import ProviderClient, RetryPolicy
from providers.libvirt.client import LibvirtClient
from tests.servers.libvirtd import LibvirtEnv
from tests.support import free_port, venv_tool
from virtrigaud import errors

SERVICE = "virtrigaud.provider.v1.Provider"
REPO = Path(__file__).resolve().parents[3]


def _grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [venv_tool("grpcurl"), "-plaintext", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_provider_process_serves_libvirt(env: LibvirtEnv) -> None:
    address = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [
            venv_tool("virtrigaud"),
            "provider",
            "--type",
            "libvirt",
            "--listen",
            address,
            "--endpoint",
            env.uri,
            "--option",
            f"storagePool={env.pool}",
            "--option",
            "domainType=qemu",
        ],
        cwd=REPO,
        # The venv's editable install maps ``storage`` to a namespace package outside
        # the repo (its finder predates storage/__init__.py); the repo first fixes it.
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        with ProviderClient(address, timeout=1, retry=RetryPolicy(attempts=1)) as probe:
            while not probe.health(timeout=1):
                assert proc.poll() is None, proc.communicate()[1]
                assert time.monotonic() < deadline, "provider never became healthy"
                time.sleep(0.1)
        listed = _grpcurl(address, "list")
        assert listed.returncode == 0, listed.stderr
        assert SERVICE in listed.stdout.split()
        health = _grpcurl(address, "grpc.health.v1.Health/Check")
        assert json.loads(health.stdout) == {"status": "SERVING"}
        caps = _grpcurl(address, f"{SERVICE}/GetCapabilities")
        assert json.loads(caps.stdout)["provider_type"] == "libvirt"
        checked = _grpcurl(
            "-d", json.dumps({"storageHint": env.pool}), address, f"{SERVICE}/Validate"
        )
        assert json.loads(checked.stdout)["ok"] is True, checked.stdout
        missing = _grpcurl(
            "-d",
            '{"vmId": "6a1f2b8e-0000-4000-8000-000000000000"}',
            address,
            f"{SERVICE}/DescribeVM",
        )
        assert "NotFound" in missing.stderr
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert proc.returncode == 0


class _LateConnection:
    closed = False

    def close(self) -> None:
        self.closed = True


def test_a_connection_that_never_answers_is_unavailable_after_the_timeout() -> None:
    release = threading.Event()
    late = _LateConnection()

    def hanging(uri: str, credentials: Mapping[str, str]) -> Any:
        release.wait(30)  # like a TCP connect to a host that drops packets
        return late

    client = LibvirtClient(
        "qemu+ssh://blackhole.invalid/system", connect_timeout=0.5, opener=hanging
    )
    started = time.monotonic()
    with pytest.raises(errors.Unavailable, match=r"blackhole\.invalid.*did not answer"):
        client.versions()
    assert time.monotonic() - started < 5  # bounded by connect_timeout, not by the host
    release.set()  # the connection arrives after the caller gave up: it is closed
    deadline = time.monotonic() + 10
    while not late.closed:
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_refused_connection_is_unavailable_naming_the_uri() -> None:
    client = LibvirtClient("qemu+tcp://127.0.0.1:1/system", connect_timeout=10)
    with pytest.raises(errors.Unavailable) as caught:
        client.versions()
    assert "qemu+tcp://127.0.0.1:1/system" in caught.value.message
    assert caught.value.retryable
