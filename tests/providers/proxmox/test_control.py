"""The Proxmox provider's control plane against fakepve (plus the real sshd for Validate).

Every call goes through the real runtime server and the manager's gRPC client, so
errors are checked as the manager sees them (typed, with clear messages).
"""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest

from manager.providerclient import ProviderClient, raise_for_task
from providers.proxmox.driver import create
from tests.providers.proxmox.env import BRIDGE, NODE, STORAGE, MiB, PveEnv
from virtrigaud import errors
from virtrigaud.provider.v1 import provider_pb2 as pb

TIMEOUT = 60.0


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


def test_capabilities_name_the_pve_release(pve_provider: ProviderClient) -> None:
    caps = pve_provider.get_capabilities()
    assert caps.provider_type == "proxmox"
    assert caps.hypervisor_version == "Proxmox VE 9.0.10"
    assert pb.FEATURE_SNAPSHOTS in caps.features
    assert caps.native_format == pb.DISK_FORMAT_QCOW2


def test_validate_checks_login_node_storage_bridges_and_ssh(pve_provider: ProviderClient) -> None:
    good = pve_provider.validate(storage_hint=STORAGE, networks=[BRIDGE])
    assert good.ok, [(c.name, c.message) for c in good.checks if not c.ok]
    names = [c.name for c in good.checks]
    assert names[:3] == ["connection", f"node:{NODE}", f"storage:{STORAGE}"]
    assert f"network:{BRIDGE}" in names
    ssh = next(c for c in good.checks if c.name.startswith("node-access:"))
    assert "qemu-img" in ssh.message
    bad = pve_provider.validate(storage_hint="nostore", networks=["vmbr77"])
    failed = {c.name: c.message for c in bad.checks if not c.ok}
    assert not bad.ok
    assert "nostore" in failed["storage:nostore"]
    assert "vmbr77" in failed["network:vmbr77"]


def test_validate_reports_an_unknown_node(pve_env: PveEnv) -> None:
    driver = pve_env.driver(node="pve-nope")
    try:
        result = driver.validate(pb.ValidateRequest())
    finally:
        driver.close()
    assert not result.ok
    check = next(c for c in result.checks if c.name == "node:pve-nope")
    assert "pve-nope" in check.message and "pve1" in check.message


def test_describe_reads_the_qemu_config(pve_env: PveEnv, pve_provider: ProviderClient) -> None:
    vm = pve_env.add_vm(
        "inv-vm",
        {"scsi0": ("qcow2", 32 * MiB, b"\x11" * 4096), "virtio1": ("raw", 16 * MiB, b"\x22" * 512)},
        extra_config={
            "sockets": "2",
            "bios": "ovmf",
            "ide2": "none,media=cdrom",
            "net1": f"e1000=52:54:00:12:34:99,bridge={BRIDGE}",
        },
    )
    described = pve_provider.describe_vm(vm.vmid)
    assert (described.name, described.cpu, described.cpu_sockets) == ("inv-vm", 4, 2)
    assert described.memory_mib == 256
    assert described.firmware == pb.FIRMWARE_UEFI
    assert described.power_state == pb.POWER_STATE_OFF
    disks = {d.id: d for d in described.disks}
    assert set(disks) == {"scsi0", "virtio1", "ide2"}
    assert disks["scsi0"].path == str(vm.disks["scsi0"])
    assert disks["scsi0"].format == pb.DISK_FORMAT_QCOW2 and disks["scsi0"].boot
    assert disks["scsi0"].virtual_size_bytes == 32 * MiB
    assert (disks["virtio1"].bus, disks["virtio1"].format) == ("virtio", pb.DISK_FORMAT_RAW)
    assert disks["virtio1"].storage == STORAGE
    assert disks["ide2"].device == pb.DISK_DEVICE_CDROM
    nics = {n.id: n for n in described.nics}
    assert (nics["net0"].network, nics["net0"].model, nics["net0"].vlan_id) == (
        BRIDGE,
        "virtio",
        12,
    )
    assert nics["net0"].mac.startswith("52:54:00:aa:")
    assert (nics["net1"].model, nics["net1"].mac, nics["net1"].vlan_id) == (
        "e1000",
        "52:54:00:12:34:99",
        0,
    )
    listed = {v.id: v for v in pve_provider.iter_vms(name_filter="inv-*")}
    assert listed[vm.vmid].name == "inv-vm"
    with pytest.raises(errors.NotFound):
        pve_provider.describe_vm("999999")
    with pytest.raises(errors.NotFound):
        pve_provider.describe_vm("not-a-vmid")


