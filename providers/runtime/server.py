"""The provider server process: gRPC + health + reflection + optional mTLS.

``start`` builds and starts a server for a driver and returns a handle (used by
tests and by ``run``); ``run`` is what ``virtrigaud provider`` calls: it serves until
SIGTERM/SIGINT, then shuts down gracefully: the health service reports NOT_SERVING
(load balancers stop sending), new tasks are refused with UNAVAILABLE, running tasks
get ``grace`` seconds to finish and are then cancelled at their next safe point, and
the gRPC server drains in-flight calls.
"""

from __future__ import annotations

import os
import signal
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from providers.runtime.driver import ProviderDriver
from providers.runtime.servicer import ProviderServicer
from providers.runtime.tasks import TaskRegistry
from virtrigaud import errors
from virtrigaud.logging import get_logger
from virtrigaud.provider.v1 import provider_pb2 as pb
from virtrigaud.provider.v1 import provider_pb2_grpc as pb_grpc

log = get_logger("virtrigaud.provider.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Provider"].full_name


@dataclass(frozen=True)
class TLSFiles:
    """Server certificate and key; with ``client_ca`` set, clients must present a
    certificate signed by it (mutual TLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        try:
            cert, key = self.cert.read_bytes(), self.key.read_bytes()
            ca = self.client_ca.read_bytes() if self.client_ca else None
        except OSError as exc:
            raise errors.InvalidArgument(f"TLS file unreadable: {exc}") from exc
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
        )


class RunningServer:
    """A started provider server."""

    def __init__(
        self,
        server: grpc.Server,
        port: int,
        registry: TaskRegistry,
        health_servicer: health.HealthServicer,
        driver: ProviderDriver,
    ) -> None:
        self.server = server
        self.port = port
        self.registry = registry
        self.health = health_servicer
        self.driver = driver
        self._stopped = threading.Event()

    def stop(self, grace: float = 30.0) -> None:
        """Graceful shutdown (idempotent)."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        log.info("shutting_down", grace_seconds=grace, running_tasks=self.registry.running_count())
        self.health.enter_graceful_shutdown()
        self.registry.shutdown(grace)
        self.server.stop(grace=5.0).wait()
        self.driver.close()
        log.info("stopped")

    def wait(self) -> None:
        self.server.wait_for_termination()


def start(
    driver: ProviderDriver,
    listen: str = "127.0.0.1:0",
    tls: TLSFiles | None = None,
    max_tasks: int = 4,
    rpc_threads: int = 16,
) -> RunningServer:
    """Build, bind and start a server; ``listen`` with port 0 picks a free port."""
    registry = TaskRegistry(max_workers=max_tasks)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=rpc_threads, thread_name_prefix="rpc"),
        options=[("grpc.so_reuseport", 0)],
    )
    pb_grpc.add_ProviderServicer_to_server(ProviderServicer(driver, registry), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    try:
        if tls is None:
            port = server.add_insecure_port(listen)
        else:
            port = server.add_secure_port(listen, tls.credentials())
    except RuntimeError as exc:
        raise errors.InvalidArgument(f"cannot listen on {listen}: {exc}") from exc
    if port == 0:
        raise errors.InvalidArgument(f"cannot listen on {listen}: address unavailable")
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "serving",
        provider_type=driver.provider_type,
        listen=listen,
        port=port,
        tls=tls is not None,
        mtls=bool(tls and tls.client_ca),
    )
    return RunningServer(server, port, registry, health_servicer, driver)


def run(
    driver: ProviderDriver,
    listen: str,
    tls: TLSFiles | None = None,
    max_tasks: int = 4,
    grace: float = 30.0,
    *,
    parent_pid: int | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT -- or, with ``parent_pid``, until that process is no
    longer our parent (it died: we were re-parented) -- then shut down gracefully."""
    running = start(driver, listen, tls, max_tasks)
    stop_requested = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        # Only set a flag: a handler runs on the main thread between any two bytecodes,
        # possibly inside a log call holding the logger's lock, so logging (or anything
        # taking a lock) here can deadlock the process for good. A repeated signal
        # during shutdown is therefore harmless.
        received.append(signum)
        stop_requested.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if parent_pid is not None:
        threading.Thread(
            target=_watch_parent, args=(parent_pid, stop_requested), name="parent", daemon=True
        ).start()
    stop_requested.wait()
    if received:
        log.info("signal", signal=signal.Signals(received[0]).name)
    else:
        log.info("parent_exited", parent_pid=parent_pid)
    running.stop(grace)


def _watch_parent(parent_pid: int, stop: threading.Event, interval: float = 1.0) -> None:
    """Set ``stop`` once ``parent_pid`` is no longer our parent. The launcher also asks
    the kernel for SIGTERM on its death (PR_SET_PDEATHSIG), but that signal has been
    seen missing for a provider of a SIGKILLed run; polling the parent cannot miss."""
    while not stop.wait(interval):
        if os.getppid() != parent_pid:
            stop.set()
            return
