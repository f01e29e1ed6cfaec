"""Where format conversion happens, and how the Converted condition says so.

The desired format of a migrated disk is ``spec.targetDiskFormat``, else the target
provider's native format (so the import stores the object as it is, the pipeline's
cheapest path), else the source disk's own format. Then, per disk:

* desired == source format: the object is exported as is and imported as is
  (Converted: ``NoConversionNeeded``);
* the source provider can export the desired format: the source converts before the
  upload (the export task's "converting" stage, reported in the Exporting phase), the
  object is already in the desired format (Converted: ``ConvertedOnSource``, e.g.
  "raw -> qcow2 converted on the source before upload (vda, vdb)");
* otherwise the object keeps the source format and the target converts during the import
  (the import task's "converting" stage is the Converting phase; Converted is False
  ``ConversionPending`` until the imports finish, then ``ConvertedOnTarget``).

A target that cannot store the desired format, or no path between the two providers,
fails validation with the exact formats each side supports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from manager.api import DiskMigrationStatus
from manager.migration import naming
from virtrigaud.provider.v1 import provider_pb2 as pb

Where = Literal["none", "source", "target"]


@dataclass(frozen=True)
class FormatPlan:
    source: str  # the source disk's format ("unknown" when DescribeVM does not say)
    object: str  # the object in intermediate storage
    target: str  # the imported disk
    where: Where


def _names(values: Sequence[int]) -> list[str]:
    return sorted({name for v in values if (name := naming.format_name(v))})


def choose(
    source_format: int, desired: str | None, source: pb.Capabilities, target: pb.Capabilities
) -> FormatPlan | str:
    """The format plan of one disk, or a message saying why there is none."""
    exports, imports = _names(source.export_formats), _names(target.import_formats)
    src = naming.format_name(source_format) or "unknown"
    want = desired or naming.format_name(target.native_format) or src
    if want == "unknown" or naming.api_format(want) is None:
        return f"cannot choose a target disk format for a {src} disk; set spec.targetDiskFormat"
    if imports and want not in imports:
        return f"target Provider cannot store {want} disks (it imports: {', '.join(imports)})"
    if want == src and (not exports or src in exports):
        return FormatPlan(src, src, want, "none")
    if not exports or want in exports:
        return FormatPlan(src, want, want, "source")
    if src in exports:
        return FormatPlan(src, src, want, "target")
    return (
        f"no conversion path from {src} to {want}: source Provider exports "
        f"{', '.join(exports) or 'nothing'}, target Provider imports {', '.join(imports)}"
    )


def where(source: str, disk: DiskMigrationStatus) -> Where:
    obj = naming.url_format(disk.intermediate_storage_url or "")
    target = disk.format.value if disk.format else obj
    if obj != target:
        return "target"
    return "source" if source not in (obj, "unknown") else "none"


def _groups(pairs: Sequence[tuple[str, str, str]]) -> str:
    grouped: dict[tuple[str, str], list[str]] = {}
    for name, src, dst in pairs:
        grouped.setdefault((src, dst), []).append(name)
    return "; ".join(
        f"{src} -> {dst} ({', '.join(names)})" for (src, dst), names in grouped.items()
    )


def converted_condition(
    vm: pb.VM, disks: Sequence[DiskMigrationStatus], imported: bool
) -> tuple[bool, str, str]:
    """(status, reason, message) of the Converted condition."""
    # The format the export read wins over DescribeVM's, which during the migration
    # snapshot may describe the snapshot's overlay (a qcow2 on top of a raw disk).
    fmt = {d.id: naming.format_name(d.format) or "unknown" for d in vm.disks}
    plans = [
        (disk, disk.source_format or fmt.get(disk.id or disk.name, "unknown")) for disk in disks
    ]
    on_target = [
        (
            d.name,
            naming.url_format(d.intermediate_storage_url or ""),
            d.format.value if d.format else "",
        )
        for d, src in plans
        if where(src, d) == "target"
    ]
    on_source = [
        (d.name, src, naming.url_format(d.intermediate_storage_url or ""))
        for d, src in plans
        if where(src, d) == "source"
    ]
    parts: list[str] = []
    if on_source:
        parts.append(f"{_groups(on_source)} converted on the source before upload")
    if on_target:
        verb = "converted" if imported else "will be converted"
        parts.append(f"{_groups(on_target)} {verb} on the target during import")
    if not parts:
        kinds = ", ".join(
            sorted({naming.url_format(d.intermediate_storage_url or "") for d in disks})
        )
        return True, "NoConversionNeeded", f"disks are {kinds} on the source and on the target"
    if on_target and not imported:
        return False, "ConversionPending", "; ".join(parts)
    reason = "ConvertedOnTarget" if on_target else "ConvertedOnSource"
    return True, reason, "; ".join(parts)
