"""The provider as a process: grpcurl, SIGTERM, the CLI, and what reaches the logs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from manager.providerclient import ProviderClient, RetryPolicy
from tests.support import free_port, venv_tool
from virtrigaud.provider.v1 import provider_pb2 as pb

SERVICE = "virtrigaud.provider.v1.Provider"
REPO = Path(__file__).resolve().parents[3]


@dataclass
class ProviderProcess:
    proc: subprocess.Popen[str]
    address: str
    root: Path

    def client(self) -> ProviderClient:
        return ProviderClient(self.address, timeout=5, retry=RetryPolicy(attempts=1))


def _wait_serving(address: str, proc: subprocess.Popen[str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    with ProviderClient(address, timeout=1, retry=RetryPolicy(attempts=1)) as probe:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"provider exited early: {proc.communicate()[1]}")
            if probe.health(timeout=1):
                return
            time.sleep(0.1)
    raise AssertionError("provider did not become healthy")


def _start(tmp_path: Path, *extra: str) -> ProviderProcess:
    address = f"127.0.0.1:{free_port()}"
    root = tmp_path / "hv"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fakes.serve_memory",
            "--listen",
            address,
            "--root",
            str(root),
            *extra,
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_serving(address, proc)
    return ProviderProcess(proc, address, root)


@pytest.fixture
def provider_process(tmp_path: Path) -> Iterator[ProviderProcess]:
    running = _start(tmp_path)
    yield running
    if running.proc.poll() is None:
        running.proc.kill()
        running.proc.communicate()


def _grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [venv_tool("grpcurl"), "-plaintext", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_grpcurl_lists_the_services_and_checks_health(provider_process: ProviderProcess) -> None:
    listed = _grpcurl(provider_process.address, "list")
    assert listed.returncode == 0, listed.stderr
    assert SERVICE in listed.stdout.split()
    assert "grpc.health.v1.Health" in listed.stdout.split()
    methods = _grpcurl(provider_process.address, "list", SERVICE)
    expected = {m.name for m in pb.DESCRIPTOR.services_by_name["Provider"].methods}
    assert {line.rsplit(".", 1)[-1] for line in methods.stdout.split()} == expected
    health = _grpcurl(provider_process.address, "grpc.health.v1.Health/Check")
    assert json.loads(health.stdout) == {"status": "SERVING"}


def test_grpcurl_calls_every_method(provider_process: ProviderProcess, tmp_path: Path) -> None:
    """Each of the contract's methods answers a JSON request made by grpcurl."""
    addr = provider_process.address

    def call(method: str, body: dict[str, object]) -> dict[str, object]:
        done = _grpcurl("-d", json.dumps(body), addr, f"{SERVICE}/{method}")
        assert done.returncode == 0, f"{method}: {done.stderr}"
        return json.loads(done.stdout) if done.stdout.strip() else {}

    def wait(task: dict[str, object]) -> dict[str, object]:
        for _ in range(300):
            current = call("GetTask", {"task_id": task["id"]})
            if current["state"] in ("TASK_STATE_SUCCEEDED", "TASK_STATE_FAILED"):
                assert current["state"] == "TASK_STATE_SUCCEEDED", current
                return current
            time.sleep(0.1)
        raise AssertionError(f"task {task['id']} never finished")

    # grpcurl 1.8.6 prints proto field names (snake_case) and accepts camelCase input.
    called: set[str] = set()
    caps = call("GetCapabilities", {})
    assert caps["provider_type"] == "memory"
    called.add("GetCapabilities")
    assert call("Validate", {"storageHint": "default"})["ok"] is True
    called.add("Validate")
    vms = call("ListVMs", {"pageSize": 10})["vms"]
    assert isinstance(vms, list)
    vm_id = vms[0]["id"]
    called.add("ListVMs")
    assert call("DescribeVM", {"vmId": vm_id})["name"] == "source-vm"
    called.add("DescribeVM")
    snap = wait(call("CreateSnapshot", {"operationId": "s1", "vmId": vm_id, "name": "mig"}))
    snap_id = snap["snapshot_result"]["snapshot_id"]  # type: ignore[index]
    called.add("CreateSnapshot")
    target = tmp_path / "export" / "vda.raw"
    export = call(
        "ExportDisk",
        {
            "operationId": "e1",
            "vmId": vm_id,
            "diskId": "vda",
            "snapshotId": snap_id,
            "destination": {"backend": "STORAGE_BACKEND_NFS", "url": f"nfs://{target}"},
        },
    )
    called.add("ExportDisk")
    streamed = _grpcurl("-d", json.dumps({"task_id": export["id"]}), addr, f"{SERVICE}/WatchTask")
    assert streamed.returncode == 0, streamed.stderr
    assert '"TASK_STATE_SUCCEEDED"' in streamed.stdout
    called.add("WatchTask")
    sha = wait(export)["export_result"]["sha256"]  # type: ignore[index]
    called.add("GetTask")
    imported = wait(
        call(
            "ImportDisk",
            {
                "operationId": "i1",
                "targetVolumeName": "copy.raw",
                "expectedSha256": sha,
                "source": {"backend": "STORAGE_BACKEND_NFS", "url": f"nfs://{target}"},
            },
        )
    )
    disk_id = imported["import_result"]["disk_id"]  # type: ignore[index]
    called.add("ImportDisk")
    copy = tmp_path / "export" / "copy-to-delete.raw"
    copy.write_bytes(target.read_bytes())
    location = {"backend": "STORAGE_BACKEND_NFS", "url": f"nfs://{copy}"}
    wait(call("DeleteObject", {"operationId": "o1", "location": location}))
    assert not copy.exists()
    called.add("DeleteObject")
    created = wait(
        call(
            "CreateVM",
            {
                "operationId": "c1",
                "name": "copy",
                "cpu": 1,
                "memoryMib": "256",
                "disks": [{"imported": {"diskId": disk_id}}],
                "nics": [{"network": "default"}],
            },
        )
    )
    new_vm = created["create_vm_result"]["vm_id"]  # type: ignore[index]
    called.add("CreateVM")
    wait(call("Power", {"operationId": "p1", "vmId": new_vm, "action": "POWER_ACTION_ON"}))
    called.add("Power")
    cancelled = call("CancelTask", {"task_id": export["id"]})
    assert cancelled["state"] == "TASK_STATE_SUCCEEDED"  # finished tasks stay as they were
    called.add("CancelTask")
    wait(call("DeleteSnapshot", {"operationId": "d1", "vmId": vm_id, "snapshotId": snap_id}))
    called.add("DeleteSnapshot")
    wait(call("DeleteVM", {"operationId": "x1", "vmId": new_vm}))
    called.add("DeleteVM")
    wait(call("DeleteDisk", {"operationId": "dd1", "diskId": disk_id}))
    called.add("DeleteDisk")
    assert called == {m.name for m in pb.DESCRIPTOR.services_by_name["Provider"].methods}


