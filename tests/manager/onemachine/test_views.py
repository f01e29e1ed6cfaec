"""`virtrigaud get` / `describe` output against a store filled by the test."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from manager.api import format_time
from manager.onemachine.views import human_duration
from manager.store.sqlite import SQLiteStore
from tests.manager.store import factory
from virtrigaud import cli


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (-5, "<invalid>"),
        (-1, "0s"),
        (0, "0s"),
        (119, "119s"),
        (120, "2m"),
        (200, "3m20s"),
        (600, "10m"),
        (179 * 60 + 59, "179m"),
        (3 * 3600 + 60, "3h1m"),
        (8 * 3600, "8h"),
        (47 * 3600, "47h"),
        (48 * 3600, "2d"),
        (50 * 3600, "2d2h"),
        (8 * 86400, "8d"),
        (729 * 86400, "729d"),
        (730 * 86400, "2y"),
        (800 * 86400, "2y70d"),
        (9 * 365 * 86400, "9y"),
    ],
)
def test_ages_read_like_kubectl(seconds: int, text: str) -> None:
    assert human_duration(seconds) == text


def _ago(seconds: int) -> str:
    return format_time(datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=seconds))


@pytest.fixture
def filled(tmp_path: Path) -> Path:
    path = tmp_path / "state.db"
    with SQLiteStore(path) as store:
        store.create(factory.provider("lv"))
        store.create(factory.provider("other", "prod"))
        migration = store.create(factory.migration("web-move", source="web"))
        store.create(factory.migration("db-move", source="db"))
        store.create(factory.vm("web", provider_name="lv", vmId="uuid-1"))
        migration = store.update_status(
            {
                **migration,
                "status": {
                    "phase": "Transferring",
                    "progress": 45,
                    "bytesTransferred": 4831838208,
                    "intermediateStorageURL": "nfs:///srv/nfs/web-move/vda.qcow2",
                    "disks": [
                        {
                            "name": "vda",
                            "phase": "Exporting",
                            "bytesTransferred": 4831838208,
                            "totalBytes": 10737418240,
                            "format": "qcow2",
                        },
                        {"name": "vdb", "phase": "Pending", "totalBytes": 1073741824},
                    ],
                    "conditions": [
                        {
                            "type": "Validated",
                            "status": "True",
                            "reason": "ValidationSuccessful",
                            "message": "Source and target validated successfully",
                            "lastTransitionTime": _ago(300),
                        },
                        {
                            "type": "Transferring",
                            "status": "True",
                            "reason": "UploadInProgress",
                            "message": "Uploading disk (45% complete, 4.5GB/10GB, ETA: 5m)",
                            "lastTransitionTime": _ago(30),
                        },
                    ],
                },
            }
        )
        store.emit_event(migration, "Normal", "ValidationSuccessful", "Source VM validated")
        for _ in range(3):
            store.emit_event(migration, "Normal", "TransferProgress", "Upload progress: 50%")
        store.emit_event(migration, "Warning", "RetryScheduled", "retry scheduled in 5m")
    return path


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_get_vmmigrations_prints_the_printer_columns(
    filled: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(capsys, "get", "vmmigrations", "--store", str(filled))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "PHASE", "PROGRESS", "SOURCE", "TARGET", "AGE"]
    assert lines[1].split()[:2] == ["db-move", "db"]  # no status yet: empty columns
    assert lines[2].split()[:5] == ["web-move", "Transferring", "45", "web", "web-migrated"]
    assert lines[2].split()[5].endswith("s")
    assert lines[0].index("PHASE") == lines[2].index("Transferring")  # aligned columns


def test_get_other_kinds_and_namespaces(filled: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "get", "providers", "-A", "--store", str(filled))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAMESPACE", "NAME", "TYPE", "ENDPOINT", "READY", "AGE"]
    assert [line.split()[:2] for line in lines[1:]] == [["default", "lv"], ["prod", "other"]]
    code, out, _ = run_cli(capsys, "get", "vm", "--store", str(filled))
    assert out.splitlines()[0].split() == ["NAME", "PROVIDER", "POWER", "PHASE", "IP", "AGE"]
    assert out.splitlines()[1].split()[:2] == ["web", "lv"]
    code, out, err = run_cli(capsys, "get", "vmmigrations", "-n", "empty", "--store", str(filled))
    assert (code, out) == (0, "")
    assert "No resources found in empty namespace." in err


def test_describe_vmmigration_reads_like_kubectl(
    filled: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(capsys, "describe", "vmmigration", "web-move", "--store", str(filled))
    assert code == 0
    assert out.startswith("Name:         web-move\nNamespace:    default\n")
    assert "Labels:       <none>" in out
    assert "Kind:         VMMigration" in out
    assert "Spec:\n" in out and "  Source Name:" in out and "    Type:" in out
    assert "Status:\n" in out
    assert "  Intermediate Storage URL:  nfs:///srv/nfs/web-move/vda.qcow2" in out
    disks = out[out.index("Disks:") : out.index("Conditions:")].splitlines()
    assert disks[1].split()[:3] == ["NAME", "PHASE", "BYTES"]
    assert disks[2].split()[:5] == ["vda", "Exporting", "4831838208", "10737418240", "qcow2"]
    assert disks[3].split()[:3] == ["vdb", "Pending", "1073741824"]
    conditions = out[out.index("Conditions:") : out.index("Events:")].splitlines()
    assert conditions[1].split() == ["Type", "Status", "Reason", "Age", "Message"]
    assert conditions[2].split()[:4] == ["Validated", "True", "ValidationSuccessful", "5m"]
    assert "ETA: 5m" in conditions[3]
    events = out[out.index("Events:") :].splitlines()
    assert events[1].split() == ["Type", "Reason", "Age", "From", "Message"]
    assert events[2].split() == ["----", "------", "----", "----", "-------"]
    progress = next(line for line in events if "TransferProgress" in line)
    assert "(x3 over" in progress and "vmmigration-controller" in progress
    assert any(line.split()[:2] == ["Warning", "RetryScheduled"] for line in events)


def test_describe_missing_object_is_an_error(
    filled: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(capsys, "describe", "vmmigration", "nope", "--store", str(filled))
    assert code == 2
    assert "VMMigration default/nope not found" in err


def test_get_without_a_store_says_how_to_make_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(capsys, "get", "vmmigrations", "--store", str(tmp_path / "none.db"))
    assert code == 2
    assert "virtrigaud run -f DIR" in err
    assert not (tmp_path / "none.db").exists()
