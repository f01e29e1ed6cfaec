"""``virtrigaud get`` tables, in the ``kubectl get`` style.

Columns are the CRDs' printer columns (NAME first, AGE last); missing values print
empty, ages use kubectl's human durations (``45s``, ``3m20s``, ``5h``, ``12d``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from manager.api import parse_time
from manager.store.base import Obj

RESOURCES = {
    "vmmigrations": "VMMigration",
    "vmmigration": "VMMigration",
    "vmm": "VMMigration",
    "virtualmachines": "VirtualMachine",
    "virtualmachine": "VirtualMachine",
    "vm": "VirtualMachine",
    "vms": "VirtualMachine",
    "providers": "Provider",
    "provider": "Provider",
}


def _pair(big: int, unit: str, small: int, small_unit: str) -> str:
    return f"{big}{unit}{small}{small_unit}" if small else f"{big}{unit}"


def human_duration(seconds: float) -> str:
    """kubectl's ``HumanDuration`` (k8s.io/apimachinery/pkg/util/duration)."""
    total = int(seconds)
    if total < 0:
        return "<invalid>" if total < -1 else "0s"
    minutes, hours, days = total // 60, total // 3600, total // 86400
    years = days // 365
    steps: list[tuple[bool, str]] = [
        (total < 120, f"{total}s"),
        (minutes < 10, _pair(minutes, "m", total % 60, "s")),
        (minutes < 180, f"{minutes}m"),
        (hours < 8, _pair(hours, "h", minutes % 60, "m")),
        (hours < 48, f"{hours}h"),
        (hours < 24 * 8, _pair(days, "d", hours % 24, "h")),
        (days < 365 * 2, f"{days}d"),
        (years < 8, _pair(years, "y", days % 365, "d")),
    ]
    return next((text for matches, text in steps if matches), f"{years}y")


def age(timestamp: str | None, now: datetime | None = None) -> str:
    if not timestamp:
        return "<unknown>"
    current = now or datetime.now(UTC)
    return human_duration((current - parse_time(timestamp)).total_seconds())


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by three spaces (kubectl's layout)."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = []
    for row in [list(headers), *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append("   ".join(cells).rstrip())
    return "\n".join(lines)


def _path(obj: Obj, *keys: str | int) -> Any:
    value: Any = obj
    for key in keys:
        if isinstance(key, int):
            value = value[key] if isinstance(value, list) and len(value) > key else None
        else:
            value = value.get(key) if isinstance(value, dict) else None
        if value is None:
            return None
    return value


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


Column = tuple[str, Callable[[Obj], Any]]

COLUMNS: dict[str, list[Column]] = {
    "VMMigration": [
        ("PHASE", lambda o: _path(o, "status", "phase")),
        ("PROGRESS", lambda o: _path(o, "status", "progress")),
        ("SOURCE", lambda o: _path(o, "spec", "sourceName")),
        ("TARGET", lambda o: _path(o, "spec", "targetName")),
    ],
    "VirtualMachine": [
        ("PROVIDER", lambda o: _path(o, "spec", "providerRef", "name")),
        ("POWER", lambda o: _path(o, "status", "powerState")),
        ("PHASE", lambda o: _path(o, "status", "phase")),
        ("IP", lambda o: _path(o, "status", "ipAddresses", 0)),
    ],
    "Provider": [
        ("TYPE", lambda o: _path(o, "spec", "type")),
        ("ENDPOINT", lambda o: _path(o, "spec", "endpoint")),
        ("READY", lambda o: _path(o, "status", "ready")),
    ],
}


def get_table(
    kind: str, objects: Sequence[Obj], all_namespaces: bool = False, now: datetime | None = None
) -> str:
    columns = COLUMNS[kind]
    headers = ["NAME", *(name for name, _ in columns), "AGE"]
    if all_namespaces:
        headers.insert(0, "NAMESPACE")
    rows = []
    for obj in objects:
        meta = obj["metadata"]
        row = [meta["name"], *(cell(fn(obj)) for _, fn in columns)]
        row.append(age(meta.get("creationTimestamp"), now))
        if all_namespaces:
            row.insert(0, meta.get("namespace") or "default")
        rows.append(row)
    return table(headers, rows)
