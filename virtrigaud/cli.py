"""The ``virtrigaud`` command line.

Subcommands:
  provider   run one provider gRPC server (what each provider pod runs)
  version    print the version
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from virtrigaud import __version__, errors
from virtrigaud import logging as vlog


def _provider_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("provider", help="run a provider gRPC server")
    p.add_argument("--type", required=True, dest="provider_type", help="libvirt|vsphere|proxmox")
    p.add_argument("--listen", default="0.0.0.0:9443", help="HOST:PORT to serve on")
    p.add_argument("--endpoint", default="", help="hypervisor URI/URL (e.g. qemu:///system)")
    p.add_argument("--credentials-dir", help="mounted Secret: one file per key")
    p.add_argument("--credentials-file", help="JSON object of credential keys")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="provider default (storagePool=..., datastore=...); repeatable",
    )
    p.add_argument("--tls-cert", help="server certificate (PEM)")
    p.add_argument("--tls-key", help="server private key (PEM)")
    p.add_argument("--tls-ca", help="CA for client certificates: enables mutual TLS")
    p.add_argument("--max-tasks", type=int, default=4, help="concurrent background tasks")
    p.add_argument("--grace", type=float, default=30.0, help="shutdown grace for tasks (s)")
    p.add_argument("--log-level", default="info")


def _parse_options(pairs: Sequence[str]) -> dict[str, str]:
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise errors.InvalidArgument(f"--option {pair!r}: expected KEY=VALUE")
        options[key] = value
    return options


def _run_provider(args: argparse.Namespace) -> int:
    from providers.registry import create_driver
    from providers.runtime.config import load_config
    from providers.runtime.server import TLSFiles, run

    vlog.configure(args.log_level)
    if bool(args.tls_cert) != bool(args.tls_key):
        raise errors.InvalidArgument("--tls-cert and --tls-key must be given together")
    if args.tls_ca and not args.tls_cert:
        raise errors.InvalidArgument("--tls-ca (mutual TLS) needs --tls-cert and --tls-key")
    tls = (
        TLSFiles(
            Path(args.tls_cert), Path(args.tls_key), Path(args.tls_ca) if args.tls_ca else None
        )
        if args.tls_cert
        else None
    )
    config = load_config(
        args.endpoint, args.credentials_dir, args.credentials_file, _parse_options(args.option)
    )
    driver = create_driver(args.provider_type, config)
    run(driver, args.listen, tls=tls, max_tasks=args.max_tasks, grace=args.grace)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="virtrigaud", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _provider_parser(sub)
    sub.add_parser("version", help="print the version")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "provider":
            return _run_provider(args)
        print(f"virtrigaud {__version__}")
        return 0
    except errors.VirtrigaudError as exc:
        print(f"virtrigaud: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
