"""Valid example manifests of each kind, used as bases for the negative and round-trip
tests (hand-written: the spec documents contain no Provider and no VirtualMachine with
several disks)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from manager.api import Provider, Secret, VirtualMachine, VMMigration

MIGRATION: dict[str, Any] = {
    "apiVersion": "infra.virtrigaud.io/v1beta1",
    "kind": "VMMigration",
    "metadata": {"name": "m1", "namespace": "default"},
    "spec": {
        "sourceName": "vm1",
        "sourceNamespace": "default",
        "targetProviderRef": {"name": "vsphere-prod", "namespace": "default"},
        "targetName": "vm1-migrated",
        "storage": {"type": "s3", "bucket": "vm-migrations", "region": "us-east-1"},
    },
    "status": {
        "phase": "Exporting",
        "progress": 10,
        "conditions": [
            {"type": "Validated", "status": "True", "lastTransitionTime": "2025-10-16T10:00:05Z"}
        ],
        "disks": [{"name": "vda", "phase": "Exporting"}, {"name": "vdb", "phase": "Pending"}],
    },
}
VM: dict[str, Any] = {
    "apiVersion": "infra.virtrigaud.io/v1beta1",
    "kind": "VirtualMachine",
    "metadata": {"name": "vm1", "namespace": "default"},
    "spec": {
        "providerRef": {"name": "libvirt"},
        "importedDisk": {"diskID": "vm1-vda", "source": "migration"},
        "disks": [
            {"name": "data0", "sizeGiB": 10},
            {"name": "data1", "importedDisk": {"diskID": "vm1-vdb", "format": "raw"}},
        ],
        "networks": [{"name": "eth0", "bridge": "virbr0", "mac": "52:54:00:12:34:56"}],
        "resources": {"cpu": 2, "memoryMiB": 2048},
    },
}
PROVIDER: dict[str, Any] = {
    "apiVersion": "infra.virtrigaud.io/v1beta1",
    "kind": "Provider",
    "metadata": {"name": "vsphere-prod", "namespace": "default"},
    "spec": {
        "type": "vsphere",
        "endpoint": "https://vcenter.example.com",
        "runtime": {"image": "provider:dev", "resources": {"limits": {"cpu": "500m"}}},
        "allowedStorageHosts": ["s3.example.com"],
    },
}
SECRET: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Secret",
    "metadata": {"name": "s3-credentials"},
    "data": {"accessKey": "QUtJQQ=="},
}
BASES: dict[str, tuple[dict[str, Any], Callable[[Any], Any]]] = {
    "VMMigration": (MIGRATION, VMMigration.from_dict),
    "VirtualMachine": (VM, VirtualMachine.from_dict),
    "Provider": (PROVIDER, Provider.from_dict),
    "Secret": (SECRET, Secret.from_dict),
}
