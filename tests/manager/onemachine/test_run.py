"""`virtrigaud run -f DIR` end to end: real launcher, real libvirt provider process,
Provider and VirtualMachine controllers over the embedded store."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from manager.store.sqlite import SQLiteStore
from tests.manager.store import factory
from tests.providers.libvirt.helpers import Lab, SetupDisk, SetupNic, domain_xml
from tests.servers.libvirtd import LibvirtEnv
from tests.support import venv_tool
from virtrigaud import errors

MiB = 1 << 20


def virtrigaud(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [venv_tool("virtrigaud"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def provider_manifest(env: LibvirtEnv) -> dict[str, Any]:
    manifest = factory.provider("lv", endpoint=env.uri, defaults={"storagePool": env.pool})
    manifest["metadata"]["annotations"] = {"options.virtrigaud.io/domainType": "qemu"}
    return manifest


def test_run_adopts_and_creates_vms_and_resumes_idempotently(
    env: LibvirtEnv, lv: Lab, tmp_path: Path
) -> None:
    source = lv.volume(env.name("run-src.qcow2"), 8 * MiB)
    source_name = env.name("run-src")
    adopted = lv.define(
        domain_xml(
            source_name,
            [SetupDisk(source, "qcow2", "vda")],
            [SetupNic("network", env.network, "52:54:00:01:02:03")],
        )
    )
    boot = lv.volume(env.name("run-boot.qcow2"), 16 * MiB)
    image = lv.volume(env.name("run-image.qcow2"), 8 * MiB)
    imported_name, cloned_name = env.name("run-imported"), env.name("run-cloned")
    lv.track_domain(imported_name)
    lv.track_domain(cloned_name)
    lv.track_volume(str(env.pool_path / f"{cloned_name}-disk0.qcow2"))  # the clone
    adopt = factory.vm(source_name, provider_name="lv", vmId=adopted.UUIDString())
    imported = factory.vm(
        imported_name,
        provider_name="lv",
        importedDisk={"diskID": f"{env.pool}/{Path(boot).name}", "format": "qcow2"},
        networks=[{"name": "eth0", "network": env.network, "mac": "52:54:00:0a:0b:0c"}],
        resources={"cpu": 1, "memoryMiB": 64},
        powerState="Off",
    )
    cloned = factory.vm(
        cloned_name,
        provider_name="lv",
        imageRef={"name": Path(image).name},  # bare name: found in the storagePool default
        resources={"cpu": 1, "memoryMiB": 64},
        powerState="Off",
    )
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "provider.yaml").write_text(yaml.safe_dump(provider_manifest(env)))
    (manifests / "vms.yaml").write_text(yaml.safe_dump_all([adopt, imported, cloned]))
    store_path = tmp_path / "state" / "state.db"

    first = virtrigaud(tmp_path, "run", "-f", str(manifests), "--store", str(store_path))
    assert first.returncode == 0, first.stdout + first.stderr
    assert "4 created" in first.stdout
    assert f"virtualmachine/{imported_name} (default): Ready" in first.stdout

    listing = virtrigaud(tmp_path, "get", "virtualmachines", "--store", str(store_path))
    rows = {line.split()[0]: line.split() for line in listing.stdout.splitlines()[1:]}
    assert rows[source_name][1:4] == ["lv", "Off", "Ready"]
    assert rows[imported_name][1:4] == ["lv", "Off", "Ready"]
    assert rows[cloned_name][1:4] == ["lv", "Off", "Ready"]

    with SQLiteStore(store_path) as store:
        before = {o["metadata"]["name"]: o for o in store.list("VirtualMachine")}
        provider = store.get("Provider", "default", "lv")
    assert before[source_name]["status"]["id"] == adopted.UUIDString()
    assert "finalizers" not in before[source_name]["metadata"]  # adopted: never deleted
    assert before[imported_name]["status"]["id"] == lv.domain(imported_name).UUIDString()
    assert before[cloned_name]["status"]["id"] == lv.domain(cloned_name).UUIDString()
    assert f"{cloned_name}-disk0.qcow2" in lv.pool_volume_names()  # cloned in storagePool
    assert "endpoint" not in provider["status"]  # the provider process was stopped
    domains = {d.name() for d in lv.conn.listAllDomains(0)}

    second = virtrigaud(tmp_path, "run", "-f", str(manifests), "--store", str(store_path))
    assert second.returncode == 0, second.stdout + second.stderr
    assert "0 created, 0 updated, 4 unchanged" in second.stdout
    with SQLiteStore(store_path) as store:
        after = {o["metadata"]["name"]: o for o in store.list("VirtualMachine")}
    for name, obj in before.items():
        assert after[name]["status"]["id"] == obj["status"]["id"]
        assert after[name]["metadata"]["generation"] == obj["metadata"]["generation"]
        assert after[name]["metadata"]["uid"] == obj["metadata"]["uid"]
    assert {d.name() for d in lv.conn.listAllDomains(0)} == domains  # nothing created twice


def test_run_with_a_bad_manifest_exits_non_zero_naming_the_field(tmp_path: Path) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    bad = factory.vm("web", provider_name="lv", vmId="x")
    bad["spec"]["networks"] = [{"name": "eth0", "mac": "zz:zz"}]
    (manifests / "ok.yaml").write_text(yaml.safe_dump(factory.provider("lv")))
    (manifests / "vm.yaml").write_text(yaml.safe_dump(bad))
    store_path = tmp_path / "state" / "state.db"
    done = virtrigaud(tmp_path, "run", "-f", str(manifests), "--store", str(store_path))
    assert done.returncode == 2
    assert "spec.networks[0].mac" in done.stderr
    assert "vm.yaml" in done.stderr
    assert not store_path.exists()  # nothing was loaded


def _status_of(store_path: Path, kind: str, name: str) -> dict[str, Any]:
    if not store_path.exists():
        return {}
    with SQLiteStore(store_path) as store:
        try:
            return dict(store.get(kind, "default", name).get("status") or {})
        except errors.NotFound:
            return {}


def test_sigterm_stops_cleanly_and_timeout_gives_up(env: LibvirtEnv, tmp_path: Path) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    # A hypervisor that refuses connections: the provider serves, CreateVM fails with a
    # retryable error and is retried with backoff, so the run keeps going until stopped.
    dead = provider_manifest(env)
    dead["spec"]["endpoint"] = "qemu+tcp://127.0.0.1:1/system"
    waiting = factory.vm("waiting", provider_name="lv", imageRef={"name": "none"})
    (manifests / "all.yaml").write_text(yaml.safe_dump_all([dead, waiting]))
    store_path = tmp_path / "state.db"
    run = subprocess.Popen(
        [venv_tool("virtrigaud"), "run", "-f", str(manifests), "--store", str(store_path)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (
            _status_of(store_path, "Provider", "lv").get("ready")
            and "CreateRetrying" in str(_status_of(store_path, "VirtualMachine", "waiting"))
        ):
            assert run.poll() is None, run.communicate()
            assert time.monotonic() < deadline, "run never got going"
            time.sleep(0.2)
        run.send_signal(signal.SIGTERM)
        out, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 130, out + err
    assert "interrupted; state kept in" in out
    assert "endpoint" not in _status_of(store_path, "Provider", "lv")  # provider stopped
    status = _status_of(store_path, "VirtualMachine", "waiting")
    assert "127.0.0.1:1" in status["message"] and status["provider"]["createAttempt"] >= "1"

    again = virtrigaud(
        tmp_path, "run", "-f", str(manifests), "--store", str(store_path), "--timeout", "3"
    )
    assert again.returncode == 1, again.stdout + again.stderr
    assert "timed out after 3s" in again.stdout
    assert "0 created, 0 updated, 2 unchanged" in again.stdout
