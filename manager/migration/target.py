"""The target VirtualMachine: NIC mapping, the manifest created in Creating, and the
comparison made in ValidatingTarget.

NIC mapping (``map_nics``): every source NIC (``DescribeVM.nics``) becomes one target
NIC, in order. A ``targetNetworkHints`` entry whose ``name`` equals a source NIC id
(``net0``) applies to that NIC; otherwise the i-th hint applies to the i-th NIC (hint
names such as ``eth0`` are guest names the hypervisor does not know). A NIC no hint
covers is **not dropped**: it goes to the target Provider's ``spec.defaults.network``
when set, else to a network of the same name as on the source; either way a note says
so (Warning event NetworkNotMapped, and the Validated/Created messages), and validation
rule 5 asks the target provider whether that network exists, so a missing one fails the
migration with the provider's exact message. Hints that match no NIC are reported too.
MACs and NIC models are kept.

Manifest (``build_manifest``): name ``targetName`` in ``targetNamespace``; the boot disk
(first in ``status.disks``) as ``spec.importedDisk``, every other disk as
``spec.disks[i].importedDisk``, each with diskID (ImportResult.disk_id), format,
sizeGiB (the virtual size rounded up: informational, the imported volume keeps its
size; ``targetResourceHints.disk`` raises the boot disk's), source ``migration`` and
migrationRef; cpu/memory from the source unless ``targetResourceHints`` override
(``memory`` is taken as MiB); firmware and MACs kept; ``powerState: Off``. Annotations
of imported-disk-design.md: migrated-from (source ``ns/name``), migration
(``ns/name``), imported-disk-id (boot disk), disk-checksum (``status.checksum``), plus
``virtrigaud.io/migration-uid`` so a leftover VM of an older migration with the same
name is never taken for ours.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from manager.api import (
    DiskFormat,
    DiskMigrationStatus,
    Firmware,
    ImportedDiskRef,
    ImportedDiskSource,
    NetworkHint,
    NicModel,
    ObjectMeta,
    ObjectReference,
    PowerState,
    Provider,
    VirtualMachine,
    VirtualMachineSpec,
    VMDisk,
    VMMigration,
    VMNetwork,
    VMResources,
)
from manager.api.meta import DNS_LABEL_PATTERN
from manager.migration import naming
from manager.migration.model import (
    ANN_DISK_CHECKSUM,
    ANN_IMPORTED_DISK_ID,
    ANN_MIGRATED_FROM,
    ANN_MIGRATION,
    ANN_MIGRATION_UID,
)
from virtrigaud.provider.v1 import provider_pb2 as pb

GiB = 1 << 30
_FIRMWARE = {pb.FIRMWARE_BIOS: Firmware.BIOS, pb.FIRMWARE_UEFI: Firmware.UEFI}
_NOT_LABEL = re.compile(r"[^a-z0-9-]+")


@dataclass(frozen=True)
class NicPlan:
    """One target NIC and how it was mapped."""

    source_id: str
    source_network: str
    name: str
    network: str | None
    bridge: str | None
    mac: str | None
    model: str
    vlan: int
    note: str | None = None  # set when no hint covered this NIC

    @property
    def target(self) -> str:
        return self.network or self.bridge or ""


def _label(text: str) -> str | None:
    slug = _NOT_LABEL.sub("-", text.lower()).strip("-")[:63].strip("-")
    return slug if slug and re.match(DNS_LABEL_PATTERN, slug) else None


def _hint_for(
    index: int, nic: pb.Nic, hints: Sequence[NetworkHint], nic_ids: set[str]
) -> NetworkHint | None:
    named = next((h for h in hints if h.name and h.name == nic.id), None)
    if named is not None:
        return named
    if index < len(hints) and hints[index].name not in nic_ids:
        return hints[index]
    return None


def _plan(nic: pb.Nic, name: str, hint: NetworkHint | None, note: str | None) -> NicPlan:
    """The source NIC's VLAN tag goes along only onto a bridge (a trunk where a per-NIC
    tag selects the segment); a named network (a libvirt network, a vSphere portgroup)
    is the segment itself, so a tag there is dropped -- and said in the note."""
    network = hint.network if hint else None
    bridge = None if network or hint is None else hint.bridge
    vlan = nic.vlan_id if bridge else 0
    if nic.vlan_id and not bridge:
        dropped = (
            f"VLAN tag {nic.vlan_id} of source NIC {nic.id} not carried: network "
            f"{network!r} selects the segment on the target"
        )
        note = f"{note}; {dropped}" if note else dropped
    return NicPlan(
        source_id=nic.id,
        source_network=nic.network,
        name=name,
        network=network,
        bridge=bridge,
        mac=nic.mac.lower() or None,
        model=nic.model,
        vlan=vlan,
        note=note,
    )


def _unmapped(nic: pb.Nic, name: str, default_network: str | None) -> NicPlan:
    target = default_network or nic.network
    how = (
        f"the target Provider's default network {target!r}"
        if default_network
        else f"network {target!r} (same name as on the source)"
    )
    note = (
        f"source NIC {nic.id} (network {nic.network!r}) has no targetNetworkHints entry; "
        f"mapped to {how}"
    )
    return _plan(nic, name, NetworkHint(network=target), note)


def map_nics(
    nics: Sequence[pb.Nic], hints: Sequence[NetworkHint], default_network: str | None
) -> tuple[list[NicPlan], list[str]]:
    """The target NICs (one per source NIC) and notes about hints that matched none."""
    nic_ids = {nic.id for nic in nics}
    plans: list[NicPlan] = []
    used: set[int] = set()
    for index, nic in enumerate(nics):
        hint = _hint_for(index, nic, hints, nic_ids)
        name = (_label(hint.name) if hint and hint.name else None) or _label(nic.id)
        name = name or f"nic{index}"
        if any(p.name == name for p in plans):
            name = f"nic{index}"
        if hint is not None and (hint.network or hint.bridge):
            used.add(next(i for i, h in enumerate(hints) if h is hint))
            plans.append(_plan(nic, name, hint, None))
        else:
            plans.append(_unmapped(nic, name, default_network))
    notes = [
        f"targetNetworkHints[{i}] ({hint.name or hint.network or hint.bridge}) "
        "matches no source NIC; ignored"
        for i, hint in enumerate(hints)
        if i not in used
    ]
    return plans, notes


def nic_plans(migration: VMMigration, vm: pb.VM, target: Provider | None) -> list[NicPlan]:
    default = target.spec.defaults.network if target and target.spec.defaults else None
    return map_nics(list(vm.nics), migration.spec.target_network_hints, default)[0]


def _size_gib(size_bytes: int | None) -> int | None:
    """``sizeGiB`` of a migrated disk: only when it is a whole number of GiB, since the
    VirtualMachine controller asks the provider to grow a disk to ``sizeGiB`` (a 10.5
    GiB disk must not become 11 GiB); otherwise the disk keeps its imported size."""
    if size_bytes and size_bytes % GiB == 0:
        return size_bytes // GiB
    return None


def _boot_gib(size_bytes: int | None, hinted: int | None) -> int | None:
    """targetResourceHints.disk grows the boot disk; it never shrinks it."""
    if hinted and hinted * GiB > (size_bytes or 0):
        return hinted
    return _size_gib(size_bytes)


def _imported(
    migration: VMMigration, disk: DiskMigrationStatus, size_gib: int | None
) -> ImportedDiskRef:
    return ImportedDiskRef(
        disk_id=disk.imported_disk_id or "",
        format=disk.format or DiskFormat.RAW,
        source=ImportedDiskSource.MIGRATION,
        migration_ref=ObjectReference(
            name=migration.metadata.name, namespace=migration.metadata.namespace
        ),
        size_gib=size_gib,
    )


def _network(plan: NicPlan) -> VMNetwork:
    try:
        model = NicModel(plan.model) if plan.model else None
    except ValueError:
        model = None
    return VMNetwork(
        name=plan.name,
        network=plan.network,
        bridge=plan.bridge,
        mac=plan.mac,
        model=model,
        vlan=plan.vlan or None,
    )


def _resources(migration: VMMigration, vm: pb.VM) -> VMResources:
    hints = migration.spec.target_resource_hints
    cpu = hints.cpu if hints and hints.cpu else None
    memory = hints.memory if hints and hints.memory else None
    return VMResources(cpu=cpu or vm.cpu or None, memory_mib=memory or vm.memory_mib or None)


def _data_disks(migration: VMMigration, disks: Sequence[DiskMigrationStatus]) -> list[VMDisk]:
    out: list[VMDisk] = []
    for index, disk in enumerate(disks, start=1):
        label = _label(disk.name) or f"disk{index}"
        name = label if all(d.name != label for d in out) else f"disk{index}"
        out.append(
            VMDisk(name=name, imported_disk=_imported(migration, disk, _size_gib(disk.size_bytes)))
        )
    return out


def _annotations(
    migration: VMMigration, boot: DiskMigrationStatus, checksum: str | None
) -> dict[str, str]:
    spec = migration.spec
    annotations = {
        ANN_MIGRATED_FROM: f"{spec.source_namespace}/{spec.source_name}",
        ANN_MIGRATION: f"{migration.metadata.namespace or 'default'}/{migration.metadata.name}",
        ANN_MIGRATION_UID: migration.metadata.uid or "",
        ANN_IMPORTED_DISK_ID: boot.imported_disk_id or "",
    }
    if checksum:
        annotations[ANN_DISK_CHECKSUM] = checksum
    return annotations


def build_manifest(
    migration: VMMigration,
    vm: pb.VM,
    disks: Sequence[DiskMigrationStatus],
    nics: Sequence[NicPlan],
    checksum: str | None,
) -> dict[str, Any]:
    """The target VirtualMachine (see the module docstring)."""
    spec = migration.spec
    hints = spec.target_resource_hints
    boot = disks[0]
    boot_gib = _boot_gib(boot.size_bytes, hints.disk if hints else None)
    provider = spec.target_provider_ref
    target = VirtualMachine(
        metadata=ObjectMeta(
            name=spec.target_name,
            namespace=spec.effective_target_namespace,
            annotations=_annotations(migration, boot, checksum),
        ),
        spec=VirtualMachineSpec(
            provider_ref=ObjectReference(
                name=provider.name,
                namespace=provider.namespace_or(migration.metadata.namespace or "default"),
            ),
            resources=_resources(migration, vm),
            firmware=_FIRMWARE.get(vm.firmware),
            imported_disk=_imported(migration, boot, boot_gib),
            disks=_data_disks(migration, disks[1:]),
            networks=[_network(plan) for plan in nics],
            power_state=PowerState.OFF,
        ),
    )
    return target.to_dict()


def is_ours(migration: VMMigration, vm: VirtualMachine) -> bool:
    """True when the VirtualMachine was created by this migration (annotations)."""
    return vm.metadata.annotations.get(ANN_MIGRATION_UID) == migration.metadata.uid


def compare_target(
    migration: VMMigration,
    described: pb.VM,
    disks: Sequence[DiskMigrationStatus],
    networks: Sequence[VMNetwork],
) -> list[str]:
    """What differs between the target VM and what was migrated (empty: all good)."""
    problems: list[str] = []
    actual = [d for d in described.disks if d.device != pb.DISK_DEVICE_CDROM]
    if len(actual) != len(disks):
        problems.append(f"target VM has {len(actual)} disks, expected {len(disks)}")
    grow = bool(migration.spec.target_resource_hints and migration.spec.target_resource_hints.disk)
    for index, (want, got) in enumerate(zip(disks, actual, strict=False)):
        size = want.size_bytes or 0
        ok = (
            got.virtual_size_bytes >= size
            if index == 0 and grow
            else got.virtual_size_bytes == size
        )
        if not ok:
            problems.append(
                f"disk {got.id} (from {want.name}) is {got.virtual_size_bytes} bytes, "
                f"expected {size}"
            )
        fmt = naming.format_name(got.format)
        if fmt and want.format and fmt != want.format.value:
            problems.append(f"disk {got.id} (from {want.name}) is {fmt}, expected {want.format}")
    expected = [n.network or n.bridge or "" for n in networks]
    got_nets = [n.network for n in described.nics]
    same = len(got_nets) == len(expected) and all(
        got == want or got.endswith(f":{want}")
        for got, want in zip(got_nets, expected, strict=True)
    )
    if not same:
        problems.append(f"target VM NICs are on {got_nets}, expected {expected}")
    return problems
