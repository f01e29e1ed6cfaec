"""structlog configuration shared by every virtrigaud process.

Logs are JSON lines on stderr (key-value, one event per line). Values under keys that
look like secrets are replaced before rendering, so a credentials map passed to a log
call by mistake never reaches the output.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

SECRET_KEY_PARTS = ("secret", "password", "token", "credential", "accesskey", "authorization")
REDACTED = "***"


def _is_secret_key(key: str) -> bool:
    lowered = key.lower().replace("_", "").replace("-", "")
    return any(part in lowered for part in SECRET_KEY_PARTS)


def redact(value: Any) -> Any:
    """A copy of ``value`` with every secret-looking mapping entry replaced."""
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if isinstance(k, str) and _is_secret_key(k) else redact(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(redact(v) for v in value)
    return value


def _redact_processor(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        if _is_secret_key(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = redact(event_dict[key])
    return event_dict


def configure(level: str = "info", json: bool = True) -> None:
    """Configure structlog (and the stdlib root logger it renders through)."""
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    logging.basicConfig(stream=sys.stderr, level=numeric, format="%(message)s", force=True)
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact_processor,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> Any:
    """A lazy structlog logger carrying ``component=name``.

    Lazy on purpose: module-level loggers are created at import time, before
    ``configure`` runs, and must still use the configuration made later.
    """
    return structlog.get_logger(component=name)
