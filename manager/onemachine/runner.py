"""``virtrigaud run -f DIR``: load manifests, start providers, reconcile until done.

Exit codes: 0 when every VMMigration is Ready (with none: every VirtualMachine; with
neither: every Provider), 1 when one failed or ``--timeout`` passed, 130 on Ctrl-C /
SIGTERM (the store keeps every status; running again resumes). Manifest errors are
raised (``errors.ValidationError`` names the file and field) before the store is
touched.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TextIO

from manager.connections import ProviderConnections
from manager.migration.model import FORCE_DELETE_ANNOTATION
from manager.onemachine import manifests, wiring
from manager.onemachine.launcher import ProviderLauncher
from manager.onemachine.progress import Progress
from manager.onemachine.views import get_table
from manager.store.base import Obj, ObjectKey, ObjectStore
from manager.store.objects import now_text
from manager.store.sqlite import SQLiteStore
from virtrigaud import errors

EXIT_OK = 0
EXIT_FAILED = 1
# Every migration is Ready, but the cleanup of at least one gave up (CleanupFailed):
# the VMs moved, yet intermediate objects or a snapshot were left behind.
EXIT_CLEANUP_INCOMPLETE = 3
EXIT_INTERRUPTED = 130
TERMINAL_MIGRATION = ("Ready", "Failed")
TERMINAL_VM = ("Ready", "Failed")


@dataclass
class RunConfig:
    path: Path
    store_path: Path
    timeout: float | None = None
    out: TextIO = field(default_factory=lambda: sys.stdout)
    tty: bool | None = None
    poll: float = 0.5
    with_migrations: bool = True


def run(config: RunConfig) -> int:
    loaded = manifests.read_manifests(config.path)  # validate everything first
    store = SQLiteStore(config.store_path)
    try:
        return _run(config, store, loaded)
    finally:
        store.close()


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _say(config: RunConfig, text: str) -> None:
    config.out.write(text + "\n")
    config.out.flush()


def _run(config: RunConfig, store: SQLiteStore, loaded: list[Obj]) -> int:
    applied = manifests.apply(store, loaded)
    _say(
        config,
        f"applied {len(loaded)} objects from {config.path}: {len(applied.created)} created, "
        f"{len(applied.updated)} updated, {len(applied.unchanged)} unchanged "
        f"(store {config.store_path})",
    )

    def verdict(found: list[Obj], vms: list[Obj], failed: dict[ObjectKey, str], at: str) -> Code:
        return settled(store, found, vms, failed, at)

    return _drive(config, store, verdict)


# (migrations, virtual machines, providers that failed to start, start time) -> exit code,
# or None while work remains
Code = int | None
Verdict = Callable[[list[Obj], list[Obj], dict[ObjectKey, str], str], Code]


def delete(config: RunConfig, key: ObjectKey, *, force: bool = False) -> int:
    """``virtrigaud delete vmmigration NAME``: mark it deleted, then run the providers
    and controllers until its finalizer has cleaned up (intermediate objects, snapshot,
    imported disks, a half-created target VM) and it is gone. ``force`` sets the
    force-delete annotation first (the finalizer is removed without cleanup)."""
    store = SQLiteStore(config.store_path)
    try:
        obj = store.get(key.kind, key.namespace, key.name)
        if force:
            obj["metadata"].setdefault("annotations", {})[FORCE_DELETE_ANNOTATION] = "true"
            store.update(obj)
        store.delete(key.kind, key.namespace, key.name)

        def verdict(
            found: list[Obj], vms: list[Obj], failed: dict[ObjectKey, str], at: str
        ) -> Code:
            return EXIT_OK if all(ObjectKey.of(o) != key for o in found) else None

        code = _drive(config, store, verdict, summary=False)
        events = store.events_for(key.kind, key.namespace, key.name)
        last = next(
            (e for e in reversed(events) if e.reason in ("CleanupCompleted", "ForceDeleted")), None
        )
        if code == EXIT_OK:
            _say(config, f"{key.kind.lower()} {key.namespace}/{key.name} deleted")
            if last is not None:
                _say(config, f"  {last.reason}: {last.message}")
        return code
    finally:
        store.close()


def _drive(config: RunConfig, store: SQLiteStore, verdict: Verdict, *, summary: bool = True) -> int:
    """Start the providers and controllers and wait until ``verdict`` gives a code."""
    stop = threading.Event()
    started = now_text()
    with _stop_on_signals(stop), ProviderLauncher(store, config.store_path.parent) as launcher:
        launcher.start_all()
        for key, message in launcher.failed.items():
            _say(config, f"provider {key.namespace}/{key.name} failed to start: {message}")
        connections = ProviderConnections()
        wired = wiring.build(store, connections, with_migrations=config.with_migrations)
        if not wired.migrations:
            _say(config, f"note: {wired.note}; VMMigrations are not reconciled in this run")
        wired.manager.start()
        try:
            code = _wait(
                config,
                store,
                stop=stop,
                failed=launcher.failed,
                started=started,
                migrations=wired.migrations,
                verdict=verdict,
                summary=summary,
            )
        finally:
            wired.manager.stop()
            connections.close()
    if code == EXIT_INTERRUPTED:
        _say(config, f"interrupted; state kept in {config.store_path} (run again to resume)")
    return code


def _wait(
    config: RunConfig,
    store: ObjectStore,
    *,
    stop: threading.Event,
    failed: dict[ObjectKey, str],
    started: str,
    migrations: bool,
    verdict: Verdict,
    summary: bool,
) -> int:
    tty = config.out.isatty() if config.tty is None else config.tty
    progress = Progress(config.out, tty)
    deadline = None if config.timeout is None else time.monotonic() + config.timeout
    while not stop.is_set():
        found = store.list("VMMigration") if migrations else []
        vms = store.list("VirtualMachine")
        progress.update(found, vms)
        code = verdict(found, vms, failed, started)
        if code is not None:
            if summary:
                _summary(config, found or vms, store)
            return code
        if deadline is not None and time.monotonic() > deadline:
            _say(config, f"timed out after {config.timeout:.0f}s")
            _summary(config, found or vms)
            return EXIT_FAILED
        stop.wait(config.poll)
    return EXIT_INTERRUPTED


def _summary(config: RunConfig, objs: Sequence[Obj], store: ObjectStore | None = None) -> None:
    if not objs:
        return
    _say(config, get_table(objs[0]["kind"], objs, all_namespaces=True))
    if store is None or objs[0]["kind"] != "VMMigration":
        return
    for migration in objs:
        spec = migration.get("spec") or {}
        namespace = spec.get("targetNamespace") or spec.get("sourceNamespace") or "default"
        try:
            target: Obj | None = store.get("VirtualMachine", namespace, spec.get("targetName", ""))
        except errors.NotFound:
            target = None
        _say(config, "\n".join(Progress.summary(migration, target)))


def _current(obj: Obj) -> bool:
    observed = (obj.get("status") or {}).get("observedGeneration")
    return observed is None or observed == obj["metadata"].get("generation")


def _phase(obj: Obj) -> str:
    return str((obj.get("status") or {}).get("phase") or "")


def _provider_key(vm: Obj) -> ObjectKey:
    ref = (vm.get("spec") or {}).get("providerRef") or {}
    namespace = ref.get("namespace") or vm["metadata"].get("namespace") or "default"
    return ObjectKey("Provider", namespace, str(ref.get("name")))


def settled(
    store: ObjectStore,
    migrations: Sequence[Obj],
    vms: Sequence[Obj],
    failed: dict[ObjectKey, str],
    started: str,
) -> int | None:
    """The exit code once everything is finished, None while work remains: every
    VMMigration Ready (and cleaned up) or Failed; with none, every VirtualMachine
    reconciled (a VM whose Provider failed to start or does not exist counts as
    failed); with neither, every Provider health-checked since ``started``."""
    if migrations:
        return _migrations_settled(migrations)
    if vms:
        known = {ObjectKey.of(p) for p in store.list("Provider")}
        return _vms_settled(vms, failed, known)
    return _providers_settled(store.list("Provider"), failed, started)


def _verdict(ok: bool) -> int:
    return EXIT_OK if ok else EXIT_FAILED


def _cleanup_settled(migration: Obj) -> bool:
    """Cleanup runs after Ready: wait for its outcome (done, or given up on) so that a
    run never exits with intermediate objects or a snapshot still being deleted."""
    if _phase(migration) != "Ready":
        return True
    for cond in (migration.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "CleanedUp":
            return bool(cond.get("status") == "True" or cond.get("reason") == "CleanupFailed")
    return False


def _migrations_settled(migrations: Sequence[Obj]) -> int | None:
    if not all(
        _phase(m) in TERMINAL_MIGRATION and _current(m) and _cleanup_settled(m) for m in migrations
    ):
        return None
    if not all(_phase(m) == "Ready" for m in migrations):
        return EXIT_FAILED
    if any(_cleanup_failed(m) for m in migrations):
        return EXIT_CLEANUP_INCOMPLETE
    return EXIT_OK


def _cleanup_failed(migration: Obj) -> bool:
    for cond in (migration.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "CleanedUp":
            return bool(cond.get("status") != "True" and cond.get("reason") == "CleanupFailed")
    return False


def _vms_settled(
    vms: Sequence[Obj], failed: dict[ObjectKey, str], known: set[ObjectKey]
) -> int | None:
    ok = True
    for vm in vms:
        status = vm.get("status") or {}
        provider = _provider_key(vm)
        if provider in failed or provider not in known:
            ok = False  # its provider did not start or does not exist: it cannot progress
            continue
        reconciled = status.get("observedGeneration") is not None and _current(vm)
        if vm["metadata"].get("deletionTimestamp") or not reconciled:
            return None
        if _phase(vm) not in TERMINAL_VM:
            return None
        ok = ok and _phase(vm) == "Ready"
    return _verdict(ok)


def _providers_settled(
    providers: Sequence[Obj], failed: dict[ObjectKey, str], started: str
) -> int | None:
    ok = True
    for provider in providers:
        status = provider.get("status") or {}
        if ObjectKey.of(provider) in failed:
            ok = False
        elif str(status.get("lastHealthCheck") or "") < started:
            return None
        else:
            ok = ok and bool(status.get("ready"))
    return _verdict(ok)
