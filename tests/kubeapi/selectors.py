"""Label and field selectors as the API server parses them (the subset we serve).

Label selectors: ``k=v``, ``k==v``, ``k!=v``, ``k`` (exists), ``!k`` (absent),
``k in (a,b)``, ``k notin (a,b)``, joined by commas. Field selectors: ``a.b=v``,
``a.b==v``, ``a.b!=v`` on dotted paths of the object (the real server allows only a
few fields per resource; we allow any path).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

Predicate = Callable[[Mapping[str, Any]], bool]

_SET = re.compile(r"^\s*([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_EQ = re.compile(r"^\s*(!?)\s*([\w./-]+)\s*(?:(==|=|!=)\s*([\w./-]*))?\s*$")


class SelectorError(ValueError):
    """An unparsable selector (the server answers 400 BadRequest)."""


def _terms(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    terms, depth, current = [], 0, ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        terms.append(current)
    return [t for t in terms if t.strip()]


def _label_term(term: str) -> Predicate:
    found = _SET.match(term)
    if found:
        key, op, values_text = found.groups()
        values = {v.strip() for v in values_text.split(",") if v.strip()}
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    found = _EQ.match(term)
    if not found:
        raise SelectorError(f"unable to parse requirement: {term!r}")
    bang, key, op, value = found.groups()
    if bang and op:
        raise SelectorError(f"unable to parse requirement: {term!r}")
    if bang:
        return lambda labels: key not in labels
    if op is None:
        return lambda labels: key in labels
    if op == "!=":
        return lambda labels: labels.get(key) != value
    return lambda labels: labels.get(key) == value


def label_selector(text: str | None) -> Predicate:
    """A predicate over a whole object (its ``metadata.labels``)."""
    if not text:
        return lambda _obj: True
    checks = [_label_term(term) for term in _terms(text)]

    def matches(obj: Mapping[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(check(labels) for check in checks)

    return matches


def _path(obj: Mapping[str, Any], dotted: str) -> str:
    value: Any = obj
    for part in dotted.split("."):
        if not isinstance(value, Mapping):
            return ""
        value = value.get(part)
    return "" if value is None else str(value)


def _field_check(path: str, negate: bool, value: str) -> Predicate:
    return lambda obj: (_path(obj, path) == value) != negate


def field_selector(text: str | None) -> Predicate:
    if not text:
        return lambda _obj: True
    checks: list[Predicate] = []
    for term in _terms(text):
        found = re.match(r"^\s*([\w.-]+)\s*(==|=|!=)\s*(.*?)\s*$", term)
        if not found:
            raise SelectorError(f"invalid field selector: {term!r}")
        path, op, value = found.groups()
        checks.append(_field_check(path, op == "!=", value))
    return lambda obj: all(check(obj) for check in checks)
