"""The Proxmox provider's data plane: real images on the node, moved over real SSH.

fakepve answers the API (volume paths under the session's ``vmstore`` directory); the
bytes are read and written through the real sshd on loopback with qemu-img, and land
in an NFS-style directory as intermediate storage. Every data test compares digests
of what really moved with the source image.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from manager.providerclient import ProviderClient, RetryPolicy, raise_for_task
from providers.proxmox.driver import ProxmoxDriver, create
from providers.runtime import server as runtime_server
from tests.providers.proxmox.env import (
    BRIDGE,
    STORAGE,
    MiB,
    PveEnv,
    content_sha256,
    slow_disk,
    write_image,
)
from tests.servers import sshd
from tests.servers.seaweedfs import SeaweedFS
from virtrigaud import errors
from virtrigaud.provider.v1 import provider_pb2 as pb

TIMEOUT = 120.0


def _op(label: str) -> str:
    return f"test/{label}/{uuid.uuid4().hex[:8]}"


def _run(client: ProviderClient, task: pb.Task) -> pb.Task:
    return raise_for_task(client.wait_task(task.id, timeout=TIMEOUT))


def _error(client: ProviderClient, task: pb.Task) -> errors.VirtrigaudError:
    try:
        _run(client, task)
    except errors.VirtrigaudError as exc:
        return exc
    raise AssertionError("the task succeeded")


@pytest.fixture
def exports_dir(tmp_path: Path) -> Path:
    path = tmp_path / "exports"
    path.mkdir()
    return path


def _location(directory: Path, key: str) -> pb.StorageLocation:
    return pb.StorageLocation(backend=pb.STORAGE_BACKEND_NFS, url=f"nfs://{directory / key}")


def _export(
    client: ProviderClient, vm_id: str, disk: str, location: pb.StorageLocation, **kw: object
) -> pb.ExportResult:
    request = pb.ExportDiskRequest(
        operation_id=_op("export"),
        vm_id=vm_id,
        disk_id=disk,
        destination=location,
        **kw,  # type: ignore[arg-type]
    )
    return _run(client, client.export_disk(request)).export_result


def _import(
    client: ProviderClient, location: pb.StorageLocation, exported: pb.ExportResult, name: str
) -> pb.Task:
    return client.import_disk(
        pb.ImportDiskRequest(
            operation_id=_op("import"),
            source=location,
            expected_sha256=exported.sha256,
            expected_content_sha256=exported.content_sha256,
            source_format=exported.format,
            storage_hint=STORAGE,
            target_volume_name=name,
        )
    )


def _assert_clean(pve_env: PveEnv) -> None:
    assert list(pve_env.node_tmp.iterdir()) == [], "export left files in the node's scratch"
    assert list(pve_env.scratch.iterdir()) == [], "the provider left scratch files"
    leftovers = (
        [p.name for p in pve_env.import_dir().glob(".*.part-*")]
        if pve_env.import_dir().exists()
        else []
    )
    assert leftovers == [], "an import left a temporary file on the node"


def test_export_of_a_stopped_vm_moves_every_disk(
    pve_env: PveEnv, pve_provider: ProviderClient, exports_dir: Path
) -> None:
    vm = pve_env.add_vm(
        "export-vm",
        {
            "scsi0": ("qcow2", 32 * MiB, bytes(range(256)) * 64),
            "virtio1": ("raw", 16 * MiB, b"\xab" * 8192),
        },
    )
    first = _export(pve_provider, vm.vmid, "scsi0", _location(exports_dir, "a.qcow2"))
    stored = (exports_dir / "a.qcow2").read_bytes()
    assert hashlib.sha256(stored).hexdigest() == first.sha256 and len(stored) == first.size_bytes
    assert first.format == pb.DISK_FORMAT_QCOW2
    assert first.source_format == pb.DISK_FORMAT_QCOW2
    assert first.virtual_size_bytes == 32 * MiB
    assert first.content_sha256 == content_sha256(vm.disks["scsi0"], "qcow2")
    assert content_sha256(exports_dir / "a.qcow2", "qcow2") == first.content_sha256
    second = _export(pve_provider, vm.vmid, "virtio1", _location(exports_dir, "b.img"))
    assert second.format == pb.DISK_FORMAT_RAW and second.source_format == pb.DISK_FORMAT_RAW
    assert (exports_dir / "b.img").read_bytes() == vm.disks["virtio1"].read_bytes()
    assert second.content_sha256 == content_sha256(vm.disks["virtio1"], "raw")
    third = _export(
        pve_provider,
        vm.vmid,
        "virtio1",
        _location(exports_dir, "c.qcow2"),
        target_format=pb.DISK_FORMAT_QCOW2,
    )
    assert (third.format, third.source_format) == (pb.DISK_FORMAT_QCOW2, pb.DISK_FORMAT_RAW)
    assert third.content_sha256 == second.content_sha256
    _assert_clean(pve_env)


def test_export_from_a_snapshot_of_a_running_vm_is_the_snapshot(
    pve_env: PveEnv, pve_provider: ProviderClient, exports_dir: Path
) -> None:
    vm = pve_env.add_vm(
        "live-vm", {"scsi0": ("qcow2", 16 * MiB, b"\x5c" * 65536)}, status="running"
    )
    before = content_sha256(vm.disks["scsi0"], "qcow2")
    with pytest.raises(errors.FailedPrecondition, match="snapshot"):
        _export(pve_provider, vm.vmid, "scsi0", _location(exports_dir, "live.qcow2"))
    snap = _run(
        pve_provider,
        pve_provider.create_snapshot(
            pb.CreateSnapshotRequest(operation_id=_op("s"), vm_id=vm.vmid, name="export")
        ),
    ).snapshot_result.snapshot_id
    # The guest keeps writing after the snapshot.
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x77 0 1M", str(vm.disks["scsi0"])],
        check=True,
        capture_output=True,
    )
    assert content_sha256(vm.disks["scsi0"], "qcow2") != before
    result = _export(
        pve_provider, vm.vmid, "scsi0", _location(exports_dir, "snap.qcow2"), snapshot_id=snap
    )
    assert result.content_sha256 == before
    assert content_sha256(exports_dir / "snap.qcow2", "qcow2") == before
    with pytest.raises(errors.NotFound):
        _export(
            pve_provider, vm.vmid, "scsi0", _location(exports_dir, "x.qcow2"), snapshot_id="nope"
        )
    _assert_clean(pve_env)


def test_import_then_create_vm_from_the_imported_disk(
    pve_env: PveEnv, pve_provider: ProviderClient, exports_dir: Path
) -> None:
    vm = pve_env.add_vm("mig-src", {"scsi0": ("raw", 24 * MiB, b"\xc3" * 100_000)})
    location = _location(exports_dir, "mig.img")
    exported = _export(pve_provider, vm.vmid, "scsi0", location)
    name = f"mig-{uuid.uuid4().hex[:6]}"
    result = _run(pve_provider, _import(pve_provider, location, exported, name)).import_result
    volume = pve_env.import_dir() / f"{name}.qcow2"
    assert result.disk_id == f"{STORAGE}:import/{name}.qcow2"
    assert result.path == str(volume)
    assert result.format == pb.DISK_FORMAT_QCOW2  # the directory storage's format
    assert result.size_bytes == 24 * MiB
    assert result.sha256 == exported.sha256
    assert result.content_sha256 == exported.content_sha256 == content_sha256(volume, "qcow2")
    record = json.loads((pve_env.import_dir() / f".{name}.qcow2.virtrigaud.json").read_text())
    assert record["content_sha256"] == exported.content_sha256
    _assert_clean(pve_env)
    # The same name again: taken, unless it is the same verified content (a re-submit).
    again = _run(pve_provider, _import(pve_provider, location, exported, name)).import_result
    assert (again.disk_id, again.content_sha256) == (result.disk_id, result.content_sha256)
    other = pb.ExportResult()
    other.CopyFrom(exported)
    other.content_sha256 = "0" * 64
    assert isinstance(
        _error(pve_provider, _import(pve_provider, location, other, name)), errors.AlreadyExists
    )
    requests_before = len(pve_env.pve.requests)
    created = _run(
        pve_provider,
        pve_provider.create_vm(
            pb.CreateVMRequest(
                operation_id=_op("create"),
                name=f"{name}-vm",
                cpu=2,
                memory_mib=512,
                firmware=pb.FIRMWARE_UEFI,
                storage_hint=STORAGE,
                disks=[
                    pb.DiskSpec(
                        imported=pb.ImportedDisk(
                            disk_id=result.disk_id,
                            format=result.format,
                            size_bytes=result.size_bytes,
                        )
                    )
                ],
                nics=[pb.NicSpec(network=BRIDGE, mac="52:54:00:0a:0b:0c")],
            )
        ),
    ).create_vm_result.vm_id
    # The create request asked PVE to import exactly the volume we verified ...
    posted = [
        body
        for method, path, body in pve_env.pve.requests[requests_before:]
        if method == "POST" and path.endswith("/nodes/pve1/qemu")
    ]
    assert len(posted) == 1
    form = parse_qs(bytes(posted[0]).decode())
    assert form["scsi0"] == [f"{STORAGE}:0,import-from={result.disk_id},format=qcow2"]
    # ... and the VM's disk (copied by the node, as PVE does) holds the migrated content.
    described = pve_provider.describe_vm(created)
    assert [(d.id, d.virtual_size_bytes) for d in described.disks] == [("scsi0", 24 * MiB)]
    assert described.firmware == pb.FIRMWARE_UEFI
    assert pve_env.pve.vm(int(created)).config["efidisk0"].startswith(f"{STORAGE}:")
    disk_file = Path(described.disks[0].path)
    assert disk_file.is_relative_to(pve_env.storage_path / "images" / created)
    assert content_sha256(disk_file, "qcow2") == exported.content_sha256
    assert [(n.network, n.mac) for n in described.nics] == [(BRIDGE, "52:54:00:0a:0b:0c")]
    # PVE copied the import volume: it stays, listed by the VM, and is refused by
    # DeleteDisk while the VM exists; DeleteVM with delete_disks removes both.
    assert volume.exists()
    assert (
        f"virtrigaud-imported: {result.disk_id}"
        in pve_env.pve.vm(int(created)).config["description"].splitlines()
    )
    refused = _error(
        pve_provider,
        pve_provider.delete_disk(
            pb.DeleteDiskRequest(operation_id=_op("dd"), disk_id=result.disk_id)
        ),
    )
    assert isinstance(refused, errors.FailedPrecondition) and created in refused.message
    _run(
        pve_provider,
        pve_provider.delete_vm(
            pb.DeleteVMRequest(operation_id=_op("d"), vm_id=created, delete_disks=True)
        ),
    )
    assert not disk_file.exists()
    assert not volume.exists()
    assert not (pve_env.import_dir() / f".{name}.qcow2.virtrigaud.json").exists()


def test_create_vm_with_a_missing_import_volume_is_not_found(
    pve_provider: ProviderClient,
) -> None:
    task = pve_provider.create_vm(
        pb.CreateVMRequest(
            operation_id=_op("create"),
            name="ghost-vm",
            cpu=1,
            memory_mib=128,
            storage_hint=STORAGE,
            disks=[pb.DiskSpec(imported=pb.ImportedDisk(disk_id=f"{STORAGE}:import/ghost.qcow2"))],
        )
    )
    error = _error(pve_provider, task)
    assert isinstance(error, errors.NotFound) and "ghost.qcow2" in error.message
    assert not list(pve_provider.iter_vms(name_filter="ghost-vm"))


def test_import_refuses_corrupt_objects_and_leaves_nothing(
    pve_env: PveEnv, pve_provider: ProviderClient, exports_dir: Path
) -> None:
    vm = pve_env.add_vm("corrupt-src", {"scsi0": ("qcow2", 8 * MiB, b"\x42" * 4096)})
    location = _location(exports_dir, "c.qcow2")
    exported = _export(pve_provider, vm.vmid, "scsi0", location)
    path = exports_dir / "c.qcow2"
    original = path.read_bytes()
    data = bytearray(original)
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    name = f"bad-{uuid.uuid4().hex[:6]}"
    error = _error(pve_provider, _import(pve_provider, location, exported, name))
    assert isinstance(error, errors.ChecksumMismatch)
    assert not (pve_env.import_dir() / f"{name}.qcow2").exists()
    _assert_clean(pve_env)
    # A wrong content digest (right bytes) is refused too.
    path.write_bytes(original)
    wrong = pb.ExportResult()
    wrong.CopyFrom(exported)
    wrong.content_sha256 = "1" * 64
    error = _error(pve_provider, _import(pve_provider, location, wrong, name))
    assert isinstance(error, errors.ChecksumMismatch)
    assert not (pve_env.import_dir() / f"{name}.qcow2").exists()
    _assert_clean(pve_env)


def test_delete_disk_removes_an_import_volume(
    pve_env: PveEnv, pve_provider: ProviderClient, exports_dir: Path
) -> None:
    vm = pve_env.add_vm("deldisk-src", {"scsi0": ("qcow2", 8 * MiB, b"\x01" * 512)})
    location = _location(exports_dir, "d.qcow2")
    exported = _export(pve_provider, vm.vmid, "scsi0", location)
    name = f"del-{uuid.uuid4().hex[:6]}"
    disk_id = _run(
        pve_provider, _import(pve_provider, location, exported, name)
    ).import_result.disk_id
    assert (pve_env.import_dir() / f"{name}.qcow2").exists()
    for label in ("first", "again"):
        _run(
            pve_provider,
            pve_provider.delete_disk(
                pb.DeleteDiskRequest(operation_id=_op(label), disk_id=disk_id)
            ),
        )
        assert not (pve_env.import_dir() / f"{name}.qcow2").exists()
        assert not (pve_env.import_dir() / f".{name}.qcow2.virtrigaud.json").exists()
    task = pve_provider.delete_disk(
        pb.DeleteDiskRequest(
            operation_id=_op("bad"), disk_id=f"{STORAGE}:{vm.vmid}/vm-1-disk-0.raw"
        )
    )
    assert isinstance(_error(pve_provider, task), errors.InvalidArgument)


def _driver_with(pve_env: PveEnv, **credentials: str) -> ProxmoxDriver:
    return create(pve_env.config(credentials=pve_env.credentials(**credentials)))


def _serve(driver: ProxmoxDriver) -> Iterator[ProviderClient]:
    running = runtime_server.start(driver, "127.0.0.1:0", max_tasks=2)
    client = ProviderClient(f"127.0.0.1:{running.port}", timeout=30, retry=RetryPolicy(attempts=1))
    try:
        yield client
    finally:
        client.close()
        running.stop(grace=5)


def test_a_wrong_host_key_is_refused(pve_env: PveEnv, tmp_path: Path, exports_dir: Path) -> None:
    _, other_pub = sshd.make_key(tmp_path / "impostor")
    key_type, key_data = other_pub.split()[:2]
    wrong = f"[127.0.0.1]:{pve_env.ssh.port} {key_type} {key_data}\n"
    vm = pve_env.add_vm("hostkey-vm", {"scsi0": ("qcow2", 8 * MiB, b"\x01")})
    for known, text in (
        (wrong, "does not match"),
        ("[otherhost]:22 " + f"{key_type} {key_data}\n", "not in knownHosts"),
    ):
        driver = _driver_with(pve_env, knownHosts=known)
        try:
            check = next(
                c
                for c in driver.validate(pb.ValidateRequest()).checks
                if c.name.startswith("node-access")
            )
            assert not check.ok and text in check.message
            for client in _serve(driver):
                error = _error(
                    client,
                    client.export_disk(
                        pb.ExportDiskRequest(
                            operation_id=_op("e"),
                            vm_id=vm.vmid,
                            disk_id="scsi0",
                            destination=_location(exports_dir, "never.qcow2"),
                        )
                    ),
                )
                assert isinstance(error, errors.AuthenticationError) and text in error.message
        finally:
            driver.close()
    assert not (exports_dir / "never.qcow2").exists()


def test_a_key_the_node_does_not_accept_is_an_authentication_error(
    pve_env: PveEnv, tmp_path: Path
) -> None:
    other_key, _ = sshd.make_key(tmp_path / "stranger")
    driver = _driver_with(pve_env, sshPrivateKey=other_key)
    try:
        check = next(
            c
            for c in driver.validate(pb.ValidateRequest()).checks
            if c.name.startswith("node-access")
        )
        assert not check.ok and "refused the key" in check.message
    finally:
        driver.close()
    with pytest.raises(errors.InvalidArgument, match="sshPrivateKey"):
        _driver_with(pve_env, sshPrivateKey="not a key")


def test_a_cancelled_export_leaves_nothing_on_the_node_or_the_provider(
    pve_env: PveEnv, pve_provider: ProviderClient, exports_dir: Path
) -> None:
    vm_id, disk = slow_disk(pve_env)
    location = _location(exports_dir, "cancel.img")
    task = pve_provider.export_disk(
        pb.ExportDiskRequest(
            operation_id=_op("cancel"), vm_id=vm_id, disk_id=disk, destination=location
        )
    )
    deadline = time.monotonic() + TIMEOUT
    while pve_provider.get_task(task.id).stage in ("queued", "checking", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    pve_provider.cancel_task(task.id)
    final = pve_provider.wait_task(task.id, timeout=TIMEOUT)
    assert final.state == pb.TASK_STATE_CANCELLED, final
    assert not (exports_dir / "cancel.img").exists()
    _assert_clean(pve_env)
    busy = subprocess.run(
        ["pgrep", "-f", str(pve_env.node_tmp)], capture_output=True, text=True, check=False
    )
    assert busy.stdout.strip() == "", "the node's qemu-img was not stopped"


def test_local_node_access_moves_the_same_bytes(pve_env: PveEnv, exports_dir: Path) -> None:
    vm = pve_env.add_vm("local-vm", {"scsi0": ("qcow2", 8 * MiB, b"\x99" * 777)})
    driver = create(
        pve_env.config(
            credentials={"tokenId": "root@pam!virtrigaud", "tokenSecret": pve_env.token_secret},
            options=pve_env.options(nodeAccess="local", sshHost="", sshPort=""),
        )
    )
    try:
        for client in _serve(driver):
            location = _location(exports_dir, "local.qcow2")
            exported = _export(client, vm.vmid, "scsi0", location)
            assert exported.content_sha256 == content_sha256(vm.disks["scsi0"], "qcow2")
            name = f"local-{uuid.uuid4().hex[:6]}"
            result = _run(client, _import(client, location, exported, name)).import_result
            assert content_sha256(Path(result.path), "qcow2") == exported.content_sha256
    finally:
        driver.close()
    _assert_clean(pve_env)


def test_migration_round_trip_through_real_s3(
    pve_env: PveEnv, pve_provider: ProviderClient, seaweed: SeaweedFS
) -> None:
    """Export to SeaweedFS (S3), import from it, create the VM: same content digest."""
    vm = pve_env.add_vm("s3-src", {"scsi0": ("qcow2", 16 * MiB, b"\x3c" * 300_000)})
    bucket = seaweed.create_bucket(f"pve-{uuid.uuid4().hex[:6]}")
    location = pb.StorageLocation(
        backend=pb.STORAGE_BACKEND_S3,
        url=f"s3://{bucket}/vm/scsi0.qcow2",
        credentials=seaweed.credentials(),
        options={"endpoint": seaweed.endpoint},
    )
    exported = _export(pve_provider, vm.vmid, "scsi0", location)
    stored = seaweed.client().get_object(Bucket=bucket, Key="vm/scsi0.qcow2")["Body"].read()
    assert hashlib.sha256(stored).hexdigest() == exported.sha256
    name = f"s3-{uuid.uuid4().hex[:6]}"
    result = _run(pve_provider, _import(pve_provider, location, exported, name)).import_result
    assert result.content_sha256 == content_sha256(vm.disks["scsi0"], "qcow2")
    assert content_sha256(Path(result.path), "qcow2") == result.content_sha256
    _run(
        pve_provider,
        pve_provider.delete_disk(
            pb.DeleteDiskRequest(operation_id=_op("dd"), disk_id=result.disk_id)
        ),
    )
    _assert_clean(pve_env)


def test_import_for_a_block_storage_is_raw_in_the_import_storage(
    pve_env: PveEnv, pve_provider: ProviderClient, exports_dir: Path
) -> None:
    vm = pve_env.add_vm("lvm-src", {"scsi0": ("qcow2", 8 * MiB, b"\x17" * 4096)})
    location = _location(exports_dir, "lvm.qcow2")
    exported = _export(pve_provider, vm.vmid, "scsi0", location)
    request = pb.ImportDiskRequest(
        operation_id=_op("import"),
        source=location,
        expected_sha256=exported.sha256,
        source_format=exported.format,
        storage_hint="local-lvm",
        target_volume_name="lvm-disk",
    )
    error = _error(pve_provider, pve_provider.import_disk(request))
    assert isinstance(error, errors.FailedPrecondition) and "importStorage" in error.message
    request.storage_hint = "no-such-storage"
    request.operation_id = _op("import")
    assert isinstance(_error(pve_provider, pve_provider.import_disk(request)), errors.NotFound)
    driver = pve_env.driver(importStorage=STORAGE)
    try:
        for client in _serve(driver):
            request.storage_hint = "local-lvm"
            request.operation_id = _op("import")
            result = _run(client, client.import_disk(request)).import_result
            assert result.format == pb.DISK_FORMAT_RAW  # what an LVM-thin volume holds
            assert result.disk_id == f"{STORAGE}:import/lvm-disk.raw"
            assert content_sha256(Path(result.path), "raw") == exported.content_sha256
            before = len(pve_env.pve.requests)
            vm_id = _run(
                client,
                client.create_vm(
                    pb.CreateVMRequest(
                        operation_id=_op("create"),
                        name="on-lvm",
                        cpu=1,
                        memory_mib=128,
                        storage_hint="local-lvm",
                        disks=[pb.DiskSpec(imported=pb.ImportedDisk(disk_id=result.disk_id))],
                    )
                ),
            ).create_vm_result.vm_id
            posted = [
                b
                for m, p, b in pve_env.pve.requests[before:]
                if m == "POST" and p.endswith("/qemu")
            ]
            # No format= for a block storage: PVE writes raw there.
            assert parse_qs(bytes(posted[0]).decode())["scsi0"] == [
                f"local-lvm:0,import-from={result.disk_id}"
            ]
            assert client.describe_vm(vm_id).disks[0].storage == "local-lvm"
            _run(
                client,
                client.delete_vm(
                    pb.DeleteVMRequest(operation_id=_op("d"), vm_id=vm_id, delete_disks=True)
                ),
            )
            assert not Path(result.path).exists()
    finally:
        driver.close()


def test_a_cancelled_import_leaves_nothing_on_the_node_or_the_provider(
    pve_env: PveEnv, pve_provider: ProviderClient, exports_dir: Path
) -> None:
    vm_id, disk = slow_disk(pve_env)
    location = _location(exports_dir, "big.qcow2")
    exported = _export(pve_provider, vm_id, disk, location, target_format=pb.DISK_FORMAT_QCOW2)
    name = f"cancelled-{uuid.uuid4().hex[:6]}"
    task = _import(pve_provider, location, exported, name)
    deadline = time.monotonic() + TIMEOUT
    while pve_provider.get_task(task.id).stage != "writing to the node":
        assert time.monotonic() < deadline and pve_provider.get_task(task.id).state in (
            pb.TASK_STATE_PENDING,
            pb.TASK_STATE_RUNNING,
        )
        time.sleep(0.01)
    pve_provider.cancel_task(task.id)
    final = pve_provider.wait_task(task.id, timeout=TIMEOUT)
    assert final.state == pb.TASK_STATE_CANCELLED, final
    assert not (pve_env.import_dir() / f"{name}.qcow2").exists()
    _assert_clean(pve_env)
    busy = subprocess.run(
        ["pgrep", "-f", f"of={pve_env.import_dir()}"], capture_output=True, text=True, check=False
    )
    assert busy.stdout.strip() == "", "the node's dd was not stopped"


def test_a_template_clone_with_an_imported_extra_disk(
    pve_env: PveEnv, pve_provider: ProviderClient, tmp_path: Path
) -> None:
    template = pve_env.add_vm(
        f"tmpl-{uuid.uuid4().hex[:6]}",
        {"scsi0": ("qcow2", 8 * MiB, b"\x01" * 512), "scsi1": ("qcow2", 8 * MiB, b"\x02" * 512)},
    )
    pve_env.pve.vm(int(template.vmid)).template = True
    pve_env.import_dir().mkdir(exist_ok=True)
    extra = pve_env.import_dir() / f"extra-{uuid.uuid4().hex[:6]}.qcow2"
    write_image(extra, "qcow2", 4 * MiB, b"\xee" * 4096)
    expected = content_sha256(extra, "qcow2")
    vm_id = _run(
        pve_provider,
        pve_provider.create_vm(
            pb.CreateVMRequest(
                operation_id=_op("clone"),
                name=f"clone-extra-{uuid.uuid4().hex[:6]}",
                cpu=1,
                memory_mib=256,
                storage_hint=STORAGE,
                disks=[
                    pb.DiskSpec(image=pb.ImageRef(name=template.name)),
                    pb.DiskSpec(imported=pb.ImportedDisk(disk_id=f"{STORAGE}:import/{extra.name}")),
                ],
            )
        ),
    ).create_vm_result.vm_id
    disks = {d.id: d for d in pve_provider.describe_vm(vm_id).disks}
    assert sorted(disks) == ["scsi0", "scsi1", "scsi2"]  # the import follows the template's
    assert content_sha256(Path(disks["scsi2"].path), "qcow2") == expected
    assert disks["scsi0"].boot
    _run(
        pve_provider,
        pve_provider.delete_vm(
            pb.DeleteVMRequest(operation_id=_op("d"), vm_id=vm_id, delete_disks=True)
        ),
    )
    assert not extra.exists()  # delete_disks removed the import volume it was made from
