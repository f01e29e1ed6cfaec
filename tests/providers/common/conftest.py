"""Fixtures: one set of images with known content in every format (session-wide)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import (
    VARIANTS,
    VIRTUAL_SIZE,
    WRITES,
    ImageSet,
    make_variant,
    reference_digest,
    write_raw,
)


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> ImageSet:
    root = tmp_path_factory.mktemp("images")
    base = root / "base.raw"
    write_raw(base, VIRTUAL_SIZE, WRITES)
    paths = {v.name: make_variant(base, v, root / f"disk-{v.name}.{v.format}") for v in VARIANTS}
    return ImageSet(base, paths, reference_digest(base))


@pytest.fixture
def scratch_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "scratch"
    path.mkdir()
    yield path
