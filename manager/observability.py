"""What the manager tells the outside: ``/healthz``, ``/readyz`` and Prometheus ``/metrics``.

Metrics (``prometheus_client``, one registry per manager):

* ``virtrigaud_migrations{phase}``: VMMigrations by ``status.phase`` (read from the
  store at scrape time, so it is right after a leader change too);
* ``virtrigaud_migration_bytes_transferred{namespace,name}``: bytes moved so far per
  migration (``status.bytesTransferred``, else the sum over its disks);
* ``virtrigaud_reconcile_total{controller,result}`` and
  ``virtrigaud_reconcile_errors_total{controller,error}``: passes and failed passes
  (transient, permanent or crashed, by error class);
* ``virtrigaud_reconcile_duration_seconds{controller}``;
* ``virtrigaud_provider_rpc_duration_seconds{method,code}``: every provider RPC the
  controllers make, by outcome;
* ``virtrigaud_leader``: 1 while this replica leads.

Reconcilers are instrumented by wrapping them (``instrument``), and provider clients by
``InstrumentedConnections``: the runtime and the controllers need no change.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from manager.api import MigrationPhase
from manager.connections import ProviderConnections
from manager.providerclient import ClientTLS, ProviderClient
from manager.runtime.manager import Manager
from manager.runtime.types import Reconciler, Result
from manager.store.base import ObjectKey, ObjectStore
from virtrigaud import errors
from virtrigaud.logging import get_logger

log = get_logger("virtrigaud.observability")

T = TypeVar("T")
PHASES = tuple(phase.value for phase in MigrationPhase)


class _MigrationCollector(Collector):
    """Migrations by phase and bytes moved, read from the store at scrape time."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        try:
            found = self.store.list("VMMigration")
        except errors.VirtrigaudError as exc:
            log.warning("metrics_list_failed", error=str(exc))
            return
        phases = GaugeMetricFamily(
            "virtrigaud_migrations", "VMMigrations by status.phase", labels=["phase"]
        )
        moved = GaugeMetricFamily(
            "virtrigaud_migration_bytes_transferred",
            "Bytes transferred so far by each VMMigration",
            labels=["namespace", "name"],
        )
        counts = dict.fromkeys(PHASES, 0)
        for obj in found:
            status = obj.get("status") or {}
            phase = str(status.get("phase") or "Pending")
            counts[phase] = counts.get(phase, 0) + 1
            total = status.get("bytesTransferred")
            if total is None:
                total = sum(int(d.get("bytesTransferred") or 0) for d in status.get("disks") or [])
            meta = obj["metadata"]
            moved.add_metric([str(meta.get("namespace")), str(meta["name"])], float(total))
        for phase, count in counts.items():
            phases.add_metric([phase], float(count))
        yield phases
        yield moved


class Metrics:
    def __init__(self, store: ObjectStore | None = None) -> None:
        self.registry = CollectorRegistry()
        self.reconciles = Counter(
            "virtrigaud_reconcile",
            "Reconcile passes by outcome",
            ["controller", "result"],
            registry=self.registry,
        )
        self.reconcile_errors = Counter(
            "virtrigaud_reconcile_errors",
            "Reconcile passes that raised, by error class",
            ["controller", "error"],
            registry=self.registry,
        )
        self.reconcile_seconds = Histogram(
            "virtrigaud_reconcile_duration_seconds",
            "Time spent in one reconcile pass",
            ["controller"],
            registry=self.registry,
        )
        self.rpc_seconds = Histogram(
            "virtrigaud_provider_rpc_duration_seconds",
            "Provider gRPC call latency by method and outcome",
            ["method", "code"],
            registry=self.registry,
        )
        self.leader = Gauge(
            "virtrigaud_leader", "1 while this replica leads", registry=self.registry
        )
        if store is not None:
            self.registry.register(_MigrationCollector(store))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def instrument(self, manager: Manager) -> None:
        """Wrap every controller's reconciler (call before ``manager.start``)."""
        for controller in manager.controllers:
            controller.reconciler = _Instrumented(controller.reconciler, controller.name, self)

    def observe_rpc(self, method: str, call: Callable[[], T]) -> T:
        started = time.perf_counter()
        code = "OK"
        try:
            return call()
        except errors.VirtrigaudError as exc:
            code = type(exc).__name__
            raise
        finally:
            self.rpc_seconds.labels(method, code).observe(time.perf_counter() - started)


