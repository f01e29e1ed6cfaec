"""Validate: connection, storage pool and networks, each reported with what is wrong."""

from __future__ import annotations

from collections.abc import Sequence

from providers.common.checks import Check
from providers.libvirt import names, placement
from providers.libvirt.client import LibvirtClient
from virtrigaud import errors


def version_text(version: int) -> str:
    major, rest = divmod(version, 1_000_000)
    minor, micro = divmod(rest, 1000)
    return f"{major}.{minor}.{micro}"


def _connection(client: LibvirtClient) -> Check:
    try:
        lib, hyp = client.versions()
    except errors.VirtrigaudError as exc:
        return Check("connection", False, exc.message)
    return Check(
        "connection",
        True,
        f"connected to {client.uri} (libvirt {version_text(lib)}, hypervisor {version_text(hyp)})",
    )


def _storage(client: LibvirtClient, hint: str) -> Check:
    name = f"storage:{hint}"
    if not names.is_safe(hint):
        return Check(name, False, f"{hint!r} is not a valid storage pool name")
    try:
        pool = client.pool(hint)
    except errors.NotFound:
        return Check(name, False, f"storage pool {hint!r} does not exist")
    except errors.VirtrigaudError as exc:
        return Check(name, False, exc.message)
    if not pool.active:
        return Check(name, False, f"storage pool {hint!r} exists but is not active")
    where = f" at {pool.path}" if pool.path else ""
    return Check(name, True, f"storage pool {hint!r} ({pool.type}{where}) is active")


def _network(client: LibvirtClient, value: str) -> Check:
    name = f"network:{value}"
    try:
        found = placement.resolve_network(client, value, "network")
    except errors.VirtrigaudError as exc:
        return Check(name, False, exc.message.removeprefix("network: "))
    what = "libvirt network" if found.kind == "network" else "host bridge"
    return Check(name, True, f"{what} {found.name!r} is usable")


def validate(client: LibvirtClient, storage_hint: str, networks: Sequence[str]) -> list[Check]:
    connection = _connection(client)
    results = [connection]
    wanted = ([f"storage:{storage_hint}"] if storage_hint else []) + [
        f"network:{n}" for n in networks
    ]
    if not connection.ok:
        return results + [Check(w, False, "not checked: no connection") for w in wanted]
    if storage_hint:
        results.append(_storage(client, storage_hint))
    results.extend(_network(client, n) for n in networks)
    return results
