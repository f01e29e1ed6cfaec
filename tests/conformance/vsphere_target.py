"""The vSphere provider as a conformance target (vcsim built from Debian's govmomi).

``vsphere_conformance_target`` serves a real ``VSphereDriver`` through
``providers.runtime.server.start`` against the session's vcsim
(``tests.servers.vcsim.session_vcsim``: username/password login, TLS verified with
the test CA). The source VM is powered off and has two disks holding known data (flat
VMDK pairs written into the datastore, see ``tests.providers.vsphere.helpers``) and a
NIC on the distributed portgroup ``DC0_DVPG0``. Exports go to an NFS directory under
the test's tmp dir; the provider's scratch directory is another one, checked to be
empty again when the test ends.

``slow_disk`` is a VM with one 1 GiB disk holding 16 MiB runs of data spread over it:
the datastore endpoint sends every byte (zeros too), so reading it takes long enough
for the suite to cancel the export while bytes move. It is made once per session.

VMs created by a test are removed after it (with their disks), and so are the disks
it imported (the ``virtrigaud-imports`` folder).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyVmomi import vim

from manager.providerclient import ProviderClient, RetryPolicy
from providers.runtime import server as runtime_server
from providers.vsphere.driver import create
from providers.vsphere.imports import DEFAULT_FOLDER
from tests.conformance.targets import ConformanceTarget
from tests.fakes.memory_provider import nfs_path
from tests.providers.vsphere.helpers import Lab, config, lab, pattern
from tests.servers.vcsim import DATASTORE, PORTGROUP, Vcsim, session_vcsim
from virtrigaud.provider.v1 import provider_pb2 as pb

MiB = 1 << 20
SLOW_SIZE = 1024 * MiB
_SLOW_KEY = pytest.StashKey[tuple[int, str]]()


def _slow_vm(pytestconfig: pytest.Config, server: Vcsim, vs: Lab) -> str:
    existing = pytestconfig.stash.get(_SLOW_KEY, None)
    if existing is not None and existing[0] == server.port:
        return existing[1]
    folder = vs.root / "vr-conformance"
    folder.mkdir(exist_ok=True)
    flat = folder / "slow-flat.vmdk"
    with open(flat, "wb") as handle:
        handle.truncate(SLOW_SIZE)
        for run in range(16):
            handle.seek(run * 64 * MiB)
            handle.write(b"\x5a" * MiB)
    (folder / "slow.vmdk").write_text(
        f'# Disk DescriptorFile\nversion=1\ncreateType="vmfs"\n'
        f'RW {SLOW_SIZE // 512} VMFS "slow-flat.vmdk"\n'
    )
    keep = Lab(server, vs.client)  # not cleaned: lives for the session
    vm_id = keep.make_vm(
        "vr-conformance-slow", [(f"[{DATASTORE}] vr-conformance/slow.vmdk", SLOW_SIZE)], nics=0
    )
    pytestconfig.stash[_SLOW_KEY] = (server.port, vm_id)
    return vm_id


def _vm_ids(vs: Lab) -> set[str]:
    return {o.moid for o in vs.client.retrieve_all({vim.VirtualMachine: ["name"]}, "listing VMs")}


@pytest.fixture
def vsphere_conformance_target(
    pytestconfig: pytest.Config, tmp_path: Path
) -> Iterator[ConformanceTarget]:
    server = session_vcsim(pytestconfig)
    with lab(server) as vs:
        slow_vm = _slow_vm(pytestconfig, server, vs)
        disks = [
            (vs.put_disk(vs.name("conf-a"), pattern(4 * MiB, 1), 32 * MiB), 32 * MiB),
            (vs.put_disk(vs.name("conf-b"), pattern(2 * MiB, 2), 8 * MiB), 8 * MiB),
        ]
        vm_id = vs.make_vm(vs.name("vr-conformance"), disks)
        _set_dvpg_nic(vs, vm_id)
        before = _vm_ids(vs)
        imports_dir = vs.root / DEFAULT_FOLDER
        imports_before = set(imports_dir.iterdir()) if imports_dir.is_dir() else set()
        scratch = tmp_path / "scratch"
        scratch.mkdir()
        exports = tmp_path / "exports"
        exports.mkdir()
        driver = create(config(server, scratchDir=str(scratch), datastore=DATASTORE))
        running = runtime_server.start(driver, "127.0.0.1:0", max_tasks=2)

        def location(key: str) -> pb.StorageLocation:
            return pb.StorageLocation(backend=pb.STORAGE_BACKEND_NFS, url=f"nfs://{exports / key}")

        client = ProviderClient(
            f"127.0.0.1:{running.port}", timeout=30, retry=RetryPolicy(attempts=2)
        )
        try:
            yield ConformanceTarget(
                client=client,
                provider_type="vsphere",
                source_vm_id=vm_id,
                storage_hint=DATASTORE,
                network=PORTGROUP,
                export_location=location,
                read_object=lambda url: nfs_path(url).read_bytes(),
                object_exists=lambda url: nfs_path(url).exists(),
                slow_disk=(slow_vm, _disk_key(vs, slow_vm)),
            )
        finally:
            client.close()
            running.stop(grace=30)
            for moid in _vm_ids(vs) - before:
                with contextlib.suppress(Exception):
                    vm = vs.vm(moid)
                    if vs.prop(moid, "runtime.powerState") != "poweredOff":
                        vs._wait(vm.PowerOffVM_Task())
                    vs._wait(vm.Destroy_Task())
            if imports_dir.is_dir():
                for entry in set(imports_dir.iterdir()) - imports_before:
                    if entry.is_dir():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink(missing_ok=True)
    assert list(scratch.iterdir()) == [], "the provider left scratch files behind"


def _disk_key(vs: Lab, vm_id: str) -> str:
    disks = [
        d
        for d in vs.prop(vm_id, "config.hardware.device")
        if isinstance(d, vim.vm.device.VirtualDisk)
    ]
    return str(disks[0].key)


def _set_dvpg_nic(vs: Lab, vm_id: str) -> None:
    """Move the VM's NIC to the distributed portgroup (the DVS backing path)."""
    content = vs.client.content()
    view = content.viewManager.CreateContainerView(
        content.rootFolder, [vim.dvs.DistributedVirtualPortgroup], True
    )
    pg = next(p for p in view.view if p.name == PORTGROUP)
    view.DestroyView()
    vm = vs.vm(vm_id)
    nic = next(
        d
        for d in vs.prop(vm_id, "config.hardware.device")
        if isinstance(d, vim.vm.device.VirtualEthernetCard)
    )
    nic.backing = vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo(
        port=vim.dvs.PortConnection(
            switchUuid=pg.config.distributedVirtualSwitch.uuid, portgroupKey=pg.key
        )
    )
    spec = vim.vm.ConfigSpec(
        deviceChange=[vim.vm.device.VirtualDeviceSpec(operation="edit", device=nic)]
    )
    vs._wait(vm.ReconfigVM_Task(spec=spec))
