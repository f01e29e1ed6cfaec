"""The session's libvirtd for the one-machine tests, and libvirt test labs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.providers.libvirt.helpers import Lab, lab
from tests.servers.libvirtd import LibvirtEnv, session_env


@pytest.fixture(scope="session")
def env(pytestconfig: pytest.Config) -> LibvirtEnv:
    return session_env(pytestconfig)


@pytest.fixture
def lv(env: LibvirtEnv, tmp_path: Path) -> Iterator[Lab]:
    with lab(env, tmp_path / "lab") as created:
        yield created
