"""Test-side setup and inspection for the vSphere provider tests (vcsim).

vcsim keeps a datastore as a plain local folder and never writes disk data itself
(disks it creates are 0-byte files; snapshots make no deltas), so tests put real
bytes on the datastore themselves: ``Lab.put_disk`` writes a vmfs flat VMDK pair
(descriptor + ``-flat.vmdk``) with known content straight into the datastore folder,
and ``Lab.make_vm`` creates a VM attaching those disks through the SOAP API with raw
pyvmomi specs (not the provider's own spec builder). Assertions read the folder back
independently of the code under test.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyVmomi import vim

from manager.providerclient import ProviderClient, RetryPolicy, raise_for_task
from providers.runtime import server as runtime_server
from providers.runtime.driver import ProviderConfig, ProviderDriver
from providers.vsphere import settings, tasks
from providers.vsphere.client import VSphereClient
from tests.servers.vcsim import DATASTORE, NETWORK, Vcsim
from virtrigaud import errors
from virtrigaud.provider.v1 import provider_pb2 as pb

MiB = 1 << 20
LOOPBACK = ("127.0.0.1",)
TEST_FOLDER = "vr-test"


def op(label: str) -> str:
    return f"vsphere-test/{label}/{uuid.uuid4().hex[:8]}"


def finish(provider: ProviderClient, task: pb.Task, timeout: float = 120) -> pb.Task:
    """Wait for a task; its typed error is raised if it failed."""
    return raise_for_task(provider.wait_task(task.id, timeout=timeout, poll=0.05))


def failure(provider: ProviderClient, call: Callable[[], pb.Task]) -> errors.VirtrigaudError:
    """The typed error of a mutating call, raised by the RPC or recorded on its task."""
    try:
        finish(provider, call())
    except errors.VirtrigaudError as exc:
        return exc
    raise AssertionError("the call succeeded")


def pattern(size: int, seed: int) -> bytes:
    """Known, non-repeating content (a SHA256 stream), ``size`` bytes."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def flat_descriptor(extent: str, size: int) -> str:
    """A hand-written vmfs descriptor (independent of providers.vsphere.vmdk)."""
    return (
        "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n"
        'createType="vmfs"\n\n'
        f'RW {size // 512} VMFS "{extent}"\n\n'
        'ddb.adapterType = "lsilogic"\n'
    )


def config(server: Vcsim, **options: str) -> ProviderConfig:
    return ProviderConfig(
        endpoint=server.url,
        credentials=server.credentials,
        options={**server.options, **options},
        allowed_storage_hosts=LOOPBACK,
    )


@contextlib.contextmanager
def serve(driver: ProviderDriver) -> Iterator[ProviderClient]:
    running = runtime_server.start(driver, "127.0.0.1:0", max_tasks=2)
    client = ProviderClient(f"127.0.0.1:{running.port}", timeout=30, retry=RetryPolicy(attempts=1))
    try:
        yield client
    finally:
        client.close()
        running.stop(grace=10)


