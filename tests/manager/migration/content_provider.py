"""The in-memory test provider with content digests and a few test hooks.

``MemoryProvider`` (tests/fakes) moves real bytes but reports no content digest. This
subclass adds what a real provider's pipeline does (FEATURE_CONTENT_DIGEST): the export
reports the content digest of the source disk, the import computes it for the disk it
stored and refuses one that differs from ``expected_content_sha256``. It also counts the
exports per disk and can run a hook before an import reads its object (a test corrupts
the object there).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from providers.common.digest import ContentHasher
from providers.runtime.tasks import TaskContext
from tests.fakes.memory_provider import MemoryProvider
from virtrigaud import errors
from virtrigaud.provider.v1 import provider_pb2 as pb


def content_digest(path: Path) -> str:
    data = path.read_bytes()
    hasher = ContentHasher(len(data))
    hasher.update(data)
    return hasher.hexdigest()


@dataclass
class ContentMemoryProvider(MemoryProvider):
    with_content: bool = True
    exports: list[str] = field(default_factory=list)  # disk ids, one per export run
    before_import: Callable[[pb.ImportDiskRequest], None] | None = None

    def capabilities(self) -> pb.Capabilities:
        caps = super().capabilities()
        if self.with_content:
            caps.features.append(pb.FEATURE_CONTENT_DIGEST)
        return caps

    def export_disk(self, request: pb.ExportDiskRequest, ctx: TaskContext) -> pb.ExportResult:
        self.exports.append(request.disk_id)
        result = super().export_disk(request, ctx)
        if self.with_content:
            disk = next(d for d in self.vms[request.vm_id].disks if d.id == request.disk_id)
            result.content_sha256 = content_digest(Path(disk.path))
        return result

    def import_disk(self, request: pb.ImportDiskRequest, ctx: TaskContext) -> pb.ImportResult:
        if self.before_import is not None:
            self.before_import(request)
        result = super().import_disk(request, ctx)
        if not self.with_content:
            return result
        content = content_digest(Path(result.path))
        expected = request.expected_content_sha256
        if expected and content != expected:
            Path(result.path).unlink()
            del self.volumes[result.disk_id]
            raise errors.ChecksumMismatch(f"content digest {content}, expected {expected}")
        result.content_sha256 = content
        return result