def test_power_actions_and_the_state_they_leave(
    pve_env: PveEnv, pve_provider: ProviderClient
) -> None:
    vm = pve_env.add_vm("power-vm", {"scsi0": ("qcow2", 8 * MiB, b"\x01")})
    for action, state in (
        (pb.POWER_ACTION_ON, pb.POWER_STATE_ON),
        (pb.POWER_ACTION_REBOOT, pb.POWER_STATE_ON),
        (pb.POWER_ACTION_SHUTDOWN, pb.POWER_STATE_OFF),
        (pb.POWER_ACTION_ON, pb.POWER_STATE_ON),
        (pb.POWER_ACTION_OFF, pb.POWER_STATE_OFF),
    ):
        _run(
            pve_provider,
            pve_provider.power(
                pb.PowerRequest(operation_id=_op("p"), vm_id=vm.vmid, action=action)
            ),
        )
        assert pve_provider.describe_vm(vm.vmid).power_state == state, action
    task = pve_provider.power(
        pb.PowerRequest(operation_id=_op("p"), vm_id=vm.vmid, action=pb.POWER_ACTION_REBOOT)
    )
    assert isinstance(_error(pve_provider, task), errors.FailedPrecondition)


def test_a_failed_pve_task_surfaces_its_exit_status_and_log(
    pve_env: PveEnv, pve_provider: ProviderClient
) -> None:
    vm = pve_env.add_vm("broken-vm", {"scsi0": ("qcow2", 8 * MiB, b"\x01")})
    pve_env.pve.vm(int(vm.vmid)).start_error = "volume 'vmstore:gone' does not exist"
    task = pve_provider.power(
        pb.PowerRequest(operation_id=_op("p"), vm_id=vm.vmid, action=pb.POWER_ACTION_ON)
    )
    error = _error(pve_provider, task)
    assert isinstance(error, errors.NotFound)
    assert "PVE task UPID:pve1:" in error.message
    assert "volume 'vmstore:gone' does not exist" in error.message
    assert "TASK ERROR" in error.message  # the log tail
    assert pve_provider.describe_vm(vm.vmid).power_state == pb.POWER_STATE_OFF


