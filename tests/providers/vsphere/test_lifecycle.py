"""CreateVM (imported disks, image clone), Power and DeleteVM against vcsim."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from manager.providerclient import ProviderClient
from tests.providers.vsphere.helpers import TEST_FOLDER, Lab, MiB, failure, finish, op, pattern
from tests.servers.vcsim import DATASTORE, NETWORK, PORTGROUP
from virtrigaud import errors
from virtrigaud.provider.v1 import provider_pb2 as pb


def _imported(path: str, size: int = 0, bus: str = "") -> pb.DiskSpec:
    return pb.DiskSpec(
        imported=pb.ImportedDisk(disk_id=path, format=pb.DISK_FORMAT_VMDK, size_bytes=size),
        bus=bus,
    )


def _create(provider: ProviderClient, **fields: object) -> pb.CreateVMRequest:
    values: dict[str, object] = {"cpu": 1, "memory_mib": 128, **fields}
    return pb.CreateVMRequest(operation_id=op("create"), **values)  # type: ignore[arg-type]


def _power(provider: ProviderClient, vm_id: str, action: int, timeout: int = 0) -> None:
    finish(
        provider,
        provider.power(
            pb.PowerRequest(
                operation_id=op("power"),
                vm_id=vm_id,
                action=action,  # type: ignore[arg-type]
                graceful_timeout_seconds=timeout,
            )
        ),
    )


def test_create_from_imported_disks_then_power_and_delete_keeping_disks(
    vs: Lab, provider: ProviderClient
) -> None:
    a = vs.put_disk(vs.name("life-a"), pattern(MiB, 6), 8 * MiB)
    b = vs.put_disk(vs.name("life-b"), pattern(MiB, 7), 4 * MiB)
    name = vs.name("created")
    task = finish(
        provider,
        provider.create_vm(
            _create(
                provider,
                name=name,
                cpu=2,
                memory_mib=512,
                firmware=pb.FIRMWARE_UEFI,
                storage_hint=DATASTORE,
                disks=[_imported(a), _imported(b, size=6 * MiB, bus="sata")],
                nics=[
                    pb.NicSpec(network=PORTGROUP, mac="52:54:00:aa:bb:01"),
                    pb.NicSpec(network=NETWORK, model="e1000"),
                ],
                labels={"migration": "m1", "owner": "team-a"},
                power_on=True,
            )
        ),
    )
    vm_id = task.create_vm_result.vm_id
    vm = provider.describe_vm(vm_id)
    assert (vm.name, vm.cpu, vm.memory_mib, vm.firmware) == (name, 2, 512, pb.FIRMWARE_UEFI)
    assert vm.power_state == pb.POWER_STATE_ON
    disks = [(d.path, d.virtual_size_bytes, d.bus) for d in vm.disks]
    assert disks == [(a, 8 * MiB, "scsi"), (b, 6 * MiB, "sata")]
    assert [(n.network, n.model) for n in vm.nics] == [(PORTGROUP, "vmxnet3"), (NETWORK, "e1000")]
    assert vm.nics[0].mac == "52:54:00:aa:bb:01" and vm.nics[1].mac
    assert vs.prop(vm_id, "config.annotation") == "migration=m1\nowner=team-a"
    for action, state in (
        (pb.POWER_ACTION_SHUTDOWN, pb.POWER_STATE_OFF),  # no VMware Tools: powered off
        (pb.POWER_ACTION_ON, pb.POWER_STATE_ON),
        (pb.POWER_ACTION_REBOOT, pb.POWER_STATE_ON),  # no Tools: reset
        (pb.POWER_ACTION_ON, pb.POWER_STATE_ON),  # already on: nothing to do
        (pb.POWER_ACTION_OFF, pb.POWER_STATE_OFF),
        (pb.POWER_ACTION_OFF, pb.POWER_STATE_OFF),
    ):
        _power(provider, vm_id, action)
        assert provider.describe_vm(vm_id).power_state == state
    error = failure(
        provider,
        lambda: provider.power(
            pb.PowerRequest(operation_id=op("reboot"), vm_id=vm_id, action=pb.POWER_ACTION_REBOOT)
        ),
    )
    assert isinstance(error, errors.FailedPrecondition)
    _power(provider, vm_id, pb.POWER_ACTION_ON)
    finish(
        provider,
        provider.delete_vm(pb.DeleteVMRequest(operation_id=op("del"), vm_id=vm_id)),
    )
    with pytest.raises(errors.NotFound):
        provider.describe_vm(vm_id)
    folder = vs.root / TEST_FOLDER
    for disk in (vs.name("life-a"), vs.name("life-b")):  # without delete_disks they stay
        assert (folder / f"{disk}.vmdk").exists() and (folder / f"{disk}-flat.vmdk").exists()
    assert (folder / f"{vs.name('life-a')}-flat.vmdk").read_bytes()[:MiB] == pattern(MiB, 6)


def test_delete_with_disks_removes_their_files(vs: Lab, provider: ProviderClient) -> None:
    path = vs.put_disk(vs.name("gone"), pattern(MiB, 8), 2 * MiB)
    vm_id = finish(
        provider,
        provider.create_vm(
            _create(provider, name=vs.name("gone"), disks=[_imported(path)], storage_hint=DATASTORE)
        ),
    ).create_vm_result.vm_id
    finish(
        provider,
        provider.delete_vm(
            pb.DeleteVMRequest(operation_id=op("del"), vm_id=vm_id, delete_disks=True)
        ),
    )
    assert not (vs.root / TEST_FOLDER / f"{vs.name('gone')}-flat.vmdk").exists()
    error = failure(
        provider,
        lambda: provider.delete_vm(pb.DeleteVMRequest(operation_id=op("again"), vm_id=vm_id)),
    )
    assert isinstance(error, errors.NotFound)


def test_create_by_cloning_an_image(vs: Lab, provider: ProviderClient) -> None:
    path = vs.put_disk(vs.name("tmpl"), pattern(MiB, 9), 4 * MiB)
    template = vs.make_vm(vs.name("template"), [(path, 4 * MiB)])
    name = vs.name("clone")
    vm_id = finish(
        provider,
        provider.create_vm(
            _create(
                provider,
                name=name,
                cpu=4,
                memory_mib=1024,
                disks=[
                    pb.DiskSpec(image=pb.ImageRef(name=vs.name("template")), size_bytes=8 * MiB)
                ],
                nics=[pb.NicSpec(network=PORTGROUP, mac="52:54:00:aa:bb:02", model="e1000e")],
                storage_hint=DATASTORE,
            )
        ),
    ).create_vm_result.vm_id
    vs.vms.append(vs.vm(vm_id))
    assert vm_id != template
    vm = provider.describe_vm(vm_id)
    assert (vm.name, vm.cpu, vm.memory_mib) == (name, 4, 1024)
    assert [d.virtual_size_bytes for d in vm.disks if d.device == pb.DISK_DEVICE_DISK] == [8 * MiB]
    assert [(n.network, n.mac, n.model) for n in vm.nics] == [
        (PORTGROUP, "52:54:00:aa:bb:02", "e1000e")
    ]
    source = provider.describe_vm(template)  # the template is untouched
    assert [(n.network, n.mac) for n in source.nics] == [(NETWORK, "00:50:56:3f:00:01")]


def _names(provider: ProviderClient, pattern_: str) -> list[str]:
    return [vm.name for vm in provider.iter_vms(name_filter=pattern_)]


@pytest.mark.parametrize(
    ("change", "kind", "match"),
    [
        (lambda r, p: setattr(r, "storage_hint", "no-such-ds"), errors.NotFound, "no-such-ds"),
        (lambda r, p: r.nics.add(network="no-such-net"), errors.NotFound, "no-such-net"),
        (
            lambda r, p: r.nics.add(network=PORTGROUP, model="rtl8139"),
            errors.InvalidArgument,
            "rtl8139",
        ),
        (
            lambda r, p: r.nics.add(network=PORTGROUP, vlan_id=12),
            errors.Unsupported,
            "VLAN 12 is not set per NIC",
        ),
        (
            lambda r, p: r.disks.append(_imported(f"[{DATASTORE}] nowhere/missing.vmdk")),
            errors.NotFound,
            "missing.vmdk",
        ),
        (lambda r, p: r.disks.append(_imported(p, bus="floppy")), errors.InvalidArgument, "bus"),
        (lambda r, p: r.disks.append(_imported(p, size=MiB)), errors.InvalidArgument, "smaller"),
        (
            lambda r, p: r.disks.append(pb.DiskSpec(image=pb.ImageRef(name="no-such-template"))),
            errors.InvalidArgument,
            "first",
        ),
        (
            lambda r, p: r.disks.append(_imported("not a path")),
            errors.InvalidArgument,
            "datastore path",
        ),
    ],
)
def test_bad_create_requests_create_nothing(
    vs: Lab,
    provider: ProviderClient,
    change: Callable[[pb.CreateVMRequest, str], None],
    kind: type[errors.VirtrigaudError],
    match: str,
) -> None:
    path = vs.put_disk(vs.name("bad"), pattern(MiB, 10), 2 * MiB)
    request = _create(
        provider, name=vs.name("bad"), storage_hint=DATASTORE, disks=[_imported(path)]
    )
    change(request, path)
    error = failure(provider, lambda: provider.create_vm(request))
    assert isinstance(error, kind), error
    assert match in error.message
    assert _names(provider, vs.name("bad")) == []


def test_unknown_image_is_not_found(vs: Lab, provider: ProviderClient) -> None:
    request = _create(
        provider,
        name=vs.name("noimg"),
        storage_hint=DATASTORE,
        disks=[pb.DiskSpec(image=pb.ImageRef(name="no-such-template-zz9"))],
    )
    error = failure(provider, lambda: provider.create_vm(request))
    assert isinstance(error, errors.NotFound) and "no-such-template-zz9" in error.message
    assert _names(provider, vs.name("noimg")) == []


def test_power_of_unknown_vm_is_not_found(provider: ProviderClient) -> None:
    error = failure(
        provider,
        lambda: provider.power(
            pb.PowerRequest(operation_id=op("p"), vm_id="vm-999999", action=pb.POWER_ACTION_ON)
        ),
    )
    assert isinstance(error, errors.NotFound)


def test_a_failure_after_the_vm_exists_removes_it_and_keeps_imported_disks(
    vs: Lab, provider: ProviderClient
) -> None:
    """The clone is made, then attaching an imported disk fails (its flat extent is
    missing): the clone is removed again; the template and the disk files stay."""
    tmpl_disk = vs.put_disk(vs.name("keep-t"), pattern(MiB, 21), 2 * MiB)
    vs.make_vm(vs.name("keep-template"), [(tmpl_disk, 2 * MiB)])
    broken = vs.put_disk(vs.name("broken"), pattern(MiB, 22), 2 * MiB)
    flat = vs.root / TEST_FOLDER / f"{vs.name('broken')}-flat.vmdk"
    flat.unlink()
    request = _create(
        provider,
        name=vs.name("keep-clone"),
        storage_hint=DATASTORE,
        disks=[pb.DiskSpec(image=pb.ImageRef(name=vs.name("keep-template"))), _imported(broken)],
    )
    error = failure(provider, lambda: provider.create_vm(request))
    assert isinstance(error, errors.NotFound), error
    assert _names(provider, vs.name("keep-clone")) == []
    assert _names(provider, vs.name("keep-template")) == [vs.name("keep-template")]
    assert (vs.root / TEST_FOLDER / f"{vs.name('broken')}.vmdk").exists()
    assert (vs.root / TEST_FOLDER / f"{vs.name('keep-t')}-flat.vmdk").read_bytes()[:MiB] == (
        pattern(MiB, 21)
    )
