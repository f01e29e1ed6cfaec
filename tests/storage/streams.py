"""Deterministic test streams (regenerable from a seed, so a resumed upload can replay)."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Iterator

from storage.base import Reader, Writer

MiB = 1 << 20
# Odd chunk sizes, so part and chunk boundaries never line up by accident.
CHUNK = MiB + 4093
_ZEROS = bytes(CHUNK)


def dense(size: int, seed: int = 1) -> Iterator[bytes]:
    """``size`` pseudo-random bytes (incompressible, different for every seed)."""
    rng = random.Random(seed)
    left = size
    while left:
        n = min(CHUNK, left)
        yield rng.randbytes(n)
        left -= n


def sparse(size: int, seed: int = 2) -> Iterator[bytes]:
    """Mostly zeros: one random chunk in eight, plus a few random bytes in some others."""
    rng = random.Random(seed)
    left = size
    index = 0
    while left:
        n = min(CHUNK, left)
        if index % 8 == 3:
            yield rng.randbytes(n)
        elif index % 5 == 1:
            island = bytearray(n)
            pos = rng.randrange(n)
            island[pos : pos + 64] = rng.randbytes(min(64, n - pos))
            yield bytes(island)
        else:
            yield _ZEROS[:n]
        left -= n
        index += 1


def digest(chunks: Iterable[bytes]) -> tuple[str, int]:
    """(sha256 hex, size) computed by the test itself, independent of the backends."""
    h = hashlib.sha256()
    size = 0
    for chunk in chunks:
        h.update(chunk)
        size += len(chunk)
    return h.hexdigest(), size


def pump(writer: Writer, chunks: Iterable[bytes]) -> tuple[str, int]:
    """Write every chunk; return the test's own (sha256, size) of what was written."""
    h = hashlib.sha256()
    size = 0
    for chunk in chunks:
        h.update(chunk)
        size += len(chunk)
        writer.write(chunk)
    return h.hexdigest(), size


def drain(reader: Reader) -> tuple[str, int]:
    """Read everything; return the test's own (sha256, size) of the bytes received."""
    return digest(reader)


def prefix_of(chunks: Iterable[bytes], limit: int) -> Iterator[bytes]:
    """The first ``limit`` bytes of a stream."""
    left = limit
    for chunk in chunks:
        if left <= 0:
            return
        piece = chunk[:left]
        left -= len(piece)
        yield piece
