"""Validate's intermediate-storage check: write a small object, read it back, delete it.

It proves what a migration needs from the storage before anything else happens (before
the source is snapshotted): the endpoint is reachable from this provider, the
credentials are accepted, the bucket / folder / directory exists and may be written.
The check's message starts with the error code name (``UNAUTHENTICATED: ...``) so the
manager can tell a refusal (fails the migration) from an outage (waited for).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from providers.common import transfer
from providers.common.checks import Check
from virtrigaud import errors
from virtrigaud.provider.v1 import provider_pb2 as pb

NAME = "intermediate-storage"
PROBE = b"virtrigaud intermediate storage probe\n"
PROBE_SHA256 = hashlib.sha256(PROBE).hexdigest()


def probe(location: pb.StorageLocation, allowed_hosts: Iterable[str] = ()) -> Check:
    try:
        backend, key = transfer.open_location(location, allowed_hosts)
        with backend:
            with backend.open_writer(key) as writer:
                writer.write(PROBE)
                writer.commit()
            try:
                with backend.open_reader(key, expected_sha256=PROBE_SHA256) as reader:
                    got = reader.read_all()
            finally:
                backend.delete(key)
    except errors.VirtrigaudError as exc:
        code = errors.error_code_name(exc.code)
        return Check(NAME, False, f"{code}: {location.url}: {exc.message}")
    if got != PROBE:
        return Check(NAME, False, f"CHECKSUM_MISMATCH: {location.url} read back other bytes")
    return Check(NAME, True, f"wrote, read back and deleted {location.url}")
