"""The ``virtrigaud manager`` subcommand: its flags and its entry point.

The flags follow the Helm chart's Deployment (``charts/virtrigaud``) and
controller-runtime's names: ``--leader-elect``, ``--leader-election-namespace``,
``--leader-election-id``, ``--namespace`` (repeatable), ``--metrics-bind-address``,
``--health-probe-bind-address``, ``--provider-tls-*``. Heavy imports (the Kubernetes
client) happen only when the subcommand runs.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from types import FrameType


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("manager", help="run the controllers against a Kubernetes cluster")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, in-cluster)")
    p.add_argument("--context", help="kubeconfig context (default: the current one)")
    p.add_argument(
        "--namespace",
        action="append",
        default=[],
        dest="namespaces",
        help="reconcile only this namespace (repeatable; default: all namespaces)",
    )
    p.add_argument("--leader-elect", action="store_true", help="elect a leader on a Lease")
    p.add_argument("--leader-election-namespace", help="Lease namespace (default: own)")
    p.add_argument("--leader-election-id", default="virtrigaud-manager", help="Lease name")
    p.add_argument("--identity", help="candidate identity (default: $POD_NAME or host name)")
    p.add_argument("--lease-duration", type=float, default=15.0, help="seconds")
    p.add_argument("--renew-deadline", type=float, default=10.0, help="seconds")
    p.add_argument("--retry-period", type=float, default=2.0, help="seconds")
    p.add_argument("--metrics-bind-address", default=":8080", help="HOST:PORT, 0 = off")
    p.add_argument("--health-probe-bind-address", default=":8081", help="HOST:PORT, 0 = off")
    p.add_argument("--resync-period", type=float, default=300.0, help="seconds")
    p.add_argument("--provider-tls-cert", type=Path, help="client certificate (PEM)")
    p.add_argument("--provider-tls-key", type=Path, help="client key (PEM)")
    p.add_argument("--provider-tls-ca", type=Path, help="CA of the providers' certificates")
    p.add_argument("--provider-tls-server-name", help="name to verify in their certificates")
    p.add_argument("--provider-image", help="image for provider Deployments (overrides spec)")
    p.add_argument(
        "--no-provider-deployments",
        action="store_true",
        help="do not create Deployments for Providers with spec.runtime",
    )
    p.add_argument("--log-level", default="info")


def _address(value: str) -> str | None:
    return None if value in ("", "0") else value


def run(args: argparse.Namespace) -> int:
    from manager.kube.app import ManagerApp, ManagerOptions, default_identity
    from manager.providerclient import ClientTLS
    from virtrigaud import errors
    from virtrigaud import logging as vlog

    vlog.configure(args.log_level)
    tls = None
    if args.provider_tls_ca:
        tls = ClientTLS(
            args.provider_tls_ca,
            args.provider_tls_cert,
            args.provider_tls_key,
            args.provider_tls_server_name,
        )
    elif args.provider_tls_cert or args.provider_tls_key:
        raise errors.InvalidArgument(
            "--provider-tls-cert/--provider-tls-key need --provider-tls-ca"
        )
    options = ManagerOptions(
        kubeconfig=args.kubeconfig,
        context=args.context,
        namespaces=tuple(args.namespaces),
        leader_elect=args.leader_elect,
        lease_namespace=args.leader_election_namespace,
        lease_name=args.leader_election_id,
        identity=args.identity or default_identity(),
        lease_duration=args.lease_duration,
        renew_deadline=args.renew_deadline,
        retry_period=args.retry_period,
        metrics_address=_address(args.metrics_bind_address),
        health_address=_address(args.health_probe_bind_address),
        resync_period=args.resync_period,
        provider_tls=tls,
        deploy_providers=not args.no_provider_deployments,
        provider_image=args.provider_image,
    )
    app = ManagerApp(options)
    stop = threading.Event()

    def handler(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, handler)
    return app.run(stop)
