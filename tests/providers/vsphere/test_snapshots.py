"""CreateSnapshot / DeleteSnapshot against vcsim."""

from __future__ import annotations

from manager.providerclient import ProviderClient
from tests.providers.vsphere.helpers import Lab, MiB, failure, finish, op, pattern
from virtrigaud import errors
from virtrigaud.provider.v1 import provider_pb2 as pb


def _snap(
    provider: ProviderClient,
    vm_id: str,
    name: str,
    *,
    quiesce: bool = False,
    include_memory: bool = False,
) -> str:
    request = pb.CreateSnapshotRequest(
        operation_id=op("snap"),
        vm_id=vm_id,
        name=name,
        quiesce=quiesce,
        include_memory=include_memory,
    )
    return finish(provider, provider.create_snapshot(request)).snapshot_result.snapshot_id


def _unsnap(provider: ProviderClient, vm_id: str, snap: str) -> pb.Task:
    return provider.delete_snapshot(
        pb.DeleteSnapshotRequest(operation_id=op("unsnap"), vm_id=vm_id, snapshot_id=snap)
    )


def test_snapshots_of_a_running_vm_are_listed_and_removed_one_by_one(
    vs: Lab, provider: ProviderClient
) -> None:
    path = vs.put_disk(vs.name("snaps"), pattern(MiB, 20))
    vm_id = vs.make_vm(vs.name("snaps"), [(path, MiB)], power_on=True)
    # Without VMware Tools a quiesced snapshot is not possible: taken without quiescing.
    first = _snap(provider, vm_id, "first", quiesce=True)
    second = _snap(provider, vm_id, "second", include_memory=True)
    listed = provider.describe_vm(vm_id).snapshots
    assert [(s.id, s.name) for s in listed] == [(first, "first"), (second, "second")]
    finish(provider, _unsnap(provider, vm_id, first))  # the older one; the newer stays
    assert [s.id for s in provider.describe_vm(vm_id).snapshots] == [second]
    error = failure(provider, lambda: _unsnap(provider, vm_id, first))
    assert isinstance(error, errors.NotFound)
    finish(provider, _unsnap(provider, vm_id, second))
    assert provider.describe_vm(vm_id).snapshots == []
    assert provider.describe_vm(vm_id).power_state == pb.POWER_STATE_ON


def test_snapshot_errors(vs: Lab, provider: ProviderClient) -> None:
    error = failure(
        provider,
        lambda: provider.create_snapshot(
            pb.CreateSnapshotRequest(operation_id=op("s"), vm_id="vm-999999", name="x")
        ),
    )
    assert isinstance(error, errors.NotFound)
    other = vs.make_vm(vs.name("other"), [])
    mine = vs.make_vm(vs.name("mine"), [])
    snap = _snap(provider, other, "theirs")
    error = failure(provider, lambda: _unsnap(provider, mine, snap))  # not this VM's snapshot
    assert isinstance(error, errors.NotFound)
    assert [s.id for s in provider.describe_vm(other).snapshots] == [snap]
