"""A real ``kubectl`` reads what the manager wrote through the emulator: objects, status
and core/v1 Events the way ``kubectl describe`` shows them (counts included)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from manager.kube.store import KubeStore
from tests.kubeapi.fixtures import api_client, running, write_kubeconfig
from tests.manager.store import factory
from tests.support import venv_tool


def _kubectl(kubeconfig: Path, *args: str) -> str:
    done = subprocess.run(
        [venv_tool("kubectl"), "--kubeconfig", str(kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_kubectl_get_and_describe_show_status_and_counted_events(tmp_path: Path) -> None:
    # kubectl sends no bearer token over plain HTTP, so this emulator has none.
    with running() as server:
        kubeconfig = write_kubeconfig(server, tmp_path / "kubeconfig")
        store = KubeStore(api_client(server))
        created = store.create(factory.migration("move-app"))
        store.update_status({**created, "status": {"phase": "Exporting", "progress": 30}})
        for _ in range(3):
            store.emit_event(created, "Normal", "ExportStarted", "Disk export started")
        store.emit_event(created, "Warning", "RetryScheduled", "retry in 5s")
        listed = _kubectl(kubeconfig, "get", "vmmigrations", "-n", "default")
        described = _kubectl(kubeconfig, "describe", "vmmigration", "move-app")
        events = _kubectl(kubeconfig, "get", "events", "-o", "name")
        store.close()
    assert "move-app" in listed.splitlines()[1]
    assert "Phase:     Exporting" in described and "Progress:  30" in described
    lines = described[described.index("Events:") :].splitlines()
    export = next(line for line in lines if "ExportStarted" in line)
    assert export.split()[0] == "Normal" and "(x3 over" in export
    assert "virtrigaud-manager" in export and export.endswith("Disk export started")
    retry = next(line for line in lines if "RetryScheduled" in line)
    assert retry.split()[0] == "Warning" and retry.endswith("retry in 5s")
    assert len(events.split()) == 2
