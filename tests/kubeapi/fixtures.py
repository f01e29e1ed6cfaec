"""Helpers for tests that talk to the emulator through the official client."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

from manager.kube.store import KubeStore
from tests.kubeapi.server import KubeAPIServer


@contextlib.contextmanager
def running(**options: Any) -> Iterator[KubeAPIServer]:
    server = KubeAPIServer(**options).start()
    try:
        yield server
    finally:
        server.stop()


def write_kubeconfig(server: KubeAPIServer, path: Path, namespace: str = "default") -> Path:
    path.write_text(yaml.safe_dump(server.kubeconfig(namespace)))
    return path


def api_client(server: KubeAPIServer) -> client.ApiClient:
    """An ApiClient loaded the way a user's would be: from a kubeconfig document."""
    configuration = client.Configuration()
    config.load_kube_config_from_dict(
        server.kubeconfig(), client_configuration=configuration, persist_config=False
    )
    return client.ApiClient(configuration)


def namespace(server: KubeAPIServer, name: str) -> None:
    client.CoreV1Api(api_client(server)).create_namespace({"metadata": {"name": name}})


@contextlib.contextmanager
def kube_store(
    namespaces: tuple[str, ...] = ("prod", "other"), **options: Any
) -> Iterator[tuple[KubeStore, KubeAPIServer]]:
    """A fresh emulator (with ``namespaces`` created) and a KubeStore on it."""
    with running(token="test-token", **options) as server:
        for name in namespaces:
            namespace(server, name)
        store = KubeStore(api_client(server), watch_seconds=5)
        try:
            yield store, server
        finally:
            store.close()
