"""Loading a provider's start-up configuration (credentials from a mounted Secret)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from providers.runtime.driver import ProviderConfig
from virtrigaud import errors

ALLOWED_HOSTS_ENV = "VIRTRIGAUD_STORAGE_ALLOWED_HOSTS"


def read_secret_dir(path: Path) -> dict[str, str]:
    """A Kubernetes Secret mounted as a volume: one file per key.

    Kubernetes adds ``..data`` symlinks and hidden timestamped dirs; only regular
    visible entries are keys.
    """
    if not path.is_dir():
        raise errors.NotFound(f"credentials directory {path} does not exist")
    values: dict[str, str] = {}
    for entry in sorted(path.iterdir()):
        if entry.name.startswith(".") or not entry.is_file():
            continue
        values[entry.name] = entry.read_text().rstrip("\n")
    return values


def read_secret_file(path: Path) -> dict[str, str]:
    """A JSON object of string keys and values (for one-machine mode)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise errors.InvalidArgument(f"credentials file {path}: {exc}") from exc
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise errors.InvalidArgument(f"credentials file {path}: must be an object of strings")
    return data


def load_config(
    endpoint: str,
    credentials_dir: str | None = None,
    credentials_file: str | None = None,
    options: dict[str, str] | None = None,
) -> ProviderConfig:
    credentials: dict[str, str] = {}
    if credentials_dir:
        credentials.update(read_secret_dir(Path(credentials_dir)))
    if credentials_file:
        credentials.update(read_secret_file(Path(credentials_file)))
    allowed = tuple(
        h.strip() for h in os.environ.get(ALLOWED_HOSTS_ENV, "").split(",") if h.strip()
    )
    return ProviderConfig(
        endpoint=endpoint,
        credentials=credentials,
        options=options or {},
        allowed_storage_hosts=allowed,
    )