def test_grpcurl_sees_error_statuses(provider_process: ProviderProcess) -> None:
    done = _grpcurl("-d", '{"vmId": "nope"}', provider_process.address, f"{SERVICE}/DescribeVM")
    assert done.returncode != 0
    assert "NotFound" in done.stderr
    bad = _grpcurl("-d", "{}", provider_process.address, f"{SERVICE}/ExportDisk")
    assert "InvalidArgument" in bad.stderr
    assert "vm_id: required" in bad.stderr


def test_sigterm_drains_running_tasks_and_exits_cleanly(tmp_path: Path) -> None:
    running = _start(tmp_path, "--chunk-delay", "0.05", "--grace", "20")
    with running.client() as client:
        vm = next(client.iter_vms())
        target = tmp_path / "out" / "vda.raw"
        task = client.export_disk(
            pb.ExportDiskRequest(
                operation_id="op-term",
                vm_id=vm.id,
                disk_id="vda",
                destination=pb.StorageLocation(backend=pb.STORAGE_BACKEND_NFS, url=str(target)),
            )
        )
        while client.get_task(task.id).state == pb.TASK_STATE_PENDING:
            time.sleep(0.02)
        running.proc.send_signal(signal.SIGTERM)
        _out, err = running.proc.communicate(timeout=60)
    assert running.proc.returncode == 0, err
    events = [json.loads(line)["event"] for line in err.splitlines() if line.startswith("{")]
    assert "shutting_down" in events
    assert "stopped" in events
    # The running export was allowed to finish inside the grace period: complete file.
    assert target.stat().st_size == 8 * (1 << 20)
    assert not list(target.parent.glob("*.part"))


