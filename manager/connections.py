"""One gRPC client per Provider object, reused across reconciles.

The address comes from the Provider's ``status.endpoint`` (set by whoever runs the
provider server: the one-machine launcher, or the Kubernetes Deployment controller of
issue #9). A changed endpoint replaces the cached client.
"""

from __future__ import annotations

import threading
from typing import Any

from manager.providerclient import ClientTLS, ProviderClient
from manager.store.base import ObjectKey
from virtrigaud import errors


class ProviderConnections:
    """Cache of ProviderClient by Provider key."""

    def __init__(self, tls: ClientTLS | None = None, timeout: float = 30.0) -> None:
        self._tls = tls
        self._timeout = timeout
        self._lock = threading.Lock()
        self._clients: dict[ObjectKey, tuple[str, ProviderClient]] = {}

    def client_for(self, provider: dict[str, Any]) -> ProviderClient:
        """The client for a Provider object; FailedPrecondition if it has no endpoint."""
        key = ObjectKey.of(provider)
        endpoint = (provider.get("status") or {}).get("endpoint")
        if not endpoint:
            raise errors.FailedPrecondition(
                f"provider {key.namespace}/{key.name} has no endpoint yet"
            )
        with self._lock:
            cached = self._clients.get(key)
            if cached and cached[0] == endpoint:
                return cached[1]
            if cached:
                cached[1].close()
            client = ProviderClient(endpoint, tls=self._tls, timeout=self._timeout)
            self._clients[key] = (endpoint, client)
            return client

    def close(self) -> None:
        with self._lock:
            for _, client in self._clients.values():
                client.close()
            self._clients.clear()
