"""Validate: login, datacenter, datastore, resource pool, folder and networks.

Each check says exactly what is wrong; a failed login marks every other check "not
checked". The placement tree is read once for all checks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from providers.common.checks import Check
from providers.vsphere import placement
from providers.vsphere.client import VSphereClient
from providers.vsphere.settings import Settings
from virtrigaud import errors


def _check(name: str, probe: Callable[[], str]) -> Check:
    try:
        return Check(name, True, probe())
    except errors.VirtrigaudError as exc:
        return Check(name, False, exc.message)


def validate(
    client: VSphereClient, settings: Settings, storage_hint: str, networks: Sequence[str]
) -> list[Check]:
    def login() -> str:
        about = client.about()
        return f"logged in to {client.where} as {settings.username!r} ({about.fullName})"

    connection = _check("connection", login)
    datastore = storage_hint or settings.datastore
    wanted = (
        ["datacenter", "resourcePool"]
        + ([f"storage:{datastore}"] if datastore else [])
        + (["folder"] if settings.folder else [])
        + [f"network:{n}" for n in networks]
    )
    if not connection.ok:
        return [connection] + [Check(w, False, "not checked: no connection") for w in wanted]
    try:
        tree = placement.read(client)
    except errors.VirtrigaudError as exc:
        return [connection] + [Check(w, False, exc.message) for w in wanted]
    results = [connection]
    dc_check = _check("datacenter", lambda: _datacenter(tree, settings))
    results.append(dc_check)
    if not dc_check.ok:
        return results + [Check(w, False, "not checked: no datacenter") for w in wanted[1:]]
    dc = tree.datacenter(settings.datacenter)

    def pool() -> str:
        node = tree.resource_pool(dc, settings.resource_pool, settings.cluster)
        return f"resource pool {tree.path(node.ref._moId)}"

    results.append(_check("resourcePool", pool))
    if datastore:

        def store() -> str:
            node = tree.datastore(dc, datastore)
            if node.props.get("summary.accessible") is False:
                raise errors.Unavailable(f"datastore {datastore!r} is not accessible")
            free = int(node.props.get("summary.freeSpace") or 0)
            return f"datastore {datastore!r} is accessible ({free // (1 << 30)} GiB free)"

        results.append(_check(f"storage:{datastore}", store))
    if settings.folder:
        results.append(
            _check(
                "folder",
                lambda: f"VM folder {tree.path(tree.vm_folder(dc, settings.folder).ref._moId)}",
            )
        )
    for net in networks:

        def network(net: str = net) -> str:
            node = tree.network(dc, net)
            return f"network {net!r} ({type(node.ref).__name__.rsplit('.', 1)[-1]}) exists"

        results.append(_check(f"network:{net}", network))
    return results


def _datacenter(tree: placement.Placement, settings: Settings) -> str:
    dc = tree.datacenter(settings.datacenter)
    return f"datacenter {tree.path(dc.ref._moId)}"
