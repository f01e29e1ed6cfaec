"""What a provider's Validate reports: one named check each, and the response."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from virtrigaud.provider.v1 import provider_pb2 as pb


@dataclass(frozen=True)
class Check:
    name: str  # "connection", "storage:<name>", "network:<name>", ...
    ok: bool
    message: str


def response(results: Iterable[Check]) -> pb.ValidateResponse:
    checks = [pb.ValidationCheck(name=c.name, ok=c.ok, message=c.message) for c in results]
    return pb.ValidateResponse(ok=all(c.ok for c in checks), checks=checks)
