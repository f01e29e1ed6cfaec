"""Test helpers: images with known content in every format, built with the real qemu-img."""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass
from pathlib import Path

from providers.common import qemu_img

MIB = 1024 * 1024
CHUNK = 4 * MIB
# Not a multiple of 4 MiB: the content digest's last chunk is short.
VIRTUAL_SIZE = 24 * MIB + 3 * 512


@dataclass(frozen=True)
class Variant:
    """One way to store the same disk: qemu-img format, options and the file."""

    name: str
    format: str
    subformat: str | None = None
    compress: bool = False


VARIANTS = (
    Variant("raw", "raw"),
    Variant("qcow2", "qcow2"),
    Variant("qcow2-compressed", "qcow2", compress=True),
    Variant("vmdk-sparse", "vmdk", "monolithicSparse"),
    Variant("vmdk-stream", "vmdk", "streamOptimized"),
    Variant("vmdk-flat", "vmdk", "monolithicFlat"),
    Variant("vdi", "vdi"),
    Variant("vpc", "vpc"),
    Variant("vhdx", "vhdx"),
)
VARIANT_NAMES = [v.name for v in VARIANTS]
BY_NAME = {v.name: v for v in VARIANTS}


def pattern(seed: int, size: int, compressible: bool) -> bytes:
    """Deterministic bytes; compressible ones make qcow2 -c/streamOptimized compress."""
    rng = random.Random(seed)
    if not compressible:
        return rng.randbytes(size)
    block = bytes([seed % 251 + 1]) * 3000 + rng.randbytes(96)
    return (block * (size // len(block) + 1))[:size]


# (offset, bytes) written into the raw base; everything else is a hole.
WRITES: tuple[tuple[int, bytes], ...] = (
    (0, pattern(1, MIB, compressible=False)),
    (5 * MIB + 4096, pattern(2, 300 * 1024, compressible=True)),
    (8 * MIB - 1000, pattern(3, 64 * 1024, compressible=False)),  # straddles a chunk edge
    (13 * MIB, pattern(4, 2 * MIB, compressible=True)),
    (17 * MIB, bytes(MIB)),  # allocated zeros: data to the map, zeros to the digest
    (VIRTUAL_SIZE - 3, b"END"),
)


def write_raw(path: Path, size: int, writes: tuple[tuple[int, bytes], ...]) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in writes:
            f.seek(offset)
            f.write(data)


def reference_digest(raw_path: Path, virtual_size: int | None = None) -> str:
    """The content digest definition, computed the plain way over the whole raw file."""
    data = raw_path.read_bytes()
    size = virtual_size if virtual_size is not None else len(data)
    data = data.ljust(size, b"\0")
    outer = hashlib.sha256(size.to_bytes(8, "big"))
    for start in range(0, size, CHUNK):
        outer.update(hashlib.sha256(data[start : start + CHUNK]).digest())
    return outer.hexdigest()


def make_variant(raw: Path, variant: Variant, dest: Path) -> Path:
    if variant.format == "raw":
        write_raw(dest, VIRTUAL_SIZE, WRITES)  # a copy with the same holes
        return dest
    qemu_img.convert(
        raw,
        dest,
        src_format="raw",
        dst_format=variant.format,
        subformat=variant.subformat,
        compress=variant.compress,
    )
    return dest


@dataclass(frozen=True)
class ImageSet:
    base: Path  # the raw original
    paths: dict[str, Path]
    reference: str

    def path(self, name: str) -> Path:
        return self.paths[name]


def random_raw(path: Path, size: int, seed: int = 7) -> Path:
    """A dense raw file of pseudo-random bytes (slow to compress)."""
    rng = random.Random(seed)
    with open(path, "wb") as f:
        for _ in range(size // MIB):
            f.write(rng.randbytes(MIB))
    return path


def listing(path: Path) -> list[str]:
    return sorted(os.listdir(path))
