"""The Proxmox provider as a conformance target (fakepve API + a real sshd as the node).

``proxmox_conformance_target`` serves a real ``ProxmoxDriver`` (built by the registered
factory from a Secret and options, as a Provider would) through
``providers.runtime.server.start``. The session's environment
(``tests.providers.proxmox.env.session_env``) is fakepve with a directory storage whose
volumes are real files, and an OpenSSH server on loopback through which the provider
reads and writes them with qemu-img. The source VM is stopped and has two disks with
known data (qcow2 on ``scsi0`` and ``virtio1``: PVE snapshots qcow2 files, not raw
ones) and a NIC on ``vmbr0``; the slow
disk is a 1 GiB raw disk with 384 MiB of data, made once per session.

Exports go to an NFS-style directory under the test's tmp dir; the provider's scratch
directory is another one, and the node's export scratch is shared by the session: both
are checked to be empty again when the test ends. VMs and import volumes a test
created are removed afterwards.
"""

from __future__ import annotations

import contextlib
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from manager.providerclient import ProviderClient, RetryPolicy
from providers.runtime import server as runtime_server
from tests.conformance.targets import ConformanceTarget
from tests.fakes.memory_provider import nfs_path
from tests.providers.proxmox.env import BRIDGE, STORAGE, MiB, session_env, slow_disk
from virtrigaud.provider.v1 import provider_pb2 as pb


@pytest.fixture
def proxmox_conformance_target(
    pytestconfig: pytest.Config, tmp_path: Path
) -> Iterator[ConformanceTarget]:
    env = session_env(pytestconfig)
    slow_vm, slow_key = slow_disk(env)
    vms_before = {vm.vmid for vm in env.pve.vms}
    imports_before = set(env.import_dir().iterdir()) if env.import_dir().exists() else set()
    tag = uuid.uuid4().hex[:6]
    source = env.add_vm(
        f"conformance-{tag}",
        {
            "scsi0": ("qcow2", 32 * MiB, b"\x5c" * (4 * MiB)),
            "virtio1": ("qcow2", 16 * MiB, bytes(range(256)) * 4096),
        },
    )
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    driver = env.driver(scratchDir=str(scratch))
    running = runtime_server.start(driver, "127.0.0.1:0", max_tasks=2)
    exports = tmp_path / "exports"
    exports.mkdir()

    def location(key: str) -> pb.StorageLocation:
        return pb.StorageLocation(backend=pb.STORAGE_BACKEND_NFS, url=f"nfs://{exports / key}")

    client = ProviderClient(f"127.0.0.1:{running.port}", timeout=30, retry=RetryPolicy(attempts=2))
    try:
        yield ConformanceTarget(
            client=client,
            provider_type="proxmox",
            source_vm_id=source.vmid,
            storage_hint=STORAGE,
            network=BRIDGE,
            export_location=location,
            read_object=lambda url: nfs_path(url).read_bytes(),
            object_exists=lambda url: nfs_path(url).exists(),
            slow_disk=(slow_vm, slow_key),
        )
    finally:
        client.close()
        running.stop(grace=30)
        for vm in list(env.pve.vms):
            if vm.vmid not in vms_before:
                env.remove_vm(str(vm.vmid))
        if env.import_dir().exists():
            for path in env.import_dir().iterdir():
                if path not in imports_before:
                    with contextlib.suppress(OSError):
                        shutil.rmtree(path) if path.is_dir() else path.unlink()
    assert list(scratch.iterdir()) == [], "the provider left scratch files behind"
    assert list(env.node_tmp.iterdir()) == [], "an export left files in the node's scratch"