def test_sigterm_cancels_tasks_that_outlive_the_grace_period(tmp_path: Path) -> None:
    running = _start(tmp_path, "--chunk-delay", "0.5", "--grace", "0.5")
    with running.client() as client:
        vm = next(client.iter_vms())
        target = tmp_path / "out" / "vda.raw"
        task = client.export_disk(
            pb.ExportDiskRequest(
                operation_id="op-slow",
                vm_id=vm.id,
                disk_id="vda",
                destination=pb.StorageLocation(backend=pb.STORAGE_BACKEND_NFS, url=str(target)),
            )
        )
        while client.get_task(task.id).bytes_done == 0:
            time.sleep(0.02)
        running.proc.send_signal(signal.SIGTERM)
        _out, err = running.proc.communicate(timeout=60)
    assert running.proc.returncode == 0, err
    assert "tasks_cancelled_for_shutdown" in err
    assert not target.exists()
    assert not list(target.parent.glob("*"))  # no half-written leftovers


def test_credentials_never_reach_the_logs(
    provider_process: ProviderProcess, tmp_path: Path
) -> None:
    secret = "sup3r-s3cret-value-xyz"
    with provider_process.client() as client:
        vm = next(client.iter_vms())
        task = client.export_disk(
            pb.ExportDiskRequest(
                operation_id="op-secret",
                vm_id=vm.id,
                disk_id="vda",
                destination=pb.StorageLocation(
                    backend=pb.STORAGE_BACKEND_NFS,
                    url=str(tmp_path / "s.raw"),
                    credentials={"secretKey": secret, "token": secret},
                ),
            )
        )
        client.wait_task(task.id, timeout=60)
        bad = client.export_disk(
            pb.ExportDiskRequest(
                operation_id="op-secret-2",
                vm_id="missing",
                disk_id="vda",
                destination=pb.StorageLocation(
                    backend=pb.STORAGE_BACKEND_NFS,
                    url=str(tmp_path / "t.raw"),
                    credentials={"secretKey": secret},
                ),
            )
        )
        client.wait_task(bad.id, timeout=60)
    provider_process.proc.send_signal(signal.SIGTERM)
    out, err = provider_process.proc.communicate(timeout=60)
    assert "task_submitted" in err  # the logs are there, debug level included
    assert secret not in out + err


def test_cli_refuses_an_unknown_provider_type() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "virtrigaud.cli",
            "provider",
            "--type",
            "nosuch",
            "--listen",
            "127.0.0.1:0",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "unknown provider type 'nosuch'" in done.stderr


def test_cli_refuses_half_a_tls_configuration(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            venv_tool("virtrigaud"),
            "provider",
            "--type",
            "libvirt",
            "--tls-cert",
            str(tmp_path / "c.pem"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "--tls-cert and --tls-key must be given together" in done.stderr


def _state(pid: int) -> str | None:
    """The process state letter (R, S, Z...), None when there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return None


def test_a_provider_shuts_down_when_its_parent_is_killed(tmp_path: Path) -> None:
    """`--parent-pid`: the provider notices the parent is gone (even without any signal
    reaching it, as after a SIGKILLed `virtrigaud run`) and shuts down gracefully."""
    port = free_port()
    log = tmp_path / "provider.log"
    script = (
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-m', 'virtrigaud.cli', 'provider',"
        " '--type', 'libvirt', '--endpoint', 'test:///default',"
        f" '--listen', '127.0.0.1:{port}', '--grace', '1',"
        " '--parent-pid', str(os.getpid())],"
        f" stdout=open({str(log)!r}, 'ab'), stderr=subprocess.STDOUT)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        with ProviderClient(f"127.0.0.1:{port}", timeout=2, retry=RetryPolicy(attempts=1)) as c:
            deadline = time.monotonic() + 60
            while not c.health(timeout=1.0):
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        parent.kill()
        parent.wait(timeout=10)
        deadline = time.monotonic() + 60
        while _state(child) not in (None, "Z"):
            assert time.monotonic() < deadline, f"provider {child} outlived its parent"
            time.sleep(0.2)
        assert '"event": "parent_exited"' in log.read_text()
    finally:
        parent.kill()
