"""Where things go: datacenter, datastore, resource pool, VM folder and networks.

``read`` fetches the whole placement tree in one retrieval (datacenters, folders,
datastores, networks, compute resources and resource pools: name, parent and the few
links needed) and ``Placement`` answers the questions of Validate, CreateVM and the
datastore transfers from it. Names are looked up inside the chosen datacenter:

* datacenter: option ``datacenter`` (name or inventory path), else the only one
  (InvalidArgument when there are several and none is named);
* datastore: the request's ``storage_hint``, else option ``datastore`` (NotFound for
  an unknown name);
* resource pool: option ``resourcePool`` (name or inventory path), else the root
  pool of option ``cluster`` (a cluster or standalone host), else the root pool of
  the first compute resource by name;
* VM folder: option ``folder`` (path below the datacenter's VM folder), else that
  folder itself;
* networks: portgroup / network names as the inventory shows them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from providers.vsphere.client import ObjectProps, VSphereClient, vim
from providers.vsphere.settings import Settings
from virtrigaud import errors

KINDS: dict[Any, list[str]] = {
    vim.Datacenter: ["name", "parent", "vmFolder"],
    vim.Folder: ["name", "parent"],
    vim.Datastore: ["name", "parent", "summary.accessible", "summary.freeSpace"],
    vim.Network: ["name", "parent"],
    vim.ComputeResource: ["name", "parent", "resourcePool"],
    vim.ResourcePool: ["name", "parent"],
}


def display_name(value: object) -> str:
    """vSphere stores ``%``, ``/`` and ``\\`` in entity names as ``%25``, ``%2f`` and
    ``%5c``; the names reported are the ones a person typed."""
    text = str(value or "")
    if "%" not in text:
        return text
    return re.sub(
        r"%(25|2[fF]|5[cC])", lambda m: {"25": "%", "2f": "/", "5c": "\\"}[m.group(1).lower()], text
    )


@dataclass
class Node:
    ref: Any
    name: str
    parent: str | None  # moid
    props: dict[str, Any] = field(default_factory=dict)


@dataclass
class Placement:
    """The inventory tree as far as placement needs it (see the module docstring)."""

    nodes: dict[str, Node]

    def path(self, moid: str) -> str:
        """Inventory path below the root folder: ``/DC0/host/C0/Resources``."""
        names: list[str] = []
        node = self.nodes.get(moid)
        while node is not None and node.parent is not None:
            names.append(node.name)
            node = self.nodes.get(node.parent)
        return "/" + "/".join(reversed(names))

    def datacenter_of(self, moid: str) -> Node | None:
        node = self.nodes.get(moid)
        while node is not None:
            if isinstance(node.ref, vim.Datacenter):
                return node
            node = self.nodes.get(node.parent) if node.parent else None
        return None

    def of_kind(self, kind: Any, datacenter: Node | None = None) -> list[Node]:
        found = [n for n in self.nodes.values() if isinstance(n.ref, kind)]
        if datacenter is not None:
            found = [
                n
                for n in found
                if (dc := self.datacenter_of(n.ref._moId)) is not None
                and dc.ref._moId == datacenter.ref._moId
            ]
        return sorted(found, key=lambda n: (n.name, n.ref._moId))

    # -- questions -------------------------------------------------------------------

    def datacenter(self, wanted: str) -> Node:
        dcs = self.of_kind(vim.Datacenter)
        if wanted:
            match = [n for n in dcs if wanted in (n.name, self.path(n.ref._moId))]
            if not match:
                raise errors.NotFound(f"datacenter {wanted!r} not found")
            return match[0]
        if len(dcs) != 1:
            names = ", ".join(n.name for n in dcs) or "none"
            raise errors.InvalidArgument(
                f"datacenter: the endpoint has {len(dcs)} datacenters ({names}); "
                "set the provider option datacenter"
            )
        return dcs[0]

    def datacenter_path(self, dc: Node) -> str:
        """The ``dcPath`` of the datastore file endpoint (path without the leading /)."""
        return self.path(dc.ref._moId).lstrip("/")

    def datastore(self, dc: Node, name: str) -> Node:
        if not name:
            raise errors.InvalidArgument(
                "storage_hint: name a datastore (or set the provider option datastore)"
            )
        for node in self.of_kind(vim.Datastore, dc):
            if node.name == name:
                return node
        raise errors.NotFound(f"datastore {name!r} not found in datacenter {dc.name!r}")

    def network(self, dc: Node, name: str) -> Node:
        for node in self.of_kind(vim.Network, dc):
            if node.name == name:
                return node
        raise errors.NotFound(f"network {name!r} not found in datacenter {dc.name!r}")

    def resource_pool(self, dc: Node, pool: str, cluster: str) -> Node:
        if pool:
            for node in self.of_kind(vim.ResourcePool, dc):
                if pool in (node.name, self.path(node.ref._moId)):
                    return node
            raise errors.NotFound(f"resource pool {pool!r} not found in datacenter {dc.name!r}")
        computes = self.of_kind(vim.ComputeResource, dc)
        if cluster:
            computes = [c for c in computes if cluster in (c.name, self.path(c.ref._moId))]
            if not computes:
                raise errors.NotFound(f"cluster or host {cluster!r} not found in {dc.name!r}")
        for compute in computes:
            root = compute.props.get("resourcePool")
            if root is not None and root._moId in self.nodes:
                return self.nodes[root._moId]
        raise errors.NotFound(f"datacenter {dc.name!r} has no resource pool")

    def vm_folder(self, dc: Node, folder: str) -> Node:
        root = dc.props.get("vmFolder")
        if root is None or root._moId not in self.nodes:
            raise errors.NotFound(f"datacenter {dc.name!r} has no VM folder")
        node = self.nodes[root._moId]
        for part in [p for p in folder.split("/") if p]:
            children = [
                n
                for n in self.nodes.values()
                if n.parent == node.ref._moId and isinstance(n.ref, vim.Folder) and n.name == part
            ]
            if not children:
                raise errors.NotFound(f"VM folder {folder!r} not found in {dc.name!r}")
            node = children[0]
        return node


def read(client: VSphereClient) -> Placement:
    objects = client.retrieve_all(KINDS, "reading the inventory tree")
    return Placement({obj.moid: _node(obj) for obj in objects})


def _node(obj: ObjectProps) -> Node:
    parent = obj.props.get("parent")
    return Node(
        ref=obj.ref,
        name=display_name(obj.props.get("name")),
        parent=str(parent._moId) if parent is not None else None,
        props=obj.props,
    )


@dataclass(frozen=True)
class Target:
    """Where a new VM or disk goes."""

    datacenter: Node
    datacenter_path: str
    datastore: Node


def target(
    client: VSphereClient, settings: Settings, storage_hint: str, tree: Placement | None = None
) -> Target:
    """Datacenter and datastore for new files (``tree``: an already read placement)."""
    tree = tree or read(client)
    dc = tree.datacenter(settings.datacenter)
    ds = tree.datastore(dc, storage_hint or settings.datastore)
    if ds.props.get("summary.accessible") is False:
        raise errors.Unavailable(f"datastore {ds.name!r} is not accessible right now")
    return Target(dc, tree.datacenter_path(dc), ds)
