"""``virtrigaud describe``: an object the way ``kubectl describe`` shows a custom
resource (Title Case keys, nested maps indented), plus tables for the per-disk
status, the conditions and the object's Events (Type, Reason, Age, From, Message;
repeated events as ``2m (x3 over 10m)``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from manager.onemachine.views import age, cell, table
from manager.store.base import Event, Obj

_WORD_BREAK = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
INDENT = "  "


def title(key: str) -> str:
    """``intermediateStorageURL`` -> ``Intermediate Storage URL`` (as kubectl does)."""
    if key == "uid":
        return "UID"
    words = _WORD_BREAK.sub(" ", key)
    return words[:1].upper() + words[1:]


def _scalar(value: Any) -> str:
    return cell(value) if value is not None else "<nil>"


def render_map(data: dict[str, Any], depth: int = 0) -> list[str]:
    """Nested ``Key:  value`` lines, values aligned per level."""
    lines: list[str] = []
    pad = INDENT * depth
    width = max((len(title(k)) for k in data), default=0) + 2
    for key in sorted(data):
        value = data[key]
        label = f"{title(key)}:"
        if isinstance(value, dict):
            lines.append(pad + label)
            lines.extend(render_map(value, depth + 1))
        elif isinstance(value, list):
            lines.append(pad + label)
            lines.extend(_render_list(value, depth + 1))
        else:
            lines.append(pad + label.ljust(width + 1) + _scalar(value))
    return lines


def _render_list(items: list[Any], depth: int) -> list[str]:
    lines: list[str] = []
    for item in items:
        if isinstance(item, dict):
            lines.extend(render_map(item, depth))
        else:
            lines.append(INDENT * depth + _scalar(item))
    return lines


def _labels(values: dict[str, str] | None) -> list[str]:
    if not values:
        return ["<none>"]
    return [f"{k}={v}" for k, v in sorted(values.items())]


def _header(obj: Obj) -> list[str]:
    meta = obj["metadata"]
    lines = [
        f"Name:         {meta['name']}",
        f"Namespace:    {meta.get('namespace') or 'default'}",
    ]
    for label, values in (
        ("Labels:", meta.get("labels")),
        ("Annotations:", meta.get("annotations")),
    ):
        first, *rest = _labels(values)
        lines.append(f"{label:<14}{first}")
        lines.extend(" " * 14 + line for line in rest)
    lines += [f"API Version:  {obj['apiVersion']}", f"Kind:         {obj['kind']}", "Metadata:"]
    shown = {
        k: v for k, v in meta.items() if k not in ("name", "namespace", "labels", "annotations")
    }
    lines.extend(render_map(shown, 1))
    return lines


def _disk_table(kind: str, disks: list[dict[str, Any]]) -> list[str]:
    if kind == "VMMigration":
        headers = ["NAME", "PHASE", "BYTES", "TOTAL", "FORMAT", "CHECKSUM", "INTERMEDIATE URL"]
        keys = ["name", "phase", "bytesTransferred", "totalBytes", "format", "checksum"]
        keys.append("intermediateStorageURL")
    else:
        headers = ["NAME", "FORMAT", "SIZE BYTES", "PATH"]
        keys = ["name", "format", "sizeBytes", "path"]
    rows = [[cell(disk.get(key)) for key in keys] for disk in disks]
    return _indented(table(headers, rows))


def _indented(text: str) -> list[str]:
    return [INDENT + line for line in text.splitlines()]


def _conditions(conditions: list[dict[str, Any]], now: datetime) -> list[str]:
    if not conditions:
        return ["Conditions:  <none>"]
    rows = [
        [
            cell(c.get("type")),
            cell(c.get("status")),
            cell(c.get("reason")),
            age(c.get("lastTransitionTime"), now),
            cell(c.get("message")),
        ]
        for c in conditions
    ]
    return ["Conditions:", *_indented(table(["Type", "Status", "Reason", "Age", "Message"], rows))]


def event_age(event: Event, now: datetime) -> str:
    last = age(event.last_timestamp, now)
    if event.count > 1:
        return f"{last} (x{event.count} over {age(event.first_timestamp, now)})"
    return last


def _events(obj: Obj, events: Sequence[Event], now: datetime) -> list[str]:
    if not events:
        return ["Events:  <none>"]
    source = f"{obj['kind'].lower()}-controller"
    rows = [[e.type, e.reason, event_age(e, now), source, e.message] for e in events]
    headers = ["Type", "Reason", "Age", "From", "Message"]
    underline = ["----", "------", "----", "----", "-------"]  # kubectl's, Age included
    lines = table(headers, [underline, *rows]).splitlines()
    return ["Events:", *(INDENT + line for line in lines)]


def describe(obj: Obj, events: Sequence[Event], now: datetime | None = None) -> str:
    current = now or datetime.now(UTC)
    lines = _header(obj)
    spec = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata", "status")}
    if spec:
        for key, value in sorted(spec.items()):
            if isinstance(value, dict):
                lines.append(f"{title(key)}:")
                lines.extend(render_map(value, 1))
            else:
                lines.extend(render_map({key: value}))
    status = dict(obj.get("status") or {})
    disks = status.pop("disks", None) or []
    conditions = status.pop("conditions", None) or []
    lines.append("Status:" if status else "Status:  <none>")
    lines.extend(render_map(status, 1))
    if disks:
        lines.append("Disks:")
        lines.extend(_disk_table(obj["kind"], disks))
    lines.extend(_conditions(conditions, current))
    lines.extend(_events(obj, events, current))
    return "\n".join(lines)