def qemu_img_raw(path: Path, fmt: str, out: Path) -> bytes:
    """The guest-visible bytes of an image, through qemu-img (independent reader)."""
    subprocess.run(
        ["qemu-img", "convert", "-f", fmt, "-O", "raw", str(path), str(out)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out.read_bytes()


@dataclass
class Lab:
    """VMs and disks a test made on the session's vcsim; removed when it ends."""

    server: Vcsim
    client: VSphereClient
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    vms: list[Any] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)

    @property
    def root(self) -> Path:
        return self.server.datastore_dir()

    def name(self, base: str) -> str:
        return f"{base}-{self.tag}"

    def put_disk(self, name: str, data: bytes, size: int | None = None) -> str:
        """A flat VMDK pair holding ``data`` (then zeros up to ``size``); its ds path."""
        size = size or len(data)
        assert size % 512 == 0
        folder = self.root / TEST_FOLDER
        folder.mkdir(exist_ok=True)
        flat = folder / f"{name}-flat.vmdk"
        with open(flat, "wb") as handle:
            handle.write(data)
            handle.truncate(size)
        desc = folder / f"{name}.vmdk"
        desc.write_text(flat_descriptor(flat.name, size))
        self.paths += [flat, desc]
        return f"[{DATASTORE}] {TEST_FOLDER}/{name}.vmdk"

    def _wait(self, task: Any) -> Any:
        return tasks.wait(self.client, task, "test setup")

    def make_vm(
        self,
        name: str,
        disks: list[tuple[str, int]],
        *,
        power_on: bool = False,
        nics: int = 1,
        firmware: str = "efi",
    ) -> str:
        """A VM attaching existing disks (path, capacity) on one PVSCSI controller."""
        content = self.client.content()
        dc = content.rootFolder.childEntity[0]
        pool = next(
            c for c in dc.hostFolder.childEntity if isinstance(c, vim.ClusterComputeResource)
        ).resourcePool
        changes: list[Any] = [
            vim.vm.device.VirtualDeviceSpec(
                operation="add",
                device=vim.vm.device.ParaVirtualSCSIController(
                    key=-10, busNumber=0, sharedBus="noSharing"
                ),
            )
        ]
        for unit, (path, capacity) in enumerate(disks):
            changes.append(
                vim.vm.device.VirtualDeviceSpec(
                    operation="add",
                    device=vim.vm.device.VirtualDisk(
                        key=-20 - unit,
                        controllerKey=-10,
                        unitNumber=unit,
                        capacityInKB=capacity // 1024,
                        backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
                            fileName=path, diskMode="persistent", thinProvisioned=True
                        ),
                    ),
                )
            )
        for index in range(nics):
            changes.append(
                vim.vm.device.VirtualDeviceSpec(
                    operation="add",
                    device=vim.vm.device.VirtualVmxnet3(
                        key=-40 - index,
                        addressType="manual",
                        macAddress=f"00:50:56:3f:00:{index + 1:02x}",
                        backing=vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(
                            deviceName=NETWORK
                        ),
                    ),
                )
            )
        spec = vim.vm.ConfigSpec(
            name=name,
            numCPUs=2,
            numCoresPerSocket=1,
            memoryMB=256,
            firmware=firmware,
            guestId="otherGuest64",
            files=vim.vm.FileInfo(vmPathName=f"[{DATASTORE}]"),
            deviceChange=changes,
        )
        vm = self._wait(dc.vmFolder.CreateVM_Task(config=spec, pool=pool))
        self.vms.append(vm)
        if power_on:
            self._wait(vm.PowerOnVM_Task())
        return str(vm._moId)

    def vm(self, vm_id: str) -> Any:
        return vim.VirtualMachine(vm_id, self.client._stub)

    def prop(self, vm_id: str, path: str) -> Any:
        """One property of a VM through the PropertyCollector (pyvmomi's attribute
        access reads the whole ``config`` and trips over some of vcsim's values)."""
        return self.client.properties(self.vm(vm_id), [path], "test").get(path)

    def detach_and_destroy(self, vm: Any) -> None:
        """Remove a VM without deleting its disk files (vcsim's Destroy would)."""
        with contextlib.suppress(Exception):
            if self.prop(vm._moId, "runtime.powerState") != "poweredOff":
                self._wait(vm.PowerOffVM_Task())
        with contextlib.suppress(Exception):
            devices = self.prop(vm._moId, "config.hardware.device") or []
            disks = [d for d in devices if isinstance(d, vim.vm.device.VirtualDisk)]
            if disks:
                spec = vim.vm.ConfigSpec(
                    deviceChange=[
                        vim.vm.device.VirtualDeviceSpec(operation="remove", device=d) for d in disks
                    ]
                )
                self._wait(vm.ReconfigVM_Task(spec=spec))
        with contextlib.suppress(Exception):
            self._wait(vm.Destroy_Task())

    def cleanup(self) -> None:
        for vm in self.vms:
            self.detach_and_destroy(vm)
        for path in self.paths:
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def lab(server: Vcsim) -> Iterator[Lab]:
    client = VSphereClient(settings.from_config(config(server)))
    created = Lab(server, client)
    try:
        yield created
    finally:
        created.cleanup()
        client.close()
