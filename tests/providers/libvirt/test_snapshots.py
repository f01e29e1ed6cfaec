"""Migration snapshots on real libvirtd + QEMU, running and stopped.

Proves what ExportDisk will rely on: the file ``snapshot_disk_source`` names holds
exactly the data of the snapshot moment, also while the guest keeps writing; and
that deleting the snapshot leaves the VM as it was (same XML, writes merged, no
overlay files, no metadata).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from typing import Any

import libvirt
import pytest

from manager.providerclient import ProviderClient
from providers.libvirt import domxml, snapshots
from providers.libvirt.client import LibvirtClient
from providers.libvirt.driver import LibvirtDriver
from providers.runtime import server as runtime_server
from tests.providers.libvirt.helpers import (
    Lab,
    MiB,
    SetupDisk,
    SetupNic,
    SparseSink,
    content_sha256,
    domain_xml,
    failure,
    finish,
    guest_write,
    has_pattern,
    op,
    qemu_io,
    write_pattern,
)
from tests.servers.libvirtd import LibvirtEnv
from virtrigaud import errors
from virtrigaud.provider.v1 import provider_pb2 as pb


def _source_vm(env: LibvirtEnv, lv: Lab, label: str) -> tuple[Any, str, str]:
    a = lv.volume(env.name(f"{label}-a.qcow2"), 32 * MiB, "qcow2")
    b = lv.volume(env.name(f"{label}-b.img"), 16 * MiB, "raw")
    write_pattern(a, "qcow2", 0xA1, 0, 2 * MiB)
    write_pattern(b, "raw", 0xB2, 1 * MiB, 2 * MiB)
    dom = lv.define(
        domain_xml(
            env.name(label),
            [
                SetupDisk(a, "qcow2", "vda"),
                SetupDisk(b, "raw", "vdb"),
                SetupDisk("", "raw", "sda", bus="sata", device="cdrom"),
            ],
            [SetupNic("network", env.network, "52:54:00:20:00:01")],
        )
    )
    return dom, a, b


def _inactive_xml(dom: Any) -> str:
    """The persistent definition, without empty ``<backingStore/>`` elements.

    libvirt writes ``<backingStore/>`` ("this image has no backing file") into the
    definition of a stopped domain after merging a snapshot; it states what the
    definition without it already meant. Everything else must be identical.
    """
    root = domxml.parse_xml(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), "inactive XML")
    for disk in root.findall("devices/disk"):
        for empty in [b for b in disk.findall("backingStore") if len(b) == 0 and not b.attrib]:
            disk.remove(empty)
    return ET.tostring(root, encoding="unicode")


def _sources(xml: str) -> list[tuple[str, str, str]]:
    return [(d.target, d.path, d.format) for d in domxml.parse_domain(xml).disks]


def _snapshot(provider: ProviderClient, vm_id: str, name: str = "migration") -> str:
    task = finish(
        provider,
        provider.create_snapshot(
            pb.CreateSnapshotRequest(
                operation_id=op("snap"), vm_id=vm_id, name=name, description="for export"
            )
        ),
    )
    return task.snapshot_result.snapshot_id


def _unsnapshot(provider: ProviderClient, vm_id: str, snap: str) -> None:
    finish(
        provider,
        provider.delete_snapshot(
            pb.DeleteSnapshotRequest(operation_id=op("unsnap"), vm_id=vm_id, snapshot_id=snap)
        ),
    )


@pytest.mark.parametrize("running", [True, False], ids=["running", "stopped"])
def test_snapshot_gives_a_stable_source_and_delete_restores_the_vm(
    env: LibvirtEnv, lv: Lab, provider: ProviderClient, driver: LibvirtDriver, running: bool
) -> None:
    label = "snap-run" if running else "snap-off"
    dom, a, b = _source_vm(env, lv, label)
    vm_id = dom.UUIDString()
    if running:
        dom.create()
    xml_before = _inactive_xml(dom)
    live_before = _sources(dom.XMLDesc(0))
    sums_before = {
        a: content_sha256(a, "qcow2", lv.scratch),
        b: content_sha256(b, "raw", lv.scratch),
    }
    files_before = set(os.listdir(env.pool_path))

    snap = _snapshot(provider, vm_id)
    assert snap.startswith("migration-")
    vm = provider.describe_vm(vm_id)
    assert [(s.id, s.description) for s in vm.snapshots] == [(snap, "for export")]
    assert vm.snapshots[0].create_time.seconds > 0
    assert [s.getName() for s in dom.listAllSnapshots()] == [snap]
    overlays = {t: p for t, p, _ in _sources(dom.XMLDesc(0)) if t in ("vda", "vdb")}
    assert overlays == {
        "vda": str(env.pool_path / f"{env.name(label)}-a.{snap}.qcow2"),
        "vdb": str(env.pool_path / f"{env.name(label)}-b.{snap}.qcow2"),
    }
    assert dom.isActive() == running
    # the overlays are pool volumes right away (ExportDisk/DeleteVM find them by path)
    listed = {v.name() for v in lv.pool().listAllVolumes(0)}  # no refresh by the test
    assert {os.path.basename(p) for p in overlays.values()} <= listed
    during = {d.id: d for d in provider.describe_vm(vm_id).disks}
    assert (during["vda"].path, during["vda"].storage) == (overlays["vda"], env.pool)
    assert during["vda"].virtual_size_bytes == 32 * MiB

    # the export source of each disk is its pre-snapshot file, with the pre-snapshot data
    assert driver.snapshot_disk_source(vm_id, snap, "vda") == a
    assert driver.snapshot_disk_source(vm_id, snap, "vdb") == b
    with pytest.raises(errors.FailedPrecondition):
        driver.snapshot_disk_source(vm_id, snap, "sda")  # CD-ROMs are not snapshotted
    with pytest.raises(errors.NotFound):
        driver.snapshot_disk_source(vm_id, snap, "vdz")

    # new writes land in the overlay, never in the file an export reads
    if running:
        guest_write(dom, "vda", 0xEE, 8 * MiB, 1 * MiB)
    else:
        qemu_io(overlays["vda"], "qcow2", f"write -P 0xee {8 * MiB} {1 * MiB}")
    assert has_pattern(overlays["vda"], "qcow2", 0xEE, 8 * MiB, 1 * MiB)
    assert content_sha256(a, "qcow2", lv.scratch) == sums_before[a]
    assert content_sha256(b, "raw", lv.scratch) == sums_before[b]
    # ... and it streams out through libvirt (what ExportDisk will do) while the VM runs
    for disk_id, source, fmt in (("vda", a, "qcow2"), ("vdb", b, "raw")):
        copy = lv.scratch / f"export-{disk_id}"
        sink = SparseSink(copy)
        source_path = driver.snapshot_disk_source(vm_id, snap, disk_id)
        stats = driver.client.download_volume(source_path, sink.write, sink_hole=sink.hole)
        sink.close()
        assert stats.total == os.path.getsize(source)
        assert content_sha256(str(copy), fmt, lv.scratch) == sums_before[source]

    _unsnapshot(provider, vm_id, snap)
    assert dom.listAllSnapshots() == []
    assert provider.describe_vm(vm_id).snapshots == []
    assert _inactive_xml(dom) == xml_before
    assert _sources(dom.XMLDesc(0)) == live_before
    assert dom.isActive() == running
    assert set(os.listdir(env.pool_path)) == files_before  # no overlay file left
    assert not any(snap in v.name() for v in lv.pool().listAllVolumes(0))  # no refresh
    assert not any(snap in name for name in lv.pool_volume_names())
    # the writes made meanwhile were merged; the rest of the data is untouched
    assert has_pattern(a, "qcow2", 0xEE, 8 * MiB, 1 * MiB)
    assert has_pattern(a, "qcow2", 0xA1, 0, 2 * MiB)
    assert content_sha256(b, "raw", lv.scratch) == sums_before[b]


def test_snapshot_without_writes_leaves_identical_data(
    env: LibvirtEnv, lv: Lab, provider: ProviderClient
) -> None:
    dom, a, b = _source_vm(env, lv, "snap-same")
    dom.create()
    sums = (content_sha256(a, "qcow2", lv.scratch), content_sha256(b, "raw", lv.scratch))
    xml_before = _inactive_xml(dom)
    snap = _snapshot(provider, dom.UUIDString())
    _unsnapshot(provider, dom.UUIDString(), snap)
    assert _inactive_xml(dom) == xml_before
    assert (content_sha256(a, "qcow2", lv.scratch), content_sha256(b, "raw", lv.scratch)) == sums


def test_snapshot_requests_are_idempotent_and_errors_are_typed(
    env: LibvirtEnv, lv: Lab, provider: ProviderClient
) -> None:
    dom, _, _ = _source_vm(env, lv, "snap-idem")
    vm_id = dom.UUIDString()
    request = pb.CreateSnapshotRequest(operation_id=op("snap"), vm_id=vm_id, name="m 1 <x>&")
    first = finish(provider, provider.create_snapshot(request)).snapshot_result.snapshot_id
    assert first.startswith("m-1-x-")
    # the same operation re-submitted to a fresh server (e.g. after a provider restart,
    # which forgets its tasks) finds the snapshot instead of taking a second one
    restarted = LibvirtDriver(LibvirtClient(env.uri), default_pool=env.pool, domain_type="qemu")
    running = runtime_server.start(restarted, "127.0.0.1:0", max_tasks=1)
    try:
        with ProviderClient(f"127.0.0.1:{running.port}", timeout=30) as fresh:
            task = finish(fresh, fresh.create_snapshot(request))
    finally:
        running.stop(grace=5)
    assert task.snapshot_result.snapshot_id == first
    assert snapshots.snapshot_id("m 1 <x>&", request.operation_id) == first
    assert [s.getName() for s in dom.listAllSnapshots()] == [first]

    memory = failure(
        provider,
        lambda: provider.create_snapshot(
            pb.CreateSnapshotRequest(
                operation_id=op("mem"), vm_id=vm_id, name="m", include_memory=True
            )
        ),
    )
    assert isinstance(memory, errors.Unsupported)
    missing = failure(
        provider,
        lambda: provider.delete_snapshot(
            pb.DeleteSnapshotRequest(operation_id=op("del"), vm_id=vm_id, snapshot_id="nope")
        ),
    )
    assert isinstance(missing, errors.NotFound)
    _unsnapshot(provider, vm_id, first)
    assert dom.listAllSnapshots() == []


def test_delete_vm_with_a_snapshot_removes_bases_and_overlays(
    env: LibvirtEnv, lv: Lab, provider: ProviderClient
) -> None:
    dom, a, b = _source_vm(env, lv, "snap-del")
    dom.create()
    vm_id = dom.UUIDString()
    snap = _snapshot(provider, vm_id)
    finish(
        provider,
        provider.delete_vm(
            pb.DeleteVMRequest(operation_id=op("d"), vm_id=vm_id, delete_disks=True)
        ),
    )
    left = [n for n in os.listdir(env.pool_path) if n.startswith(env.name("snap-del"))]
    assert left == []  # the overlays, and the disks under them
    assert not os.path.exists(a) and not os.path.exists(b)
    assert not any(snap in n or "snap-del" in n for n in lv.pool_volume_names())
    with pytest.raises(libvirt.libvirtError):
        lv.conn.lookupByUUIDString(vm_id)
