"""Where the manager finds the cluster: a kubeconfig, or the pod's service account.

``api_client()`` follows the usual order: an explicit kubeconfig path, then
``$KUBECONFIG`` / ``~/.kube/config`` when outside a pod, and the in-cluster service
account (``KUBERNETES_SERVICE_HOST`` + the mounted token and CA) inside one. Both come
from the official client's own loaders (``kubernetes.config``), so token refresh,
client certificates and exec plugins behave as in ``kubectl``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml
from kubernetes import client, config

from virtrigaud import errors

# Every controller keeps a watch stream per kind open (about 8) besides its workers'
# requests; urllib3's default pool (5 x CPUs) would churn connections on a small node.
CONNECTION_POOL = 32
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


@dataclass
class Cluster:
    """An API client and the namespace the configuration points at."""

    api: client.ApiClient
    namespace: str
    source: str  # "in-cluster" or the kubeconfig path


def _in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def connect(kubeconfig: str | None = None, context: str | None = None) -> Cluster:
    """An ``ApiClient`` for the cluster (see the module docstring for the order)."""
    path = kubeconfig or os.environ.get("KUBECONFIG") or ""
    if not path and _in_cluster():
        configuration = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException as exc:
            raise errors.FailedPrecondition(f"in-cluster configuration: {exc}") from exc
        try:
            namespace = SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
        except OSError:
            namespace = "default"
        configuration.connection_pool_maxsize = CONNECTION_POOL
        return Cluster(client.ApiClient(configuration), namespace, "in-cluster")
    path = path.split(os.pathsep)[0] if path else str(Path.home() / ".kube" / "config")
    if not Path(path).exists():
        raise errors.NotFound(
            f"kubeconfig {path} does not exist (and this is not a pod: no in-cluster "
            "service account)"
        )
    configuration = client.Configuration()
    try:
        config.load_kube_config(
            config_file=path,
            context=context,
            client_configuration=configuration,
            persist_config=False,
        )
        _, active = config.list_kube_config_contexts(config_file=path)
    except (config.ConfigException, ValueError, KeyError, yaml.YAMLError) as exc:
        raise errors.InvalidArgument(f"kubeconfig {path}: {exc}") from exc
    if context:
        contexts, _ = config.list_kube_config_contexts(config_file=path)
        active = next((c for c in contexts if c.get("name") == context), active)
    namespace = str(((active or {}).get("context") or {}).get("namespace") or "default")
    configuration.connection_pool_maxsize = CONNECTION_POOL
    return Cluster(client.ApiClient(configuration), namespace, path)
