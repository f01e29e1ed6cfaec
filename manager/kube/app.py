"""``virtrigaud manager``: the controllers against a cluster, one leader at a time.

``ManagerApp.run(stop)``:

1. connects (kubeconfig or in-cluster, ``manager.kube.config``) and builds a
   ``KubeStore`` (all namespaces, or the ``--namespace`` ones);
2. serves ``/healthz`` + ``/readyz`` (``--health-probe-bind-address``) and
   ``/metrics`` (``--metrics-bind-address``) at once, leader or not; ``/readyz`` says
   whether the API server answers;
3. with leader election, waits for the Lease; as leader it wires the same controllers
   as one-machine mode (``manager.onemachine.wiring``) plus the Provider -> Deployment
   reconciler, instruments them, and starts them;
4. ends when ``stop`` is set (controllers stopped, Lease released: exit 0) or when
   leadership is lost (controllers stopped at once: exit 1, so the pod restarts and
   queues again as a candidate, as controller-runtime does).
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from manager.kube.config import Cluster, connect
from manager.kube.deployer import ProviderDeploymentReconciler
from manager.kube.leader import LeaderElector, LeaseConfig
from manager.kube.store import KubeStore
from manager.observability import (
    HTTPEndpoints,
    InstrumentedConnections,
    Metrics,
    metrics_route,
    probe,
)
from manager.onemachine import wiring
from manager.providerclient import ClientTLS
from manager.runtime.manager import Manager
from virtrigaud.logging import get_logger

log = get_logger("virtrigaud.kube.app")

EXIT_OK = 0
EXIT_LEADERSHIP_LOST = 1
ALLOWED_HOSTS_ENV = "VIRTRIGAUD_STORAGE_ALLOWED_HOSTS"


def default_identity() -> str:
    """The pod name (downward API ``POD_NAME``), else host name + a random suffix."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{secrets.token_hex(3)}"


@dataclass
class ManagerOptions:
    kubeconfig: str | None = None
    context: str | None = None
    namespaces: tuple[str, ...] = ()  # () = all namespaces
    leader_elect: bool = False
    lease_namespace: str | None = None  # default: the configuration's namespace
    lease_name: str = "virtrigaud-manager"
    identity: str = field(default_factory=default_identity)
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    metrics_address: str | None = ":8080"
    health_address: str | None = ":8081"
    resync_period: float = 300.0
    provider_tls: ClientTLS | None = None
    deploy_providers: bool = True
    provider_image: str | None = None
    watch_seconds: int = 60


class ManagerApp:
    def __init__(self, options: ManagerOptions, cluster: Cluster | None = None) -> None:
        self.options = options
        self.cluster = cluster or connect(options.kubeconfig, options.context)
        self.store = KubeStore(
            self.cluster.api,
            namespaces=options.namespaces,
            instance=options.identity,
            watch_seconds=options.watch_seconds,
        )
        self.metrics = Metrics(self.store)
        self.manager: Manager | None = None
        self.connections: InstrumentedConnections | None = None
        self.endpoints: list[HTTPEndpoints] = []
        self.elector: LeaderElector | None = None
        self.leading = threading.Event()
        self.lost = threading.Event()
        self._lock = threading.Lock()

    # -- HTTP ---------------------------------------------------------------------------

    def _healthy(self) -> bool | str:
        return "leadership lost" if self.lost.is_set() else True

    def _serve(self) -> None:
        opts = self.options
        routes: dict[str, dict[str, Callable[[], tuple[int, str, bytes]]]] = {}
        if opts.health_address:
            routes.setdefault(opts.health_address, {}).update(
                {"/healthz": probe(self._healthy), "/readyz": probe(self.store.reachable)}
            )
        if opts.metrics_address:
            routes.setdefault(opts.metrics_address, {})["/metrics"] = metrics_route(self.metrics)
        for address, table in routes.items():
            self.endpoints.append(HTTPEndpoints(address, table).start())
            log.info("http_serving", address=address, paths=sorted(table))

    # -- leading ------------------------------------------------------------------------

    def start_controllers(self) -> None:
        with self._lock:
            opts = self.options
            self.connections = InstrumentedConnections(self.metrics, tls=opts.provider_tls)
            wired = wiring.build(self.store, self.connections, resync_period=opts.resync_period)
            if not wired.migrations:
                log.warning("migrations_not_reconciled", note=wired.note)
            if opts.deploy_providers:
                allowed = [h for h in os.environ.get(ALLOWED_HOSTS_ENV, "").split(",") if h]
                wired.manager.add(
                    ProviderDeploymentReconciler(
                        self.store,
                        self.store.rest,
                        image=opts.provider_image,
                        allowed_storage_hosts=allowed,
                    ),
                    workers=1,
                    name="provider-deployment-controller",
                    resync_period=opts.resync_period,
                )
            self.metrics.instrument(wired.manager)
            wired.manager.start()
            self.manager = wired.manager
            self.leading.set()
            self.metrics.leader.set(1)

    def stop_controllers(self, timeout: float = 30.0) -> None:
        with self._lock:
            self.leading.clear()
            self.metrics.leader.set(0)
            if self.manager is not None:
                self.manager.stop(timeout)
                self.manager = None
            if self.connections is not None:
                self.connections.close()
                self.connections = None

    def run(self, stop: threading.Event) -> int:
        opts = self.options
        self._serve()
        try:
            if not opts.leader_elect:
                self.start_controllers()
                stop.wait()
                return EXIT_OK
            self.elector = LeaderElector(
                self.store.rest,
                LeaseConfig(
                    opts.lease_namespace or self.cluster.namespace,
                    opts.lease_name,
                    opts.identity,
                    lease_duration=opts.lease_duration,
                    renew_deadline=opts.renew_deadline,
                    retry_period=opts.retry_period,
                ),
            )
            log.info("waiting_for_leadership", identity=opts.identity, lease=opts.lease_name)
            if self.elector.run(stop, self.start_controllers, self._on_stopped_leading):
                return EXIT_OK
            self.lost.set()
            return EXIT_LEADERSHIP_LOST
        finally:
            self.stop_controllers()
            for endpoint in self.endpoints:
                endpoint.stop()
            self.store.close()

    def _on_stopped_leading(self) -> None:
        # Lost (or stopping): stop acting at once; running passes get a short grace.
        self.stop_controllers(timeout=5.0)
