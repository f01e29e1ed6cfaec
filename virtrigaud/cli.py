"""The ``virtrigaud`` command line.

Subcommands:
  provider   run one provider gRPC server (what each provider pod runs)
  run        one-machine mode: load manifests, start providers, reconcile until done
  get        list VMMigrations, VirtualMachines or Providers of the embedded store
  describe   show one object with its disks, conditions and events
  delete     delete a VMMigration and run its finalizer's cleanup
  inventory  list the VMs a provider sees (or print manifests adopting them)
  manager    the controllers against a Kubernetes cluster (leader election, probes)
  version    print the version
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from manager.kube.cli import add_parser as add_manager_parser
from manager.kube.cli import run as run_manager
from virtrigaud import __version__, errors
from virtrigaud import logging as vlog

if TYPE_CHECKING:
    from manager.store.sqlite import SQLiteStore


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
    p.add_argument(
        "--parent-pid", type=int, help="shut down when this process is no longer the parent"
    )
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
    run(
        driver,
        args.listen,
        tls=tls,
        max_tasks=args.max_tasks,
        grace=args.grace,
        parent_pid=args.parent_pid,
    )
    return 0


DEFAULT_STORE = Path(".virtrigaud") / "state.db"
RESOURCE_NAMES = ("vmmigrations", "virtualmachines", "providers")
RESOURCE_ALIASES = ("vmmigration", "vmm", "virtualmachine", "vm", "vms", "provider")


def _store_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--store", type=Path, default=DEFAULT_STORE, help=f"state file (default {DEFAULT_STORE})"
    )


def _one_machine_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = sub.add_parser("run", help="one-machine mode: reconcile the manifests of -f")
    run.add_argument("-f", "--filename", required=True, type=Path, help="manifest file or dir")
    _store_option(run)
    run.add_argument("--timeout", type=float, help="give up after S seconds (exit 1)")
    run.add_argument("--log-level", default="warning", help="manager log level (stderr)")
    get = sub.add_parser("get", help="list objects of the embedded store")
    get.add_argument("resource", choices=RESOURCE_NAMES + RESOURCE_ALIASES)
    get.add_argument("-n", "--namespace", default="default")
    get.add_argument("-A", "--all-namespaces", action="store_true")
    _store_option(get)
    describe = sub.add_parser("describe", help="show one object in detail")
    describe.add_argument("resource", choices=RESOURCE_NAMES + RESOURCE_ALIASES)
    describe.add_argument("name")
    describe.add_argument("-n", "--namespace", default="default")
    _store_option(describe)
    delete = sub.add_parser(
        "delete", help="delete a VMMigration and run its cleanup (providers + controllers)"
    )
    delete.add_argument("resource", choices=("vmmigration", "vmmigrations", "vmm"))
    delete.add_argument("name")
    delete.add_argument("-n", "--namespace", default="default")
    delete.add_argument(
        "--force", action="store_true", help="remove the finalizer without cleaning up"
    )
    delete.add_argument("--timeout", type=float, help="give up after S seconds (exit 1)")
    delete.add_argument("--log-level", default="warning", help="manager log level (stderr)")
    _store_option(delete)
    inventory = sub.add_parser("inventory", help="list the VMs a provider sees")
    inventory.add_argument("provider", help="Provider name")
    inventory.add_argument("-n", "--namespace", default="default")
    inventory.add_argument("-f", "--filename", type=Path, help="manifests with the Provider")
    _store_option(inventory)
    inventory.add_argument("-o", "--output", choices=("table", "yaml"), default="table")


def _run_one_machine(args: argparse.Namespace) -> int:
    from manager.onemachine.runner import RunConfig, run

    vlog.configure(args.log_level)
    return run(RunConfig(path=args.filename, store_path=args.store, timeout=args.timeout))


def _delete(args: argparse.Namespace) -> int:
    from manager.onemachine.runner import RunConfig, delete
    from manager.store.base import ObjectKey

    vlog.configure(args.log_level)
    if not args.store.exists():
        raise errors.NotFound(f"no state store at {args.store} (run `virtrigaud run -f DIR` first)")
    config = RunConfig(path=args.store.parent, store_path=args.store, timeout=args.timeout)
    key = ObjectKey("VMMigration", args.namespace, args.name)
    return delete(config, key, force=args.force)


def _open_store(path: Path) -> SQLiteStore:
    from manager.store.sqlite import SQLiteStore

    if not path.exists():
        raise errors.NotFound(f"no state store at {path} (run `virtrigaud run -f DIR` first)")
    return SQLiteStore(path)


def _get(args: argparse.Namespace) -> int:
    from manager.onemachine.views import RESOURCES, get_table

    kind = RESOURCES[args.resource]
    with _open_store(args.store) as store:
        found = store.list(kind, None if args.all_namespaces else args.namespace)
    if not found:
        where = "" if args.all_namespaces else f" in {args.namespace} namespace"
        print(f"No resources found{where}.", file=sys.stderr)
        return 0
    print(get_table(kind, found, all_namespaces=args.all_namespaces))
    return 0


def _describe(args: argparse.Namespace) -> int:
    from manager.onemachine.describe import describe
    from manager.onemachine.views import RESOURCES

    kind = RESOURCES[args.resource]
    with _open_store(args.store) as store:
        obj = store.get(kind, args.namespace, args.name)
        events = store.events_for(kind, args.namespace, args.name)
    print(describe(obj, events))
    return 0


def _inventory(args: argparse.Namespace) -> int:
    from manager.onemachine.inventory import InventoryConfig, inventory

    vlog.configure("warning")
    return inventory(
        InventoryConfig(
            provider=args.provider,
            namespace=args.namespace,
            out=sys.stdout,
            path=args.filename,
            store_path=None if args.filename else args.store,
            output=args.output,
        )
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="virtrigaud", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _provider_parser(sub)
    _one_machine_parsers(sub)
    add_manager_parser(sub)
    sub.add_parser("version", help="print the version")
    return parser


COMMANDS = {
    "provider": _run_provider,
    "run": _run_one_machine,
    "get": _get,
    "describe": _describe,
    "delete": _delete,
    "inventory": _inventory,
    "manager": run_manager,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        command = COMMANDS.get(args.command)
        if command is not None:
            return command(args)
        print(f"virtrigaud {__version__}")
        return 0
    except errors.VirtrigaudError as exc:
        print(f"virtrigaud: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
