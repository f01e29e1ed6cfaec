"""The providers the conformance suite runs against.

Every provider registers a ``TargetSpec`` here, naming the pytest fixture that yields
its ``ConformanceTarget`` and the contract methods its test environment can back. A
test that needs a method a target cannot back is not generated for that target (it is
neither run nor skipped), so the report shows exactly what each provider proved.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from manager.providerclient import ProviderClient
from virtrigaud.provider.v1 import provider_pb2 as pb

ALL_METHODS = frozenset(m.name for m in pb.DESCRIPTOR.services_by_name["Provider"].methods)


@dataclass(frozen=True)
class TargetSpec:
    name: str
    fixture: str
    methods: frozenset[str] = ALL_METHODS


@dataclass
class ConformanceTarget:
    """A running provider plus what the suite needs to know about its environment."""

    client: ProviderClient
    provider_type: str
    source_vm_id: str  # a VM with at least one exportable disk, safe to snapshot
    storage_hint: str  # an existing pool / datastore / storage
    network: str  # an existing network / bridge / portgroup
    export_location: Callable[[str], pb.StorageLocation]  # object key -> location
    read_object: Callable[[str], bytes]  # url from an ExportResult -> its bytes
    object_exists: Callable[[str], bool]
    # a disk whose export takes long enough to be cancelled mid-way (vm id, disk id)
    slow_disk: tuple[str, str] | None = None
    extra: dict[str, object] = field(default_factory=dict)


TARGETS: list[TargetSpec] = [
    TargetSpec("memory", "memory_conformance_target"),
    TargetSpec("libvirt", "libvirt_conformance_target", ALL_METHODS),  # real libvirtd + QEMU
    # fakepve (API) + a real sshd as the node, real image files: every method is backed
    TargetSpec("proxmox", "proxmox_conformance_target", ALL_METHODS),
    TargetSpec("vsphere", "vsphere_conformance_target", ALL_METHODS),  # vcsim (govmomi)
]