class _Instrumented:
    def __init__(self, inner: Reconciler, name: str, metrics: Metrics) -> None:
        self.inner = inner
        self.kind = inner.kind
        self.name = name
        self.metrics = metrics

    def reconcile(self, key: ObjectKey) -> Result:
        started = time.perf_counter()
        try:
            result = self.inner.reconcile(key)
        except Exception as exc:
            kind = "transient" if isinstance(exc, errors.TransientError) else "error"
            self.metrics.reconciles.labels(self.name, kind).inc()
            self.metrics.reconcile_errors.labels(self.name, type(exc).__name__).inc()
            raise
        finally:
            self.metrics.reconcile_seconds.labels(self.name).observe(time.perf_counter() - started)
        outcome = "requeue" if result.requeue_after is not None else "done"
        self.metrics.reconciles.labels(self.name, outcome).inc()
        return result


class _TimedClient(ProviderClient):
    metrics: Metrics

    def _call(self, name: str, method: Callable[..., T], request: Any, timeout: float | None) -> T:
        return self.metrics.observe_rpc(
            name, lambda: ProviderClient._call(self, name, method, request, timeout)
        )


class InstrumentedConnections(ProviderConnections):
    """``ProviderConnections`` whose clients time every RPC into ``metrics``."""

    def __init__(
        self, metrics: Metrics, tls: ClientTLS | None = None, timeout: float = 30.0
    ) -> None:
        super().__init__(tls=tls, timeout=timeout)
        self.metrics = metrics

    def client_for(self, provider: dict[str, Any]) -> ProviderClient:
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
            client = _TimedClient(endpoint, tls=self._tls, timeout=self._timeout)
            client.metrics = self.metrics
            self._clients[key] = (endpoint, client)
            return client


# -- HTTP -------------------------------------------------------------------------------

Route = Callable[[], tuple[int, str, bytes]]


class _Handler(BaseHTTPRequestHandler):
    server: HTTPEndpoints

    def log_message(self, format: str, *args: Any) -> None:
        """Probes every few seconds would flood the log."""

    def do_GET(self) -> None:
        route = self.server.routes.get(self.path.split("?", 1)[0])
        if route is None:
            code, kind, body = 404, "text/plain", b"not found\n"
        else:
            try:
                code, kind, body = route()
            except Exception as exc:  # a probe must answer, whatever broke
                code, kind, body = 500, "text/plain", f"{type(exc).__name__}\n".encode()
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class HTTPEndpoints(ThreadingHTTPServer):
    """One listener serving a few GET routes, in a daemon thread."""

    daemon_threads = True

    def __init__(self, address: str, routes: dict[str, Route]) -> None:
        host, _, port = address.rpartition(":")
        super().__init__((host or "0.0.0.0", int(port)), _Handler)  # noqa: S104 - a pod port
        self.routes = routes
        self._thread = threading.Thread(target=self.serve_forever, daemon=True, name="http")

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> HTTPEndpoints:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def probe(check: Callable[[], bool | str]) -> Route:
    """A route answering 200 ``ok`` when ``check`` passes, 503 with its reason if not."""

    def route() -> tuple[int, str, bytes]:
        outcome = check()
        if outcome is True:
            return 200, "text/plain", b"ok\n"
        return 503, "text/plain", f"{outcome or 'not ready'}\n".encode()

    return route


def metrics_route(metrics: Metrics) -> Route:
    return lambda: (200, CONTENT_TYPE_LATEST, metrics.render())
