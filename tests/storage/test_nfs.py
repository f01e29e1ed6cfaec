"""NFS specifics on a real directory: atomic writes, confinement, kernel errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from storage.nfs import NFSBackend
from tests.storage.streams import MiB, dense, drain, pump
from virtrigaud.errors import InvalidArgument, NotFound

KEY = "virtrigaud/ns/vm-abcdef12/vda.raw"
REPO = Path(__file__).resolve().parents[2]


def test_write_is_atomic_via_temporary_file(nfs_root: Path, nfs_backend: NFSBackend) -> None:
    directory = nfs_root / "virtrigaud/ns/vm-abcdef12"
    writer = nfs_backend.open_writer(KEY)
    sha, size = pump(writer, dense(3 * MiB, seed=60))
    names = os.listdir(directory)
    assert len(names) == 1 and names[0].startswith(".vda.raw.") and names[0].endswith(".vtpart")
    assert not (directory / "vda.raw").exists()
    assert list(nfs_backend.list("")) == []  # temporaries are not objects
    info = writer.commit()
    assert sorted(os.listdir(directory)) == ["vda.raw", "vda.raw.sha256"]
    assert (directory / "vda.raw.sha256").read_text() == f"{sha}  vda.raw\n"
    assert info.sha256 == sha and (directory / "vda.raw").stat().st_size == size
    assert drain(nfs_backend.open_reader(KEY)) == (sha, size)


def test_abort_removes_the_temporary_file(nfs_root: Path, nfs_backend: NFSBackend) -> None:
    with nfs_backend.open_writer(KEY) as writer:
        writer.write(b"partial")
        writer.abort()
    assert os.listdir(nfs_root / "virtrigaud/ns/vm-abcdef12") == []


def test_abort_incomplete_removes_leftovers_of_crashed_writers(
    nfs_root: Path, nfs_backend: NFSBackend
) -> None:
    crashed = nfs_backend.open_writer(KEY)  # never committed nor aborted
    crashed.write(b"left behind")
    temp = next((nfs_root / "virtrigaud/ns/vm-abcdef12").glob("*.vtpart"))
    assert nfs_backend.abort_incomplete("virtrigaud/", older_than=3600) == 0
    old = time.time() - 7200
    os.utime(temp, (old, old))
    assert nfs_backend.abort_incomplete("virtrigaud/", older_than=3600) == 1
    assert not temp.exists()
    crashed.abort()  # the late abort of the crashed writer is harmless


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    target = tmp_path / "outside"
    target.mkdir()
    (target / "secret.raw").write_bytes(b"not yours")
    return target


def test_directory_symlink_escape_refused(
    nfs_root: Path, nfs_backend: NFSBackend, outside: Path
) -> None:
    (nfs_root / "virtrigaud").symlink_to(outside)
    for call in (
        lambda: nfs_backend.open_writer("virtrigaud/x.raw"),
        lambda: nfs_backend.open_reader("virtrigaud/secret.raw"),
        lambda: nfs_backend.stat("virtrigaud/secret.raw"),
        lambda: nfs_backend.delete("virtrigaud/secret.raw"),
    ):
        with pytest.raises(InvalidArgument):
            call()
    assert sorted(os.listdir(outside)) == ["secret.raw"]
    assert list(nfs_backend.list("")) == []
    assert list(nfs_backend.list("virtrigaud/")) == []  # listing does not follow it either


def test_file_symlink_escape_refused(
    nfs_root: Path, nfs_backend: NFSBackend, outside: Path
) -> None:
    (nfs_root / "d").mkdir()
    (nfs_root / "d" / "evil.raw").symlink_to(outside / "secret.raw")
    with pytest.raises(InvalidArgument):
        nfs_backend.open_reader("d/evil.raw")
    with pytest.raises(InvalidArgument):
        nfs_backend.delete("d/evil.raw")
    assert (outside / "secret.raw").read_bytes() == b"not yours"


def test_symlinks_inside_the_root_are_not_followed_either(
    nfs_root: Path, nfs_backend: NFSBackend
) -> None:
    """The O_NOFOLLOW walk refuses any symlink, even one the path check accepts."""
    (nfs_root / "real").mkdir()
    (nfs_root / "alias").symlink_to(nfs_root / "real")
    (nfs_root / "real" / "f.raw").write_bytes(b"data")
    (nfs_root / "real" / "link.raw").symlink_to(nfs_root / "real" / "f.raw")
    with pytest.raises(InvalidArgument, match="symlink"):
        nfs_backend.open_writer("alias/new.raw")
    with pytest.raises(InvalidArgument, match="symlink"):
        nfs_backend.open_reader("alias/f.raw")
    with pytest.raises(InvalidArgument):
        nfs_backend.stat("real/link.raw")
    assert nfs_backend.open_reader("real/f.raw").read_all() == b"data"
    assert sorted(o.key for o in nfs_backend.list("")) == ["real/f.raw"]


def test_missing_object(nfs_backend: NFSBackend) -> None:
    with pytest.raises(NotFound, match=r"vda\.raw"):
        nfs_backend.stat(KEY)


# -- real kernel errors, in a child process --------------------------------------------

_CHILD = r"""
import json, os, sys
from storage.nfs import NFSBackend
from virtrigaud.errors import VirtrigaudError
root = sys.argv[1]
if len(sys.argv) > 3:  # drop root after the imports: root bypasses permission bits
    os.setgid(int(sys.argv[3]))
    os.setuid(int(sys.argv[3]))
result = {}
try:
    backend = NFSBackend(root)
    if sys.argv[2] == "fill":
        with backend.open_writer("keep.raw") as w:
            w.write(b"k" * 1000)
            w.commit()
    with backend.open_writer("big/disk.raw") as w:
        for _ in range(16):
            w.write(os.urandom(1 << 20))
        w.commit()
except VirtrigaudError as exc:
    result["error"] = [type(exc).__name__, str(exc)]
result["files"] = sorted(
    os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
)
print(json.dumps(result))
"""


def run_child(
    root: Path, mode: str, *, prefix: list[str] | None = None, user: int | None = None
) -> dict[str, Any]:
    command = [*(prefix or []), sys.executable, "-c", _CHILD, str(root), mode]
    if user is not None:
        command.append(str(user))
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_full_filesystem_is_out_of_space(tmp_path: Path) -> None:
    """A 4 MiB tmpfs in a private mount namespace (unshare) fills up for real."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    unshare = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-rm"]
    script = f'mount -t tmpfs -o size=4m tmpfs "{mount_point}" && exec "$@"'
    result = run_child(mount_point, "fill", prefix=[*unshare, "sh", "-c", script, "sh"])
    assert result["error"][0] == "OutOfSpace", result
    assert "full" in result["error"][1]
    # The aborted writer left nothing behind; the earlier object is intact.
    assert result["files"] == ["keep.raw", "keep.raw.sha256"]
    assert os.listdir(mount_point) == []  # the mount never reached this namespace


@pytest.fixture
def root_owned_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="vt-perm-"))
    base.chmod(0o755)
    target = base / "export"
    target.mkdir(mode=0o755)
    if os.geteuid() != 0:
        target.chmod(0o555)
    yield target
    target.chmod(0o755)
    shutil.rmtree(base, ignore_errors=True)


def test_unwritable_directory_is_permission_denied(root_owned_dir: Path) -> None:
    """Run as an unprivileged user (nobody) when root, since root bypasses modes."""
    result = run_child(root_owned_dir, "plain", user=65534 if os.geteuid() == 0 else None)
    assert result["error"][0] == "PermissionDenied", result
    assert str(root_owned_dir) in result["error"][1]
    assert result["files"] == []
