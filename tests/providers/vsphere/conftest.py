"""The session's vcsim, a per-test lab on it, and a provider served over gRPC."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from manager.providerclient import ProviderClient
from providers.vsphere.driver import VSphereDriver, create
from tests.providers.vsphere.helpers import Lab, config, lab, serve
from tests.servers.vcsim import Vcsim, session_vcsim


@pytest.fixture(scope="session")
def vcsim(pytestconfig: pytest.Config) -> Vcsim:
    return session_vcsim(pytestconfig)


@pytest.fixture
def vs(vcsim: Vcsim) -> Iterator[Lab]:
    with lab(vcsim) as created:
        yield created


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    """The provider's scratch directory; empty again when the test ends."""
    path = tmp_path / "scratch"
    path.mkdir()
    yield path
    assert list(path.iterdir()) == [], "the provider left scratch files behind"


@pytest.fixture
def driver(vcsim: Vcsim, scratch: Path) -> Iterator[VSphereDriver]:
    created = create(config(vcsim, scratchDir=str(scratch), datastore="LocalDS_0"))
    yield created
    created.close()


@pytest.fixture
def provider(driver: VSphereDriver) -> Iterator[ProviderClient]:
    with serve(driver) as client:
        yield client
