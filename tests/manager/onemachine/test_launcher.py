"""ProviderLauncher: `virtrigaud provider --type libvirt` as a child process."""

from __future__ import annotations

import json
import stat
import tempfile
from pathlib import Path
from typing import Any

import pytest

from manager.onemachine.launcher import ProviderLauncher
from manager.providerclient import ProviderClient
from manager.store.base import ObjectKey
from manager.store.sqlite import SQLiteStore
from tests.manager.store import factory
from tests.servers.libvirtd import LibvirtEnv

KEY = ObjectKey("Provider", "default", "lv")


def libvirt_provider(env: LibvirtEnv, **annotations: str) -> dict[str, Any]:
    manifest = factory.provider(
        "lv",
        endpoint=env.uri,
        credentialsSecretRef={"name": "lv-creds"},
        defaults={"storagePool": env.pool},
        allowedStorageHosts=["s3.internal.example"],
    )
    manifest["metadata"]["annotations"] = {"options.virtrigaud.io/domainType": "qemu"}
    manifest["metadata"]["annotations"].update(annotations)
    return manifest


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    pairs = (item.decode(errors="replace").partition("=") for item in raw if item)
    return {key: value for key, _, value in pairs}


def _conditions(store: SQLiteStore) -> dict[str, dict[str, Any]]:
    status = store.get("Provider", "default", "lv").get("status") or {}
    return {c["type"]: c for c in status.get("conditions") or []}


def test_launches_a_serving_provider_and_stops_it(
    env: LibvirtEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VIRTRIGAUD_STORAGE_ALLOWED_HOSTS", "10.0.0.0/8")
    with SQLiteStore(tmp_path / "state.db") as store:
        store.create(factory.secret("lv-creds", string_data={"username": "u", "password": "p"}))
        store.create(libvirt_provider(env))
        with ProviderLauncher(store, tmp_path) as launcher:
            launcher.start_all()
            assert launcher.failed == {}
            launched = launcher.running[KEY]
            status = store.get("Provider", "default", "lv")["status"]
            assert status["endpoint"] == launched.endpoint
            assert launched.endpoint.startswith("127.0.0.1:")
            assert _conditions(store)["Launched"]["status"] == "True"
            with ProviderClient(launched.endpoint) as client:
                assert client.health()
                assert client.get_capabilities().provider_type == "libvirt"
            creds = launched.credentials_file
            assert creds is not None and creds.exists()
            assert stat.S_IMODE(creds.stat().st_mode) == 0o600
            assert json.loads(creds.read_text()) == {"username": "u", "password": "p"}
            environ = _environ(launched.process.pid)
            assert environ["VIRTRIGAUD_STORAGE_ALLOWED_HOSTS"] == "10.0.0.0/8,s3.internal.example"
            log = launched.log_path
        assert launched.process.returncode == 0  # SIGTERM: a graceful exit
        assert not creds.exists()
        status = store.get("Provider", "default", "lv")["status"]
        assert "endpoint" not in status and status["ready"] is False
        assert _conditions(store)["Launched"]["reason"] == "Stopped"
        assert '"serving"' in log.read_text()


def test_a_provider_that_cannot_start_is_reported_not_raised(
    env: LibvirtEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where credential files go
    with SQLiteStore(tmp_path / "state.db") as store:
        store.create(factory.secret("lv-creds", string_data={}))
        store.create(libvirt_provider(env, **{"options.virtrigaud.io/domainType": "bogus"}))
        with ProviderLauncher(store, tmp_path, start_timeout=60) as launcher:
            launcher.start_all()
            assert list(launcher.failed) == [KEY]
            assert "domainType" in launcher.failed[KEY]  # the option reached the provider
            assert launcher.running == {}
        status = store.get("Provider", "default", "lv")["status"]
        assert "endpoint" not in status
        launched = _conditions(store)["Launched"]
        assert (launched["status"], launched["reason"]) == ("False", "StartFailed")
        assert "domainType" in launched["message"]
        assert list(scratch.iterdir()) == []  # the credentials file was removed


def test_a_missing_credentials_secret_is_reported(env: LibvirtEnv, tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "state.db") as store:
        store.create(libvirt_provider(env))
        with ProviderLauncher(store, tmp_path) as launcher:
            launcher.start_all()
            assert "secret default/lv-creds not found" in launcher.failed[KEY]
