"""Validate: API login, the node, the storage hint, the bridges and the node's SSH.

Every check reports ok/message and never raises for a negative result; a check that
cannot run because an earlier one failed says so.
"""

from __future__ import annotations

from providers.common.checks import Check
from providers.proxmox import lifecycle, node
from providers.proxmox.site import Site
from virtrigaud import errors


def validate(site: Site, storage_hint: str, networks: list[str]) -> list[Check]:
    out: list[Check] = []
    try:
        _major, _minor, text = site.api.version()
        out.append(Check("connection", True, f"logged in to PVE {text} as {site.api_user}"))
    except errors.VirtrigaudError as exc:
        out.append(Check("connection", False, exc.message))
        return [*out, Check(f"node:{site.node}", False, "not checked: no API connection")]
    try:
        nodes = {str(n.get("node")): n for n in site.api.get("nodes")}
        found = nodes.get(site.node)
        if found is None:
            out.append(
                Check(
                    f"node:{site.node}",
                    False,
                    f"node {site.node!r} is not in the cluster (nodes: {', '.join(sorted(nodes))})",
                )
            )
            return out
        online = found.get("status") == "online"
        out.append(Check(f"node:{site.node}", online, f"node {site.node} is {found.get('status')}"))
    except errors.VirtrigaudError as exc:
        out.append(Check(f"node:{site.node}", False, exc.message))
        return out
    if storage_hint:
        out.append(_storage(site, storage_hint))
    if networks:
        try:
            known = lifecycle.bridges(site)
        except errors.VirtrigaudError as exc:
            known = set()
            message = exc.message
        else:
            message = ""
        for net in networks:
            ok = net in known
            out.append(
                Check(
                    f"network:{net}",
                    ok,
                    f"bridge {net} exists on {site.node}"
                    if ok
                    else message or f"bridge {net!r} does not exist on node {site.node}",
                )
            )
    out.append(_ssh(site))
    return out


def _storage(site: Site, storage: str) -> Check:
    name = f"storage:{storage}"
    try:
        config = site.storage_config(storage)
        status = site.storage_status(storage)
    except errors.VirtrigaudError as exc:
        return Check(name, False, exc.message)
    if status is None or not status.get("enabled", 1):
        return Check(name, False, f"storage {storage!r} is not enabled on node {site.node}")
    if not status.get("active"):
        return Check(name, False, f"storage {storage!r} is not active on node {site.node}")
    content = str(config.get("content", "")).split(",")
    if "images" not in content:
        return Check(name, False, f"storage {storage!r} does not hold VM images")
    return Check(name, True, f"storage {storage} ({config.get('type')}) holds VM images")


def _ssh(site: Site) -> Check:
    name = f"node-access:{site.access.description}"
    try:
        version = node.run(site.access, ["qemu-img", "--version"]).splitlines()
    except errors.VirtrigaudError as exc:
        return Check(name, False, exc.message)
    return Check(name, True, f"reached the node; {version[0] if version else 'qemu-img found'}")
