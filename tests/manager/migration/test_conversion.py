"""Where conversion happens and how Converted records it (no I/O)."""

from __future__ import annotations

import dataclasses

from manager.api import DiskPhase, MigrationPhase
from manager.migration import formats, planner
from manager.migration.model import ExportDisk, ImportDisk, Observations
from tests.manager.migration import flows
from tests.manager.migration.builders import GB, Driver, cond, exported, imported, task, vm
from tests.manager.migration.builders import caps as make_caps
from virtrigaud.provider.v1 import provider_pb2 as pb

QCOW2, RAW, VMDK = pb.DISK_FORMAT_QCOW2, pb.DISK_FORMAT_RAW, pb.DISK_FORMAT_VMDK


def test_choose() -> None:
    src = make_caps(exports=(RAW, QCOW2))
    assert formats.choose(RAW, None, src, make_caps(native=RAW)) == formats.FormatPlan(
        "raw", "raw", "raw", "none"
    )
    assert formats.choose(RAW, None, src, make_caps(imports=(QCOW2,), native=QCOW2)) == (
        formats.FormatPlan("raw", "qcow2", "qcow2", "source")
    )
    assert formats.choose(RAW, "vmdk", make_caps(), make_caps(imports=(VMDK,))) == (
        formats.FormatPlan("raw", "raw", "vmdk", "target")
    )
    assert formats.choose(QCOW2, "vmdk", make_caps(exports=(RAW,)), make_caps(imports=(VMDK,))) == (
        "no conversion path from qcow2 to vmdk: source Provider exports raw, "
        "target Provider imports vmdk"
    )


def _flow(
    source_caps: pb.Capabilities, target_caps: pb.Capabilities, **spec: object
) -> tuple[Driver, Observations, ExportDisk]:
    """Validated and snapshotted with these capabilities; the export submitted."""
    d, obs = flows.validating(vm((("vda", GB),)), **spec)
    obs = dataclasses.replace(obs, source_caps=source_caps, target_caps=target_caps)
    d.step(obs)
    (probe,) = planner.probes(d.mig, obs, d.now)
    plan = d.step(obs, probes={probe.op_id: task("s", 3, snapshot_result={"snapshot_id": "s1"})})
    (export,) = [a for a in plan.actions if isinstance(a, ExportDisk)]
    return d, obs, export


def _ref(ref: str | None) -> str:
    assert ref is not None
    return ref


def test_converted_on_the_source_before_upload() -> None:
    d, obs, export = _flow(
        make_caps(exports=(RAW, QCOW2)), make_caps(imports=(QCOW2, RAW), native=QCOW2)
    )
    assert export.target_format == "qcow2" and export.url.endswith("/vda.qcow2")
    ref = _ref(d.status.disks[0].export_task_ref)
    d.step(obs, {ref: task(ref, stage="converting")})
    assert d.phase() is MigrationPhase.EXPORTING  # conversion on the source is export work
    plan = d.step(obs, {ref: exported(ref, GB)})
    assert cond(d.status, "Converted") == (
        "True",
        "ConvertedOnSource",
        "raw -> qcow2 (vda) converted on the source before upload",
    )
    (imp,) = [a for a in plan.actions if isinstance(a, ImportDisk)]
    assert (imp.source_format, imp.target_format) == ("qcow2", "qcow2")


def test_converted_on_the_target_during_import() -> None:
    d, obs, export = _flow(
        make_caps(exports=(RAW,)),
        make_caps(imports=(VMDK, RAW), native=RAW),
        targetDiskFormat="vmdk",
    )
    assert export.target_format == "raw"
    ref = _ref(d.status.disks[0].export_task_ref)
    plan = d.step(obs, {ref: exported(ref, GB)})
    assert cond(d.status, "Converted") == (
        "False",
        "ConversionPending",
        "raw -> vmdk (vda) will be converted on the target during import",
    )
    (imp,) = [a for a in plan.actions if isinstance(a, ImportDisk)]
    assert (imp.source_format, imp.target_format, imp.volume_name) == (
        "raw",
        "vmdk",
        "migrated-vda.vmdk",
    )
    iref = _ref(d.status.disks[0].import_task_ref)
    d.step(obs, {iref: task(iref, stage="downloading", done=1, total=2)})
    assert d.phase() is MigrationPhase.IMPORTING
    d.step(obs, {iref: task(iref, stage="converting")})
    assert d.phase() is MigrationPhase.CONVERTING
    done = imported(iref, "pool/v", GB)
    done.import_result.format = VMDK
    d.step(obs, {iref: done})
    assert d.phase() is MigrationPhase.CREATING
    assert d.status.disks[0].phase is DiskPhase.IMPORTED
    assert d.status.disks[0].format is not None and d.status.disks[0].format.value == "vmdk"
    assert cond(d.status, "Converted") == (
        "True",
        "ConvertedOnTarget",
        "raw -> vmdk (vda) converted on the target during import",
    )
