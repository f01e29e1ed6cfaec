"""Which driver serves which Provider ``spec.type``.

Entries are import paths so that a provider's hypervisor library (libvirt-python,
pyvmomi, proxmoxer) is imported only when that provider type is started.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from providers.runtime.driver import ProviderConfig, ProviderDriver
from virtrigaud import errors

# type -> "module:factory"; factory(ProviderConfig) -> ProviderDriver
PROVIDER_TYPES: dict[str, str] = {
    "libvirt": "providers.libvirt.driver:create",
    "proxmox": "providers.proxmox.driver:create",
    "vsphere": "providers.vsphere.driver:create",
}


def available_types() -> list[str]:
    return sorted(PROVIDER_TYPES)


def create_driver(provider_type: str, config: ProviderConfig) -> ProviderDriver:
    """Instantiate the driver for ``provider_type``."""
    target = PROVIDER_TYPES.get(provider_type)
    if target is None:
        known = ", ".join(available_types()) or "none yet"
        raise errors.InvalidArgument(
            f"unknown provider type {provider_type!r} (available: {known})"
        )
    module_name, _, attr = target.partition(":")
    factory: Callable[[ProviderConfig], ProviderDriver] = getattr(
        importlib.import_module(module_name), attr
    )
    driver = factory(config)
    # Every driver's storage access (transfer, DeleteObject) uses the same allow-list.
    driver.storage_allowed_hosts = tuple(config.allowed_storage_hosts)
    return driver
