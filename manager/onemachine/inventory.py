"""``virtrigaud inventory PROVIDER``: browse a provider's VMs to pick migration sources.

The provider is started from the manifests of ``-f DIR`` (loaded into a throw-away
store, so the state store is not touched) or from the state store. Every page of
ListVMs is read. The default output lists each VM with power state, CPU, memory,
disks (size, allocation, format, bus, storage) and NICs (network, MAC, model);
``-o yaml`` prints one VirtualMachine manifest per VM that adopts it by ``vmId``
(with its NICs as ``spec.networks``, ready to edit into a migration's network map).
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from manager.api import API_VERSION, VirtualMachine
from manager.controllers.vmspec import FROM_PB_FORMAT
from manager.onemachine import manifests
from manager.onemachine.launcher import ProviderLauncher
from manager.onemachine.progress import human_bytes
from manager.onemachine.views import table
from manager.providerclient import ProviderClient
from manager.store.base import ObjectKey, ObjectStore
from manager.store.sqlite import SQLiteStore
from virtrigaud import errors
from virtrigaud.provider.v1 import provider_pb2 as pb

POWER = {pb.POWER_STATE_ON: "On", pb.POWER_STATE_OFF: "Off", pb.POWER_STATE_SUSPENDED: "Suspended"}


@dataclass
class InventoryConfig:
    provider: str
    namespace: str
    out: TextIO
    path: Path | None = None
    store_path: Path | None = None
    output: str = "table"


def _format(disk: pb.Disk) -> str:
    found = FROM_PB_FORMAT.get(disk.format)
    return found.value if found else pb.DiskFormat.Name(disk.format).removeprefix("DISK_FORMAT_")


def render_table(vms: Iterable[pb.VM]) -> str:
    blocks = []
    for vm in vms:
        power = POWER.get(vm.power_state, "Unknown")
        head = table(
            ["NAME", "ID", "POWER", "CPU", "MEMORY"],
            [[vm.name, vm.id, power, str(vm.cpu), f"{vm.memory_mib}Mi"]],
        )
        disks = [
            [
                d.id,
                human_bytes(d.virtual_size_bytes),
                human_bytes(d.allocated_size_bytes),
                _format(d),
                d.bus,
                d.storage,
                "cdrom" if d.device == pb.DISK_DEVICE_CDROM else "disk",
                d.path,
            ]
            for d in vm.disks
        ]
        nics = [[n.id, n.network, n.mac, n.model, str(n.vlan_id or "")] for n in vm.nics]
        lines = [head]
        if disks:
            heads = ["DISK", "SIZE", "ALLOCATED", "FORMAT", "BUS", "STORAGE", "DEVICE", "PATH"]
            lines.append(_indent(table(heads, disks)))
        if nics:
            lines.append(_indent(table(["NIC", "NETWORK", "MAC", "MODEL", "VLAN"], nics)))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) if blocks else "No VMs found."


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def object_name(vm_name: str) -> str:
    """A DNS-1123 object name for a hypervisor VM name."""
    name = re.sub(r"[^a-z0-9.-]+", "-", vm_name.lower()).strip("-.")
    return name[:253].rstrip("-.") or "vm"


def _network(nic: pb.Nic) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": object_name(nic.id)[:63] or "nic"}
    kind, sep, bare = nic.network.partition(":")
    if sep and kind == "bridge":
        entry["bridge"] = bare
    elif nic.network:
        entry["network"] = bare if sep and kind == "network" else nic.network
    if nic.mac:
        entry["mac"] = nic.mac
    return entry


def adoption_manifest(vm: pb.VM, provider: str, namespace: str) -> dict[str, Any]:
    """A VirtualMachine manifest adopting ``vm`` (validated through manager.api)."""
    networks = [_network(nic) for nic in vm.nics]
    names = [n["name"] for n in networks]
    for index, entry in enumerate(networks):  # names must be unique
        if names.count(entry["name"]) > 1:
            entry["name"] = f"nic{index}"
    manifest: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "VirtualMachine",
        "metadata": {"name": object_name(vm.name), "namespace": namespace},
        "spec": {
            "providerRef": {"name": provider},
            "vmId": vm.id,
            "resources": {"cpu": max(vm.cpu, 1), "memoryMiB": max(vm.memory_mib, 1)},
        },
    }
    if networks:
        manifest["spec"]["networks"] = networks
    return VirtualMachine.from_dict(manifest).to_dict()


def render_yaml(vms: Iterable[pb.VM], provider: str, namespace: str) -> str:
    documents = []
    for vm in vms:
        disks = ", ".join(
            f"{d.id} {human_bytes(d.virtual_size_bytes)} {_format(d)}"
            for d in vm.disks
            if d.device != pb.DISK_DEVICE_CDROM
        )
        header = f"# {vm.name}: {POWER.get(vm.power_state, 'Unknown')}; disks: {disks or 'none'}\n"
        body = yaml.safe_dump(adoption_manifest(vm, provider, namespace), sort_keys=False)
        documents.append(header + body)
    return "---\n".join(documents)


def list_vms(
    store: ObjectStore, key: ObjectKey, state_dir: Path, record_status: bool = True
) -> list[pb.VM]:
    store.get(key.kind, key.namespace, key.name)  # NotFound names it
    with ProviderLauncher(store, state_dir, record_status=record_status) as launcher:
        launcher.start_all(only=key)
        if key in launcher.failed:
            raise errors.Unavailable(f"provider {key.namespace}/{key.name}: {launcher.failed[key]}")
        endpoint = launcher.running[key].endpoint
        with ProviderClient(endpoint, timeout=60) as client:
            return list(client.iter_vms())


def inventory(config: InventoryConfig) -> int:
    key = ObjectKey("Provider", config.namespace, config.provider)
    if config.path is not None:
        loaded = manifests.read_manifests(config.path)
        with (
            tempfile.TemporaryDirectory(prefix="vr-inventory-") as scratch,
            SQLiteStore(Path(scratch) / "state.db") as store,
        ):
            manifests.apply(store, [o for o in loaded if o["kind"] in ("Provider", "Secret")])
            vms = list_vms(store, key, Path(scratch))
    else:
        if config.store_path is None:
            raise errors.InvalidArgument("inventory needs -f DIR or --store PATH")
        with SQLiteStore(config.store_path) as store:
            # a running `virtrigaud run` owns the Providers' status: leave it alone
            vms = list_vms(store, key, config.store_path.parent, record_status=False)
    if config.output == "yaml":
        config.out.write(render_yaml(vms, config.provider, config.namespace))
    else:
        config.out.write(render_table(vms) + "\n")
    return 0