def test_snapshots_are_pve_snapshots(pve_env: PveEnv, pve_provider: ProviderClient) -> None:
    vm = pve_env.add_vm("snap-vm", {"scsi0": ("qcow2", 8 * MiB, b"\x01")}, status="running")
    request = pb.CreateSnapshotRequest(
        operation_id=_op("snap"), vm_id=vm.vmid, name="before migration!", description="d1"
    )
    snap = _run(pve_provider, pve_provider.create_snapshot(request)).snapshot_result.snapshot_id
    assert snap.startswith("before-migration-")
    described = pve_provider.describe_vm(vm.vmid)
    assert [(s.id, s.description) for s in described.snapshots] == [(snap, "d1")]
    listed = subprocess.run(
        ["qemu-img", "snapshot", "-U", "-l", str(vm.disks["scsi0"])],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert snap in listed
    # The same operation again finds its snapshot instead of failing on the name.
    again = pb.CreateSnapshotRequest()
    again.CopyFrom(request)
    driver_snap = _run(pve_provider, pve_provider.create_snapshot(again)).snapshot_result
    assert driver_snap.snapshot_id == snap
    _run(
        pve_provider,
        pve_provider.delete_snapshot(
            pb.DeleteSnapshotRequest(operation_id=_op("unsnap"), vm_id=vm.vmid, snapshot_id=snap)
        ),
    )
    assert not pve_provider.describe_vm(vm.vmid).snapshots
    task = pve_provider.delete_snapshot(
        pb.DeleteSnapshotRequest(operation_id=_op("unsnap"), vm_id=vm.vmid, snapshot_id=snap)
    )
    assert isinstance(_error(pve_provider, task), errors.NotFound)


def test_bad_token_is_a_clear_authentication_error(pve_env: PveEnv) -> None:
    driver = create(pve_env.config(credentials=pve_env.credentials(tokenSecret="wrong")))
    try:
        with pytest.raises(errors.AuthenticationError, match="rejected the credentials") as info:
            driver.list_vms("")
        assert "wrong" not in info.value.message
        result = driver.validate(pb.ValidateRequest())
        assert not result.ok and not result.checks[0].ok
        assert "401" in result.checks[0].message
    finally:
        driver.close()


def test_password_login_and_a_bad_password(pve_env: PveEnv) -> None:
    base = pve_env.credentials(tokenId="", tokenSecret="")
    good = create(
        pve_env.config(credentials={**base, "username": "root@pam", "password": "secret"})
    )
    try:
        assert good.capabilities().hypervisor_version == "Proxmox VE 9.0.10"
        assert good.validate(pb.ValidateRequest()).checks[0].ok
        pve_env.pve.revoke_tickets()  # the ticket expired: the next call logs in again
        assert good.list_vms("no-such-name-*") == []
        assert pve_env.pve.tickets, "no new ticket was issued"
    finally:
        good.close()
    bad = create(pve_env.config(credentials={**base, "username": "root", "password": "nope"}))
    try:
        with pytest.raises(errors.AuthenticationError, match="refused the login"):
            bad.describe_vm("100")
    finally:
        bad.close()


def test_secret_and_options_are_checked_at_start(pve_env: PveEnv) -> None:
    with pytest.raises(errors.InvalidArgument, match="tokenId"):
        create(pve_env.config(credentials=pve_env.credentials(tokenId="no-bang")))
    with pytest.raises(errors.InvalidArgument, match="knownHosts"):
        create(pve_env.config(credentials=pve_env.credentials(knownHosts="")))
    with pytest.raises(errors.InvalidArgument, match="nodeAccess"):
        create(pve_env.config(options=pve_env.options(nodeAccess="telepathy")))
    with pytest.raises(errors.InvalidArgument, match="endpoint"):
        create(pve_env.config().__class__(endpoint="http://plain:8006"))


def test_create_vm_from_a_template_clone(pve_env: PveEnv, pve_provider: ProviderClient) -> None:
    template = pve_env.add_vm("tmpl-debian", {"scsi0": ("qcow2", 8 * MiB, b"\x05" * 512)})
    pve_env.pve.vm(int(template.vmid)).template = True
    name = f"clone-{uuid.uuid4().hex[:6]}"
    request = pb.CreateVMRequest(
        operation_id=_op("clone"),
        name=name,
        cpu=3,
        memory_mib=1024,
        firmware=pb.FIRMWARE_BIOS,
        disks=[pb.DiskSpec(image=pb.ImageRef(name="tmpl-debian"))],
        nics=[pb.NicSpec(network=BRIDGE, mac="52:54:00:01:02:03", vlan_id=7)],
        storage_hint=STORAGE,
        labels={"owner": "tests"},
    )
    vm_id = _run(pve_provider, pve_provider.create_vm(request)).create_vm_result.vm_id
    try:
        vm = pve_provider.describe_vm(vm_id)
        assert (vm.name, vm.cpu, vm.memory_mib) == (name, 3, 1024)
        assert [(n.network, n.mac, n.vlan_id) for n in vm.nics] == [
            (BRIDGE, "52:54:00:01:02:03", 7)
        ]
        assert [d.id for d in vm.disks] == ["scsi0"]
        assert vm.disks[0].path.startswith(str(pve_env.storage_path / "images" / vm_id))
        assert template.vmid not in vm.disks[0].path
        config = pve_env.pve.vm(int(vm_id)).config
        assert "owner: tests" in config["description"]
        # Re-submitting the same operation (a restarted provider) finds the VM.
        again = pb.CreateVMRequest()
        again.CopyFrom(request)
        assert pve_provider.create_vm(again).id  # same task in this process
        with pytest.raises(errors.InvalidArgument, match="operation_id"):
            changed = pb.CreateVMRequest()
            changed.CopyFrom(request)
            changed.cpu = 4
            pve_provider.create_vm(changed)
        other = pb.CreateVMRequest()
        other.CopyFrom(request)
        other.operation_id = _op("clone-other")
        assert isinstance(_error(pve_provider, pve_provider.create_vm(other)), errors.AlreadyExists)
    finally:
        _run(
            pve_provider,
            pve_provider.delete_vm(
                pb.DeleteVMRequest(operation_id=_op("del"), vm_id=vm_id, delete_disks=True)
            ),
        )
    with pytest.raises(errors.NotFound):
        pve_provider.describe_vm(vm_id)


def test_create_vm_refuses_what_pve_lacks(pve_env: PveEnv, pve_provider: ProviderClient) -> None:
    base = pb.CreateVMRequest(
        name="refused",
        cpu=1,
        memory_mib=128,
        disks=[pb.DiskSpec(image=pb.ImageRef(name="no-such-template"))],
        storage_hint=STORAGE,
    )
    cases: list[tuple[dict[str, object], type[errors.VirtrigaudError], str]] = [
        ({}, errors.NotFound, "no-such-template"),
        ({"storage_hint": "nostore"}, errors.NotFound, "nostore"),
        ({"name": "bad_name!"}, errors.InvalidArgument, "name"),
    ]
    for change, kind, text in cases:
        request = pb.CreateVMRequest()
        request.CopyFrom(base)
        request.operation_id = _op("refused")
        for key, value in change.items():
            setattr(request, key, value)
        error = _error(pve_provider, pve_provider.create_vm(request))
        assert isinstance(error, kind), (change, error)
        assert text in error.message
    request = pb.CreateVMRequest()
    request.CopyFrom(base)
    request.operation_id = _op("refused")
    request.disks[0].image.name = "tmpl-x"
    request.nics.append(pb.NicSpec(network="vmbr404"))
    pve_env.add_vm("tmpl-x", {"scsi0": ("qcow2", 8 * MiB, b"\x05")})
    error = _error(pve_provider, pve_provider.create_vm(request))
    # tmpl-x is not a template: the image is not found
    assert isinstance(error, errors.NotFound)
    assert not [v for v in pve_provider.iter_vms(name_filter="refused")]


def test_delete_vm_keeping_disks_is_refused(pve_env: PveEnv, pve_provider: ProviderClient) -> None:
    vm = pve_env.add_vm("keep-disks", {"scsi0": ("qcow2", 8 * MiB, b"\x01")})
    task = pve_provider.delete_vm(
        pb.DeleteVMRequest(operation_id=_op("del"), vm_id=vm.vmid, delete_disks=False)
    )
    assert isinstance(_error(pve_provider, task), errors.Unsupported)
    assert pve_provider.describe_vm(vm.vmid).name == "keep-disks"
    assert vm.disks["scsi0"].exists()
    _run(
        pve_provider,
        pve_provider.delete_vm(
            pb.DeleteVMRequest(operation_id=_op("del"), vm_id=vm.vmid, delete_disks=True)
        ),
    )
    assert not vm.disks["scsi0"].exists()  # purged with the VM


def test_a_cancelled_create_vm_waits_for_pve_and_removes_the_vm(
    pve_env: PveEnv, pve_provider: ProviderClient
) -> None:
    """Cancelled while PVE's create task runs (slow Ceph storage): the VM PVE then
    finishes is destroyed, nothing of it is left."""
    pve_env.import_dir().mkdir(exist_ok=True)
    source = pve_env.import_dir() / f"slowsrc-{uuid.uuid4().hex[:6]}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(source), "8M"], check=True)
    pve = pve_env.pve
    pve.add_ceph_storage("ceph-slow")
    pve.time_scale = 0.05
    pve.ceph_slow(40)  # 2 s of real time for every RBD operation
    name = f"cancelled-{uuid.uuid4().hex[:6]}"
    try:
        task = pve_provider.create_vm(
            pb.CreateVMRequest(
                operation_id=_op("create"),
                name=name,
                cpu=1,
                memory_mib=128,
                storage_hint="ceph-slow",
                disks=[
                    pb.DiskSpec(imported=pb.ImportedDisk(disk_id=f"{STORAGE}:import/{source.name}"))
                ],
            )
        )
        while not pve_provider.get_task(task.id).stage.startswith("creating"):
            time.sleep(0.01)
        time.sleep(0.3)  # PVE's task is running now
        assert [v.name for v in pve.vms if v.name == name] == [name]
        pve_provider.cancel_task(task.id)
        final = pve_provider.wait_task(task.id, timeout=TIMEOUT)
        assert final.state == pb.TASK_STATE_CANCELLED
        assert [v for v in pve.vms if v.name == name] == []
        assert not [vol for vol in pve.storages["ceph-slow"].get("volumes", {}).values()], (
            "the cancelled VM's volume was left on the storage"
        )
    finally:
        pve.ceph_recover()
        pve.time_scale = 0
        del pve.storages["ceph-slow"]
        source.unlink()


def test_the_api_certificate_is_verified(pve_env: PveEnv) -> None:
    """Without the CA (fakepve's certificate is self-signed) the API is refused."""
    strict = create(pve_env.config(options=pve_env.options(caFile="")))
    try:
        with pytest.raises(errors.Unavailable, match="TLS verification"):
            strict.describe_vm("100")
    finally:
        strict.close()
    lax = create(pve_env.config(options=pve_env.options(caFile="", verifyTls="false")))
    try:
        assert lax.validate(pb.ValidateRequest()).checks[0].ok
    finally:
        lax.close()
