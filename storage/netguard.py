"""SSRF guard for storage endpoints.

A storage endpoint comes from a user's manifest and the provider connects to it from
inside the cluster, so an endpoint must not be a way to reach the provider's own
loopback services or a cloud metadata service (which hands out node credentials).

:func:`check_endpoint` resolves the host (every address it resolves to, IPv4 and IPv6)
and refuses it when any address is

- loopback (127.0.0.0/8, ::1), link-local (169.254.0.0/16, fe80::/10) or unspecified
  (0.0.0.0, ::) -- unless the :class:`AllowList` permits it by host name, address or
  CIDR;
- a cloud metadata address (169.254.169.254, fd00:ec2::254, ECS/Alibaba/Oracle
  variants) -- unless the allow list names that exact address; a CIDR or a host name
  never unlocks a metadata address. Metadata host names (``metadata.google.internal``)
  are refused by name, always.

IPv4-mapped (``::ffff:a.b.c.d``), NAT64 (``64:ff9b::/96``) and 6to4 forms are unwrapped
first. Private ranges (10/8, 192.168/16, ...) are allowed: on-premises S3 lives there.

Limits: the check runs when a backend is created. A DNS name that changes its answer
afterwards (rebinding) is resolved again by the HTTP library at connect time; keep
backends short-lived (one per transfer) and do not follow redirects (none of the
backends does).
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from virtrigaud.errors import InvalidArgument, PermissionDenied, Unavailable

ENV_ALLOWED_HOSTS = "VIRTRIGAUD_STORAGE_ALLOWED_HOSTS"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, Azure, GCP, OpenStack, DigitalOcean, ...
        "fd00:ec2::254",  # AWS IPv6 IMDS
        "169.254.170.2",  # AWS ECS task metadata
        "169.254.170.23",  # AWS EKS pod identity agent
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud
    )
)
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata.goog", "metadata"})

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SPLIT = re.compile(r"[,\s]+")

Resolver = Callable[[str, int | None], Sequence[str]]


@dataclass(frozen=True)
class AllowList:
    """Host names, addresses and networks an operator explicitly allows."""

    hosts: frozenset[str] = frozenset()
    addresses: frozenset[IPAddress] = frozenset()
    networks: tuple[IPNetwork, ...] = field(default_factory=tuple)

    @classmethod
    def parse(cls, entries: Iterable[str] | str | None) -> AllowList:
        """Entries are host names, IPs or CIDRs; a string is split on commas/whitespace."""
        if entries is None:
            return cls()
        if isinstance(entries, str):
            entries = _SPLIT.split(entries)
        hosts: set[str] = set()
        addresses: set[IPAddress] = set()
        networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip().strip("[]")
            if not entry:
                continue
            try:
                if "/" in entry:
                    networks.append(ipaddress.ip_network(entry, strict=False))
                else:
                    addresses.add(ipaddress.ip_address(entry))
            except ValueError:
                if "/" in entry:
                    raise InvalidArgument(f"allowed host entry {entry!r} is not a CIDR") from None
                hosts.add(_normalize_host(entry))
        return cls(frozenset(hosts), frozenset(addresses), tuple(networks))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AllowList:
        """The allow list in ``VIRTRIGAUD_STORAGE_ALLOWED_HOSTS`` (empty when unset)."""
        env = os.environ if environ is None else environ
        return cls.parse(env.get(ENV_ALLOWED_HOSTS, ""))

    def permits(self, host: str, address: IPAddress) -> bool:
        """Whether ``address`` (resolved from ``host``) is explicitly allowed."""
        forms = {address, _unwrap(address)}
        if forms & METADATA_ADDRESSES:
            return bool(forms & self.addresses)
        return (
            host in self.hosts
            or bool(forms & self.addresses)
            or any(form in net for form in forms for net in self.networks)
        )


def as_allow_list(allowed: AllowList | Iterable[str] | str | None) -> AllowList:
    return allowed if isinstance(allowed, AllowList) else AllowList.parse(allowed)


def _normalize_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def _unwrap(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.sixtofour is not None:
            return address.sixtofour
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def classify(address: IPAddress) -> str | None:
    """Why an address is refused by default (``None`` when it is not)."""
    address = _unwrap(address)
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_unspecified:
        return "an unspecified address"
    return None


def _system_resolver(host: str, port: int | None) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]).split("%", 1)[0] for info in infos]


def check_endpoint(
    host: str,
    port: int | None = None,
    allowed: AllowList | Iterable[str] | str | None = None,
    *,
    resolver: Resolver = _system_resolver,
) -> list[IPAddress]:
    """Resolve ``host`` and raise PermissionDenied if any address is refused.

    Returns the resolved addresses. An unresolvable name raises Unavailable (DNS can
    recover); an empty host raises InvalidArgument.
    """
    allow = as_allow_list(allowed)
    name = _normalize_host(host)
    if not name:
        raise InvalidArgument("storage endpoint has no host")
    if name in METADATA_HOSTS or name.endswith(".metadata.google.internal"):
        raise PermissionDenied(
            f"storage endpoint host {name!r} is a cloud metadata service; refused (SSRF guard)"
        )
    try:
        raw_addresses: Sequence[Any] = resolver(name, port)
    except (OSError, UnicodeError) as exc:
        raise Unavailable(f"cannot resolve storage endpoint host {name!r}: {exc}") from None
    addresses = [ipaddress.ip_address(a) for a in raw_addresses]
    if not addresses:
        raise Unavailable(f"storage endpoint host {name!r} resolved to no address")
    for address in addresses:
        reason = classify(address)
        if reason is None:
            continue
        if allow.permits(name, address):
            continue
        hint = (
            "metadata addresses are only allowed when listed by exact address"
            if "metadata" in reason
            else f"list the host, address or network in {ENV_ALLOWED_HOSTS} to allow it"
        )
        raise PermissionDenied(
            f"storage endpoint host {name!r} resolves to {address}, {reason}; "
            f"refused (SSRF guard): {hint}"
        )
    return addresses
